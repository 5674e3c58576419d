"""evaluate: labelled folders built here, labelled by the fp32 PyTorch model's own predictions,
so PyTorch's top-1 is 100% by construction and a package's top-1 is its agreement."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mnv1_coreml.datasets import find_dataset, stream_chunks, wordnet_to_imagenet_label
from mnv1_coreml.errors import UserError
from mnv1_coreml.evaluate import evaluate, write_report
from mnv1_coreml.images import packaged_image_dir, prepare_image, prepare_image_fraction
from mnv1_coreml.labels import imagenet_labels
from mnv1_coreml.predict import ImageClassifier

RES = 128


@pytest.fixture(scope="module")
def torch_model():
    """The fp32 PyTorch model behind ``small_packages`` (random weights, seed 0)."""
    from mnv1_coreml.weights import build_model, load_weights

    w = load_weights("random", 0.25, RES, seed=0)
    return build_model(0.25, RES, w), w.settings.normalization


def _torch_top1(torch_model, images: np.ndarray) -> np.ndarray:
    import torch

    model, norm = torch_model
    with torch.no_grad():
        return model(norm.apply(images)).numpy().argmax(1)


@pytest.fixture(scope="module")
def synthetic(torch_model) -> tuple[np.ndarray, np.ndarray]:
    """Smooth pictures (2x2 random colours and saturated blocks, bilinearly upsampled), at most
    3 per predicted class, so several classes appear."""
    rng = np.random.default_rng(1)
    small = np.concatenate([rng.uniform(0, 255, (120, 2, 2, 3)),
                            (rng.uniform(0, 1, (120, 2, 2, 3)) > 0.5) * 255.0])
    images = np.stack([
        np.asarray(Image.fromarray(s.astype(np.uint8)).resize((RES, RES),
                                                             Image.Resampling.BILINEAR))
        for s in small
    ])
    top1 = _torch_top1(torch_model, images)
    keep: list[int] = []
    for cls in np.unique(top1):
        keep += list(np.flatnonzero(top1 == cls)[:3])
    keep.sort()
    assert len(np.unique(top1[keep])) >= 3
    return images[keep], top1[keep]


@pytest.fixture(scope="module")
def label_folders(synthetic, tmp_path_factory) -> Path:
    images, top1 = synthetic
    root = tmp_path_factory.mktemp("by_label")
    for i, (img, cls) in enumerate(zip(images, top1, strict=True)):
        folder = root / imagenet_labels()[cls]
        folder.mkdir(exist_ok=True)
        Image.fromarray(img).save(folder / f"img{i:03d}.png")
    return root


def _recount(package: Path, root: Path) -> tuple[int, int]:
    """Top-1 hits and image count of a package, computed directly, without evaluate."""
    return _recount_at(str(package), root, RES)


def test_label_folders_two_packages(small_packages, label_folders, synthetic, tmp_path) -> None:
    pkgs = [small_packages["fp32"], small_packages["fp16"]]
    report = evaluate(pkgs, label_folders, jobs=1, batch_size=8)
    n = len(synthetic[0])
    assert (report.layout, report.images_evaluated, report.unreadable) == ("labels", n, 0)
    assert not report.interrupted
    # ordered by package size: fp16 first
    assert [p.name for p in report.packages] == [pkgs[1].name, pkgs[0].name]
    assert len(report.references) == 1  # both made from the same PyTorch model
    ref = next(iter(report.references.values()))
    assert (ref.n, ref.top1, ref.top5) == (n, n, n)  # 100% by construction
    for p in report.packages:
        assert p.reference is not None and p.n == n
        assert p.top1 == p.agree  # labels are PyTorch's top-1
        assert p.flips_package_right == 0 and p.flips_pytorch_right == n - p.top1
        assert p.top5 >= p.top1 and p.images_per_second > 0
        assert (p.top1, p.n) == _recount(Path(p.path), label_folders)
        worst = p.worst_classes()
        assert sum(c for _, _, c in worst) == n  # fewer than 10 classes: all listed
        assert [c / k for _, c, k in worst] == sorted(c / k for _, c, k in worst)
    fp32 = report.packages[1]
    assert fp32.top1 == n  # fp32 reproduces PyTorch on every image

    js = json.loads(write_report(report, tmp_path / "r.json", "json").read_text())
    assert [p["package"] for p in js["packages"]] == [str(pkgs[1]), str(pkgs[0])]
    assert js["packages"][1]["top1"] == 100.0 and js["packages"][1]["pytorch"]["top1"] == 100.0
    md = write_report(report, tmp_path / "r.md", "markdown").read_text()
    assert "| MobileNetV1_fp16.mlpackage |" in md and "Vision .centerCrop" in md

    from mnv1_coreml.plots import plot_accuracy_vs_size

    png = plot_accuracy_vs_size(report, tmp_path / "plot.png")
    with Image.open(png) as im:
        assert im.format == "PNG" and im.size[0] > 300
    assert [p.name for p in tmp_path.iterdir()] != [] and not list(tmp_path.glob(".*tmp*"))


def test_wordnet_layout_with_packaged_photos(small_packages, torch_model, tmp_path) -> None:
    wnids = {v: k for k, v in wordnet_to_imagenet_label().items()}
    photos = sorted(p for p in packaged_image_dir().iterdir() if p.suffix != ".md")
    arrays = []
    for p in photos:
        with Image.open(p) as im:
            arrays.append(prepare_image(im, RES))
    top1 = _torch_top1(torch_model, np.stack(arrays))
    for p, cls in zip(photos, top1, strict=True):
        folder = tmp_path / wnids[imagenet_labels()[cls]]
        folder.mkdir(exist_ok=True)
        (folder / p.name).write_bytes(p.read_bytes())
    report = evaluate([small_packages["fp32"]], tmp_path, jobs=0)
    assert report.layout == "wordnet" and report.images_evaluated == len(photos) == 7
    ref = next(iter(report.references.values()))
    assert ref.top1 == ref.n == 7
    assert report.packages[0].top1 == 7


def test_csv_layouts_match_folder_layout(small_packages, label_folders, tmp_path) -> None:
    """A flat folder with Kaggle's LOC_val_solution.csv (ImageId without extension, first token
    the WordNet ID) and with filename,label (index or name) give the folder layout's counts."""
    wnids = {v: k for k, v in wordnet_to_imagenet_label().items()}
    flat = tmp_path / "flat"
    flat.mkdir()
    rows = []
    for folder in sorted(label_folders.iterdir()):
        for p in sorted(folder.iterdir()):
            name = f"ILSVRC2012_val_{len(rows):08d}.png"
            (flat / name).write_bytes(p.read_bytes())
            rows.append((name, folder.name))
    kaggle = tmp_path / "LOC_val_solution.csv"
    with open(kaggle, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["ImageId", "PredictionString"])
        for name, label in rows:
            w.writerow([Path(name).stem, f"{wnids[label]} 1 2 30 40 {wnids[label]} 5 6 7 8"])
    plain = tmp_path / "labels.csv"
    with open(plain, "w", newline="") as f:
        w = csv.writer(f)
        for i, (name, label) in enumerate(rows):  # alternate index and name labels
            w.writerow([name, imagenet_labels().index(label) if i % 2 else label])
    folder_report = evaluate([small_packages["fp16"]], label_folders, jobs=0, pytorch=False)
    want = (folder_report.packages[0].top1, folder_report.packages[0].top5, len(rows))
    for labels_csv in (kaggle, plain):
        report = evaluate([small_packages["fp16"]], flat, labels_csv=labels_csv, jobs=0,
                          pytorch=False)
        p = report.packages[0]
        assert report.layout == "csv"
        assert (p.top1, p.top5, p.n) == want


