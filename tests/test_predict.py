"""predict: our packages and foreign classifiers (plain ct.convert), image or multi-array input,
classify / softmax / logits outputs, and unreadable images that do not stop the rest."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from mnv1_coreml.errors import UserError
from mnv1_coreml.images import packaged_image_dir, prepare_image
from mnv1_coreml.predict import ImageClassifier, image_files, predict_files

RES = 32
LABELS = ["apple", "banana", "cherry", "date"]
MEAN, STD = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)


class TinyNet(nn.Module):
    """A non-MobileNet classifier: plain convs with biases, max pool, avg pool, FC."""

    def __init__(self, head: str, classes: int = len(LABELS)) -> None:
        super().__init__()
        torch.manual_seed(3)
        self.body = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(8, 16, 3, stride=2), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
            nn.Linear(16, classes),
        )
        self.head = head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.body(x) * 4.0
        return z if self.head == "logits" else torch.softmax(z, dim=1)


def _convert(kind: str, out: Path, labels: list[str] = LABELS) -> Path:
    """kind: image+classifier, array+softmax, or array+logits (all fp32, plain ct.convert)."""
    from mnv1_coreml.coreml import ct, quiet_coremltools

    net = TinyNet("logits" if kind == "array-logits" else "softmax", len(labels)).eval()
    traced = torch.jit.trace(net, torch.zeros(1, 3, RES, RES))
    if kind == "image":
        # pixel/255 only: the model itself sees x/255 (a foreign convention, not ours)
        inputs = [ct.ImageType(name="photo", shape=(1, 3, RES, RES), scale=1 / 255.0)]
        extra = {"classifier_config": ct.ClassifierConfig(list(labels))}
    else:
        inputs = [ct.TensorType(name="x", shape=(1, 3, RES, RES))]
        extra = {}
    with quiet_coremltools():
        ml = ct.convert(traced, inputs=inputs, convert_to="mlprogram",
                        compute_precision=ct.precision.FLOAT32,
                        minimum_deployment_target=ct.target.iOS15, skip_model_load=True,
                        **extra)
        ml.save(str(out))
    return out


@pytest.fixture(scope="module")
def foreign(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("foreign")
    return {k: _convert(k, root / f"{k}.mlpackage")
            for k in ("image", "array-softmax", "array-logits")}


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Smooth synthetic photos of odd sizes, so the centre crop and resize do real work."""
    root = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(0)
    paths = []
    for i, (w, h) in enumerate([(61, 45), (40, 80), (32, 32), (100, 70)]):
        small = rng.uniform(0, 255, (3, 3, 3)).astype(np.uint8)
        img = Image.fromarray(small).resize((w, h), Image.Resampling.BILINEAR)
        paths.append(root / f"p{i}.png")
        img.save(paths[-1])
    return paths


def _torch_probs(photos: list[Path], scale_input) -> np.ndarray:
    arrays = []
    for p in photos:
        with Image.open(p) as im:
            arrays.append(prepare_image(im, RES))
    x = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float()
    with torch.no_grad():
        return TinyNet("softmax").eval()(scale_input(x)).numpy().astype(np.float64)


def test_foreign_image_classifier_matches_pytorch(foreign, photos) -> None:
    clf = ImageClassifier(foreign["image"])
    assert (clf.info.input_kind, clf.info.output_kind, clf.res) == ("image", "classify", RES)
    assert clf.labels == LABELS and clf.info.metadata.get("mnv1.alpha") is None
    preds, errors = predict_files(clf, photos, k=3)
    assert errors == []
    want = _torch_probs(photos, lambda x: x / 255.0)
    for pred, row in zip(preds, want, strict=True):
        order = np.argsort(-row)[:3]
        assert [lab for lab, _ in pred.top] == [LABELS[j] for j in order]
        np.testing.assert_allclose([p for _, p in pred.top], row[order], atol=1e-5)


