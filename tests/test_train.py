"""`train`: data discovery and split, the linear probe, fine-tuning, outputs and bad input.

The dataset is built here: smooth textures with a class-specific colour cast, which a
random-weight backbone separates (shapes would be chance), at 0.25-128.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from mnv1_coreml.cli import main
from mnv1_coreml.errors import UserError
from mnv1_coreml.model import build_model
from mnv1_coreml.train import (
    TrainOptions,
    fine_tune,
    fit_linear_probe,
    parse_fine_tune_from,
    predict_logits,
    train,
)
from mnv1_coreml.train_data import (
    augment,
    discover,
    load_images,
    random_resized_crop,
)
from mnv1_coreml.weights import load_weights

ALPHA, RES = 0.25, 128
#: Folder names test the sort (code points: upper case first) and Unicode labels kept exactly.
CASTS = {"amber": (1.0, 0.75, 0.35), "Moss": (0.45, 0.9, 0.45), "石板": (0.45, 0.6, 1.0)}
CLASSES = ["Moss", "amber", "石板"]


def make_images(
    root: Path, n: int, seed: int, casts: dict = CASTS, size: tuple[int, int] = (150, 128)
) -> Path:
    """``n`` smooth textures per class, tinted with the class's colour cast, as PNG files."""
    g = torch.Generator().manual_seed(seed)
    for name, cast in casts.items():
        d = root / name
        d.mkdir(parents=True, exist_ok=True)
        coarse = torch.rand(n, 3, 6, 6, generator=g)
        x = F.interpolate(coarse, size=size[::-1], mode="bicubic", align_corners=False)
        x = (0.35 + 0.65 * x.clamp(0, 1)) * torch.tensor(cast).view(1, 3, 1, 1) * 255
        arr = x.clamp(0, 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
        for i in range(n):
            Image.fromarray(arr[i]).save(d / f"{i:03d}.png")
    return root


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("train_data")
    return {
        "train": make_images(root / "photos", 40, seed=1),
        "test": make_images(root / "test", 20, seed=2),
    }


def one_line_exit_2(capsys: pytest.CaptureFixture[str], args: list[str], *needles: str) -> str:
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith("mnv1-coreml: error:"), err
    for needle in needles:
        assert needle in err, err
    return err


# --- data ------------------------------------------------------------------------------------


def test_split_is_sorted_stratified_and_deterministic(data: dict[str, Path]) -> None:
    a = discover(data["train"], 0.2, seed=3)
    assert list(a.classes) == CLASSES
    assert a.counts() == [(c, 32, 8) for c in CLASSES]
    assert a == discover(data["train"], 0.2, seed=3)
    b = discover(data["train"], 0.2, seed=4)
    assert {i.path for i in a.val} != {i.path for i in b.val}
    assert not {i.path for i in a.val} & {i.path for i in a.train}
    assert all(i.path.parent.name == a.classes[i.label] for i in a.train + a.val)


def test_explicit_train_and_val_folders(tmp_path: Path) -> None:
    make_images(tmp_path / "train", 3, seed=0)
    make_images(tmp_path / "val", 2, seed=1)
    split = discover(tmp_path, 0.5, seed=0)
    assert split.counts() == [(c, 3, 2) for c in CLASSES]
    assert all(i.path.parts[-3] == "val" for i in split.val)
    (tmp_path / "val" / "石板").rename(tmp_path / "val" / "stone")
    with pytest.raises(UserError, match="only in train: \\['石板'\\], only in val: \\['stone'\\]"):
        discover(tmp_path)


def test_images_prepared_like_the_golden_and_augmented_in_range(tmp_path: Path) -> None:
    from mnv1_coreml.images import prepare_image

    make_images(tmp_path, 2, seed=0, size=(200, 160))
    split = discover(tmp_path, 0.5)
    loaded = load_images(split.train, RES, keep_base=True)
    with Image.open(split.train[0].path) as im:
        np.testing.assert_array_equal(loaded.images[0], prepare_image(im, RES))
    base = loaded.bases[0]
    assert min(base.shape[:2]) == 160  # never enlarged; 1.25 * 128 = 160
    rng = np.random.default_rng(0)
    crops = [random_resized_crop(base, RES, rng) for _ in range(4)]
    assert all(c.shape == (RES, RES, 3) for c in crops)
    assert not np.array_equal(crops[0], crops[1])
    x = augment(loaded.bases, RES, rng, torch.Generator().manual_seed(0))
    assert x.shape == (len(loaded.bases), 3, RES, RES) and x.min() >= 0 and x.max() <= 1


# --- training --------------------------------------------------------------------------------


def test_probe_early_stops_and_ctrl_c_keeps_the_best() -> None:
    g = torch.Generator().manual_seed(0)
    centres = torch.randn(3, 16, generator=g) * 2
    y = torch.arange(90) % 3
    x = centres[y] + torch.randn(90, 16, generator=g) * 2
    yv = torch.arange(30) % 3
    xv = centres[yv] + torch.randn(30, 16, generator=g) * 2
    fit = fit_linear_probe(x, y, xv, yv, 3, weight_decay=0.0, max_epochs=200, patience=5)
    assert len(fit.history) < 200  # stopped early: the unregularised fit overfits
    assert fit.best_val_loss == min(r.val_loss for r in fit.history)
    logits = xv @ fit.state["classifier.weight"].T + fit.state["classifier.bias"]
    assert F.cross_entropy(logits, yv).item() == pytest.approx(fit.best_val_loss, rel=1e-4)

    def interrupt(rec) -> None:
        if rec.epoch == 3:
            raise KeyboardInterrupt

    cut = fit_linear_probe(x, y, xv, yv, 3, on_epoch=interrupt)
    assert cut.interrupted and len(cut.history) == 3
    assert cut.best_val_loss == min(r.val_loss for r in cut.history)


@pytest.fixture(scope="module")
def probe(data: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One whole `train` run through the CLI: linear probe, fp16 package, validated at birth."""
    out = tmp_path_factory.mktemp("probe_out") / "Textures.mlpackage"
    assert main(base_args(data["train"], out)) == 0
    return out


def sibling(package: Path, suffix: str) -> Path:
    return package.with_name(package.name.replace(".mlpackage", suffix))


def test_linear_probe_generalises_to_held_out_images(probe: Path, data: dict[str, Path]) -> None:
    rep = json.loads(sibling(probe, ".report.json").read_text())
    assert rep["mode"] == "linear probe" and rep["augmentation"] is None
    assert rep["pytorch_val_acc"] >= 0.9
    # the checkpoint reloads through the normal weights path, classes from its classifier
    weights = load_weights(str(sibling(probe, ".safetensors")), ALPHA, RES)
    model = build_model(ALPHA, RES, weights)
    assert model.cfg.num_classes == 3
    test = discover(data["test"], 0.5)
    imgs = load_images(test.train + test.val, RES)
    pred = predict_logits(model, imgs.images, weights.settings.normalization).argmax(1).numpy()
    accuracy = float((pred == imgs.labels).mean())
    assert len(pred) == 60 and accuracy >= 0.9, accuracy


def test_package_has_the_folder_labels_and_agrees_with_pytorch(probe: Path) -> None:
    from mnv1_coreml.modelspec import read_contract

    assert read_contract(probe).labels == CLASSES
    rep = json.loads(sibling(probe, ".report.json").read_text())
    assert rep["package_backend"] == "reference"
    assert rep["package_agreement"] >= 0.99
    assert rep["package_val_acc"] == pytest.approx(rep["pytorch_val_acc"], abs=0.01)
    assert rep["package_validation"].startswith("validate PASS")
    md = sibling(probe, ".report.md").read_text()
    assert "| PyTorch | " in md and "| package (reference) | " in md


def test_outputs_labels_checkpoint_settings_and_report(probe: Path) -> None:
    assert sibling(probe, ".labels.txt").read_text("utf-8") == "Moss\namber\n石板\n"
    random = load_weights("random", ALPHA, RES)
    saved = load_weights(str(sibling(probe, ".safetensors")), ALPHA, RES)
    assert saved.settings == random.settings  # architecture settings ride in the metadata
    for key, value in random.state_dict.items():
        if not key.startswith("classifier"):
            torch.testing.assert_close(saved.state_dict[key], value, rtol=0, atol=0)
    rep = json.loads(sibling(probe, ".report.json").read_text())
    assert rep["classes"] == CLASSES
    assert [c[1:] for c in rep["counts"]] == [[32, 8]] * 3
    first = rep["history"][0]
    assert first["phase"] == "probe" and first["epoch"] == 1
    assert {"train_loss", "train_acc", "val_loss", "val_acc"} <= set(first)
    best = rep["history"][rep["best"]["epoch"] - 1]
    assert best["val_loss"] == min(r["val_loss"] for r in rep["history"])
    assert "| probe | 1 |" in sibling(probe, ".report.md").read_text()


def test_fine_tune_trains_only_the_last_blocks_with_frozen_bn(tmp_path: Path) -> None:
    random = load_weights("random", ALPHA, RES)
    before = {k: v.clone() for k, v in random.state_dict.items()}
    model = build_model(ALPHA, RES, random)
    model.classifier = torch.nn.Linear(model.classifier.in_features, 3)
    data = make_images(tmp_path / "d", 4, seed=5)
    split = discover(data, 0.5)
    tr = load_images(split.train, RES, keep_base=True)
    va = load_images(split.val, RES)
    fit = fine_tune(
        model, 12, tr.bases, torch.from_numpy(tr.labels), va.images,
        torch.from_numpy(va.labels), random.settings.normalization, epochs=2, batch_size=4,
    )
    assert [r.epoch for r in fit.history] == [1, 2] and fit.best_epoch in (1, 2)
    after = model.state_dict()
    assert not torch.equal(after["blocks.12.pw.conv.weight"], before["blocks.12.pw.conv.weight"])
    assert not torch.equal(after["blocks.12.dw.bn.weight"], before["blocks.12.dw.bn.weight"])
    for key in before:
        if key.startswith(("stem.", "blocks.11.")) or "running_" in key:
            assert torch.equal(after[key], before[key]), key  # frozen, BN statistics included
    assert parse_fine_tune_from("blocks.0") == 0
    with pytest.raises(UserError, match="blocks.K with K from 0 to 12"):
        parse_fine_tune_from("blocks.13")


def test_fine_tune_run_reports_augmentation_and_keeps_the_better_state(tmp_path: Path) -> None:
    data = make_images(tmp_path / "d", 5, seed=6)
    opts = TrainOptions(
        data_dir=data, output=tmp_path / "FT.mlpackage", alpha=ALPHA, res=RES,
        weights="random", package=False, fine_tune_from="blocks.12", epochs=2, batch_size=8,
    )
    rep = train(opts).report
    assert rep.mode == "fine-tune from blocks.12" and "horizontal flip" in rep.augmentation
    phases = [r.phase for r in rep.history]
    assert phases.count("fine-tune") == 2 and phases[0] == "probe"
    tuned = [r.val_loss for r in rep.history if r.phase == "fine-tune"]
    probe_best = min(r.val_loss for r in rep.history if r.phase == "probe")
    want = ("fine-tune", min(tuned)) if min(tuned) < probe_best - 1e-6 else ("probe", probe_best)
    assert (rep.best["phase"], rep.best["val_loss"]) == pytest.approx(want)


# --- bad input -------------------------------------------------------------------------------


def base_args(data_dir: Path, out: Path) -> list[str]:
    return [
        "train",
        str(data_dir),
        "--alpha",
        "0.25",
        "--res",
        "128",
        "--weights",
        "random",
        "-o",
        str(out),
    ]


def test_fewer_than_two_classes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    make_images(tmp_path / "d", 3, seed=0, casts={"only": (1, 1, 1)})
    one_line_exit_2(
        capsys,
        base_args(tmp_path / "d", tmp_path / "o.mlpackage"),
        "at least 2 class folders",
        "found 1 ('only')",
    )
    assert list(tmp_path.iterdir()) == [tmp_path / "d"]


def test_class_without_images(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    make_images(tmp_path / "d", 3, seed=0)
    (tmp_path / "d" / "empty").mkdir()
    (tmp_path / "d" / "empty" / "notes.txt").write_text("no pictures")
    one_line_exit_2(
        capsys,
        base_args(tmp_path / "d", tmp_path / "o.mlpackage"),
        "class 'empty'",
        "has no images",
    )


def test_class_whose_images_cannot_be_decoded(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    make_images(tmp_path / "d", 12, seed=0)
    bad = tmp_path / "d" / "broken"
    bad.mkdir()
    for i in range(2):
        (bad / f"{i}.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    one_line_exit_2(
        capsys,
        base_args(tmp_path / "d", tmp_path / "o.mlpackage"),
        "class 'broken' has no readable training images",
    )
    assert not (tmp_path / "o.safetensors").exists()


def test_no_readable_validation_image(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    make_images(tmp_path / "d" / "train", 8, seed=0)
    for name in CASTS:
        (tmp_path / "d" / "val" / name).mkdir(parents=True)
        (tmp_path / "d" / "val" / name / "x.png").write_bytes(b"")
    args = [*base_args(tmp_path / "d", tmp_path / "o.mlpackage"), "--max-bad-fraction", "0.5"]
    one_line_exit_2(capsys, args, "none of the 3 validation images can be decoded")


def test_undecodable_images_are_counted_then_refused_over_the_threshold(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    make_images(tmp_path / "d", 10, seed=0)
    (tmp_path / "d" / "Moss" / "zz_truncated.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    opts = TrainOptions(
        data_dir=tmp_path / "d",
        output=tmp_path / "o.mlpackage",
        alpha=ALPHA,
        res=RES,
        weights="random",
        package=False,
        epochs=3,
    )
    rep = train(opts).report
    assert len(rep.skipped) == 1 and rep.skipped[0][0].endswith("zz_truncated.png")
    one_line_exit_2(
        capsys,
        [*base_args(tmp_path / "d", tmp_path / "p.mlpackage"), "--max-bad-fraction", "0.01"],
        "1 of 31 images cannot be decoded",
        "zz_truncated.png",
    )


def test_imagenet_offline_says_how_to_pass_a_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("MNV1_COREML_BASE_URL", f"http://127.0.0.1:{port}/")
    monkeypatch.setenv("MNV1_COREML_CACHE", str(tmp_path / "cache"))
    make_images(tmp_path / "d", 3, seed=0)
    args = base_args(tmp_path / "d", tmp_path / "o.mlpackage")
    args[args.index("random")] = "imagenet"
    one_line_exit_2(capsys, args, "--weights PATH")
    assert not (tmp_path / "o.safetensors").exists()


def test_existing_outputs_are_refused_before_any_work(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    make_images(tmp_path / "d", 3, seed=0)
    (tmp_path / "o.labels.txt").write_text("keep me")
    one_line_exit_2(
        capsys,
        base_args(tmp_path / "d", tmp_path / "o.mlpackage"),
        "o.labels.txt already exists",
        "--force",
    )
    assert (tmp_path / "o.labels.txt").read_text() == "keep me"


def test_ctrl_c_keeps_the_best_checkpoint_and_skips_the_package(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    data = make_images(tmp_path / "d", 5, seed=7)
    step = torch.optim.LBFGS.step
    calls = []

    def interrupted_step(self, closure):  # Ctrl-C during the probe's third epoch
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return step(self, closure)

    monkeypatch.setattr(torch.optim.LBFGS, "step", interrupted_step)
    out = tmp_path / "o.mlpackage"
    assert main(base_args(data, out)) == 130
    assert "interrupted: kept the best state so far (probe epoch" in capsys.readouterr().err
    assert not out.exists()
    rep = json.loads((tmp_path / "o.report.json").read_text())
    assert rep["interrupted"] and len(rep["history"]) == 2
    assert (tmp_path / "o.labels.txt").read_text("utf-8") == "Moss\namber\n石板\n"
    saved = load_weights(str(tmp_path / "o.safetensors"), ALPHA, RES)
    assert saved.num_classes == 3