def test_limit_interleaves_classes(label_folders, synthetic) -> None:
    ds = find_dataset(label_folders, limit=3)
    assert len(ds) == 3 and len(set(ds.targets.tolist())) == 3
    full = find_dataset(label_folders)
    assert len(full) == len(synthetic[0]) and full.layout == "labels"


def test_stream_chunks_in_order(label_folders) -> None:
    ds = find_dataset(label_folders)
    specs = [(64, None), (RES, 0.875)]
    seen = []
    for chunk in stream_chunks(ds.paths, specs, chunk_size=4, jobs=0):
        assert [a.shape[1:] for a in chunk.arrays] == [(64, 64, 3), (RES, RES, 3)]
        seen += chunk.indices
    assert seen == list(range(len(ds)))


def test_crop_fraction_protocol() -> None:
    """Shorter side to R/F (floor), then a centre R crop, as timm/torchvision evaluate."""
    rng = np.random.default_rng(0)
    im = Image.fromarray(rng.integers(0, 255, (90, 150, 3), dtype=np.uint8))  # 150 x 90
    got = prepare_image_fraction(im, 64, 0.875)
    short = int(64 / 0.875)  # 73
    resized = im.resize((int(short * 150 / 90), short), Image.Resampling.BILINEAR)
    left, top = round((resized.width - 64) / 2), round((short - 64) / 2)
    want = np.asarray(resized.crop((left, top, left + 64, top + 64)))
    np.testing.assert_array_equal(got, want)
    assert got.shape == (64, 64, 3)
    with pytest.raises(ValueError):
        prepare_image_fraction(im, 64, 0)