@pytest.mark.parametrize("kind", ["array-softmax", "array-logits"])
def test_foreign_multiarray_input_with_mean_std(foreign, photos, kind) -> None:
    clf = ImageClassifier(foreign[kind], mean=MEAN, std=STD)
    assert clf.info.input_kind == "array"
    assert clf.info.output_kind == kind.split("-")[1]
    assert clf.labels == ["0", "1", "2", "3"]  # no labels in the model: class indices
    mean = torch.tensor(MEAN).view(1, 3, 1, 1)
    std = torch.tensor(STD).view(1, 3, 1, 1)
    want = _torch_probs(photos, lambda x: (x / 255.0 - mean) / std)
    preds, _ = predict_files(clf, photos, k=4)
    for pred, row in zip(preds, want, strict=True):
        got = dict(pred.top)
        np.testing.assert_allclose([got[str(i)] for i in range(4)], row, atol=1e-5)


def test_multiarray_input_needs_mean_and_std(foreign) -> None:
    with pytest.raises(UserError, match="--mean R,G,B and --std"):
        ImageClassifier(foreign["array-softmax"])
    with pytest.raises(UserError, match="normalises it itself"):
        ImageClassifier(foreign["image"], mean=MEAN, std=STD)
    with pytest.raises(UserError, match="Core ML backend"):
        ImageClassifier(foreign["array-softmax"], backend="coreml", mean=MEAN, std=STD)


def test_our_package_top1_is_its_class_label(small_packages, tmp_path) -> None:
    """Top-1 of predict = the classLabel the package itself outputs, on the packaged photos;
    a corrupt JPEG among them is one error and the rest still run."""
    from mnv1_coreml.mil import ReferenceModel

    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 definitely not a jpeg")
    files = image_files([packaged_image_dir(), bad])
    clf = ImageClassifier(small_packages["fp16"])
    seen: list[str] = []
    preds, errors = predict_files(clf, files, k=5, batch_size=4,
                                  on_error=lambda p, r: seen.append(p.name))
    assert [e[0] for e in errors] == [str(bad)] and seen == ["broken.jpg"]
    assert len(preds) == len(files) - 1 == 7
    ref = ReferenceModel.load(small_packages["fp16"])
    arrays = []
    for p in files[:-1]:
        with Image.open(p) as im:
            arrays.append(prepare_image(im, 128))
    labels = ref.predict(np.stack(arrays), outputs=["classLabel"])["classLabel"]
    assert [p.top[0][0] for p in preds] == [str(x) for x in labels]
    for p in preds:
        probs = [q for _, q in p.top]
        assert probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1 + 1e-3


def test_image_files_errors(tmp_path) -> None:
    assert image_files([tmp_path / "nope.jpg"]) == [tmp_path / "nope.jpg"]  # fails at open
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no images"):
        image_files([tmp_path / "empty"])


def test_cli_predict(small_packages, foreign, tmp_path, capsys) -> None:
    import json

    from mnv1_coreml.cli import main

    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\xff\xd8\xff garbage")
    out_json = tmp_path / "p.json"
    code = main(["predict", str(small_packages["fp16"]), str(packaged_image_dir() / "coffee.png"),
                 str(bad), "--top", "3", "--json", str(out_json)])
    cap = capsys.readouterr()
    assert code == 1  # an image could not be read; the other still ran
    assert cap.err.count("mnv1-coreml: cannot read") == 1 and "bad.jpg" in cap.err
    assert "coffee.png" in cap.out and "probability" in cap.out
    doc = json.loads(out_json.read_text())
    assert [len(r["top"]) for r in doc["results"]] == [3]
    assert doc["errors"][0]["image"] == str(bad)

    code = main(["predict", str(foreign["array-softmax"]), str(packaged_image_dir())])
    cap = capsys.readouterr()
    assert code == 2 and cap.err.startswith("mnv1-coreml: error:")
    assert len(cap.err.strip().splitlines()) == 1
    code = main(["predict", str(foreign["array-logits"]), str(packaged_image_dir() / "rocket.jpg"),
                 "--mean", "0.5,0.4,0.3", "--std", "0.2,0.25,0.3", "--top", "2"])
    cap = capsys.readouterr()
    assert code == 0 and "softmax" in cap.out and "logits output" in cap.out