def test_corrupt_images_counted_and_skipped(small_packages, label_folders, tmp_path) -> None:
    data = tmp_path / "data"
    folder = next(iter(sorted(label_folders.iterdir())))
    (data / folder.name).mkdir(parents=True)
    good = sorted(folder.iterdir())[:2]
    for p in good:
        (data / folder.name / p.name).write_bytes(p.read_bytes())
    (data / folder.name / "zz_broken.jpg").write_bytes(b"\xff\xd8\xff\xe0" + b"\0" * 40)
    (data / folder.name / "zz_truncated.png").write_bytes(good[0].read_bytes()[:100])
    bad: list[str] = []
    report = evaluate([small_packages["fp16"]], data, jobs=0, pytorch=False,
                      on_unreadable=lambda path, reason: bad.append(Path(path).name))
    assert sorted(bad) == ["zz_broken.jpg", "zz_truncated.png"]
    assert (report.unreadable, report.images_evaluated, report.packages[0].n) == (2, 2, 2)


def test_interrupt_returns_results_so_far(small_packages, label_folders) -> None:
    calls = []

    def stop(done: int) -> None:
        calls.append(done)
        raise KeyboardInterrupt

    report = evaluate([small_packages["fp16"]], label_folders, jobs=0, batch_size=3,
                      on_progress=stop, pytorch=False)
    assert report.interrupted and calls == [3]
    assert report.packages[0].n == 3 and report.images_evaluated == 3


def test_bad_input(small_packages, label_folders, tmp_path) -> None:
    pkg = small_packages["fp16"]
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no images"):
        evaluate([pkg], tmp_path / "empty")
    with pytest.raises(UserError, match="not a directory"):
        evaluate([pkg], tmp_path / "missing")
    flat = tmp_path / "flat"
    flat.mkdir()
    Image.new("RGB", (8, 8)).save(flat / "a.png")
    with pytest.raises(UserError, match="--labels-csv"):
        evaluate([pkg], flat)
    odd = tmp_path / "odd"
    for name in ("toucan", "not_a_class", "n99999999x"):
        (odd / name).mkdir(parents=True)
        Image.new("RGB", (8, 8)).save(odd / name / "a.png")
    with pytest.raises(UserError, match=r"class folders not among the 1000 labels.*"
                                        r"n99999999x, not_a_class \(its labels start: tench"):
        evaluate([pkg], odd)
    with pytest.raises(UserError, match=r"crop-fraction"):
        evaluate([pkg], label_folders, crop_fraction=1.5)


def test_package_labels_do_not_match_data(label_folders, tmp_path) -> None:
    """A foreign 4-class package (no mnv1 metadata) on ImageNet-labelled data."""
    from tests.test_predict import _convert

    pkg = _convert("image", tmp_path / "fruit.mlpackage")
    with pytest.raises(UserError, match=r"not among the 4 labels of fruit.mlpackage.*apple"):
        evaluate([pkg], label_folders)
    fruit = tmp_path / "fruit"
    for label in ("banana", "Date"):  # case-insensitive match for label folders
        (fruit / label).mkdir(parents=True)
        Image.new("RGB", (40, 30), (200, 180, 20)).save(fruit / label / "x.png")
    report = evaluate([pkg], fruit, jobs=0)
    p = report.packages[0]
    assert p.n == 2 and p.reference is None and "no mnv1.* metadata" in p.reference_note
    assert report.references == {}


def test_cli_evaluate_outputs(small_packages, label_folders, tmp_path, capsys) -> None:
    from mnv1_coreml.cli import main

    files = {k: tmp_path / f"r.{k}" for k in ("json", "md", "png")}
    code = main(["evaluate", str(small_packages["fp16"]), "--data", str(label_folders),
                 "--jobs", "0", "--limit", "6", "--no-pytorch", "--json", str(files["json"]),
                 "--markdown", str(files["md"]), "--plot", str(files["png"])])
    cap = capsys.readouterr()
    assert code == 0, cap.err
    assert "MobileNetV1_fp16.mlpackage" in cap.out and "evaluated: 6 images" in cap.out
    assert json.loads(files["json"].read_text())["images_evaluated"] == 6
    assert files["md"].read_text().startswith("# mnv1-coreml evaluate")
    assert files["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    code = main(["evaluate", str(small_packages["fp16"]), "--data", str(tmp_path / "r.json")])
    cap = capsys.readouterr()
    assert code == 2 and len(cap.err.strip().splitlines()) == 1 and "not a directory" in cap.err


def test_cli_evaluate_ctrl_c_prints_results_so_far(small_packages, label_folders, monkeypatch,
                                                   capsys) -> None:
    import mnv1_coreml.evaluate as ev
    from mnv1_coreml.cli import main

    real = ev._consume
    calls: list[int] = []

    def consume_then_interrupt(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(ev, "_consume", consume_then_interrupt)
    code = main(["evaluate", str(small_packages["fp16"]), "--data", str(label_folders),
                 "--jobs", "1", "--batch-size", "4", "--no-pytorch"])
    cap = capsys.readouterr()
    assert code == 130
    assert "evaluated: 4 images" in cap.out and "INTERRUPTED" in cap.out
    assert "MobileNetV1_fp16.mlpackage" in cap.out and "interrupted" in cap.err


def test_packages_of_two_resolutions_share_one_pass(small_packages, label_folders,
                                                    tmp_path) -> None:
    """A foreign 32x32 ImageNet-labelled classifier beside our 128x128 package: each image is
    decoded once and prepared at both sizes; the foreign one has no PyTorch reference."""
    from tests.test_predict import _convert

    foreign = _convert("image", tmp_path / "tiny1000.mlpackage", list(imagenet_labels()))
    report = evaluate([small_packages["fp16"], foreign], label_folders, jobs=0)
    by_name = {p.name: p for p in report.packages}
    tiny, ours = by_name["tiny1000.mlpackage"], by_name["MobileNetV1_fp16.mlpackage"]
    assert (tiny.res, ours.res) == (32, 128) and tiny.n == ours.n == report.images_evaluated
    assert report.packages[0] is tiny  # the smaller package comes first
    assert ours.reference is not None and tiny.reference is None
    assert (tiny.top1, tiny.n) == _recount_at(tiny.path, label_folders, 32)


def _recount_at(package: str, root: Path, res: int) -> tuple[int, int]:
    clf = ImageClassifier(package)
    hits = n = 0
    for folder in sorted(root.iterdir()):
        arrays = []
        for path in sorted(folder.iterdir()):
            with Image.open(path) as im:
                arrays.append(prepare_image(im, res))
        top1 = clf.probabilities(np.stack(arrays)).argmax(axis=1)
        hits += sum(clf.labels[int(i)] == folder.name for i in top1)
        n += len(arrays)
    return hits, n


def test_custom_class_package(synthetic, tmp_path) -> None:
    """A 3-class package (issue 10's custom labels): its PyTorch reference is rebuilt with 3
    classes from the metadata, top-5 is capped at the class count."""
    from mnv1_coreml.pipeline import ConvertOptions, convert
    from mnv1_coreml.weights import build_model, load_weights

    labels = ["circle", "square", "stripe"]
    pkg = tmp_path / "Shapes.mlpackage"
    convert(ConvertOptions(alpha=0.25, res=RES, weights="random", precision="fp32",
                           labels=labels, output=pkg, validate=False))
    w = load_weights("random", 0.25, RES, num_classes=3)
    images = synthetic[0]
    top1 = _torch_top1((build_model(0.25, RES, w), w.settings.normalization), images)
    data = tmp_path / "shapes"
    for i, (img, cls) in enumerate(zip(images, top1, strict=True)):
        (data / labels[cls]).mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(data / labels[cls] / f"{i}.png")
    report = evaluate([pkg], data, jobs=0)
    p = report.packages[0]
    ref = report.reference_for(p)
    assert p.num_classes == 3 and ref is not None and ref.top1 == ref.n == len(images)
    assert p.top5 == p.n == len(images) and p.top1 == p.agree == len(images)


def test_multiarray_package_needs_mean_std(tmp_path) -> None:
    """A foreign softmax model with a multi-array input and no labels: classes are indices."""
    from tests.test_predict import MEAN, STD, _convert

    pkg = _convert("array-softmax", tmp_path / "arr.mlpackage")
    data = tmp_path / "data"
    for label in ("0", "1", "2", "3"):
        (data / label).mkdir(parents=True)
        Image.new("RGB", (50, 40), (30, 160, 90)).save(data / label / "x.png")
    with pytest.raises(UserError, match="--mean R,G,B and --std"):
        evaluate([pkg], data)
    report = evaluate([pkg], data, jobs=0, mean=MEAN, std=STD)
    p = report.packages[0]
    assert (p.n, p.num_classes, p.reference) == (4, 4, None)
    assert p.top1 == 1 and p.top5 == 4  # the same picture in every class: one is right
