"""Ground truth end to end: libraries' own logits -> our import -> Core ML -> reference backend."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from mnv1_coreml.backends import ReferenceBackend
from mnv1_coreml.pipeline import ConvertOptions, convert
from mnv1_coreml.validation import resolve_golden, validate
from tests.conftest import REPO, shared_fixture

SMALL = REPO / "tests" / "data" / "keras_mobilenet_0.25_128.h5"


def fixture_logits(weights: Path) -> tuple[np.ndarray, np.ndarray]:
    expected = weights.with_name(weights.stem + "_expected.npz")
    with np.load(expected, allow_pickle=False) as data:
        return data["images"], data["logits"]


def check_fp32_against_library(weights: Path, alpha: float, res: int, tmp_path: Path) -> None:
    out = tmp_path / "fp32.mlpackage"
    result = convert(ConvertOptions(alpha=alpha, res=res, weights=str(weights), precision="fp32",
                                    output=out))
    assert result.validation.passed, result.validation.verdict_line()
    images, library_logits = fixture_logits(weights)
    got = ReferenceBackend(out).run(images)
    assert got.logits is not None
    err = np.abs(got.logits - library_logits).max()
    assert err <= 1e-4, err
    # and through validate against the committed golden made from the same weights
    golden, label = resolve_golden(out, None)
    report = validate(out, golden, backend="reference", golden_label=label)
    assert report.passed and report.kind == "fp32", report.verdict_line()


def test_keras_0_25_128_fp32(tmp_path: Path) -> None:
    check_fp32_against_library(SMALL, 0.25, 128, tmp_path)


@pytest.mark.parametrize("kind", ["fp16", "pal8"])
def test_keras_0_25_128_compressed_validate(kind: str, tmp_path: Path) -> None:
    from mnv1_coreml.compress import Palettize

    out = tmp_path / f"{kind}.mlpackage"
    comp = Palettize(8) if kind == "pal8" else None
    convert(ConvertOptions(alpha=0.25, res=128, weights=str(SMALL), compression=comp,
                           output=out, validate=False))
    golden, label = resolve_golden(out, None)
    report = validate(out, golden, backend="reference", golden_label=label)
    assert report.passed, report.verdict_line()
    assert all(r.top1_agree or r.status == "ambiguous" for r in report.images)


@pytest.mark.slow
def test_keras_1_0_224_fp32(tmp_path: Path) -> None:
    check_fp32_against_library(shared_fixture("keras_mobilenet_1.0_224.h5"), 1.0, 224, tmp_path)


@pytest.mark.slow
def test_timm_1_0_224_fp32(tmp_path: Path) -> None:
    check_fp32_against_library(
        shared_fixture("timm_mobilenetv1_100.safetensors"), 1.0, 224, tmp_path
    )


# --- your own classes (issue 10): fine-tuned checkpoints with their labels -----------------------


def fixture_images_dir(weights: Path, directory: Path) -> np.ndarray:
    """The fixture's images as PNG files (already at the model's size, so kept untouched)."""
    from PIL import Image

    images, _ = fixture_logits(weights)
    directory.mkdir()
    for i, image in enumerate(images):
        Image.fromarray(image).save(directory / f"fixture_{i:02d}.png")
    return images


def check_classes_fixture(name: str, suffix: str, classes: int, tmp_path: Path) -> None:
    """Convert with the labels (alpha, res and N from the file), golden on the fixture's own
    images with the labels, validate the fp32 package against it, and against the library."""
    from mnv1_coreml.golden import create_golden
    from mnv1_coreml.labels import read_labels
    from mnv1_coreml.modelspec import read_contract

    weights = shared_fixture(name + suffix)
    labels_file = shared_fixture(name + ".labels.txt")
    out = tmp_path / "fp32.mlpackage"
    result = convert(ConvertOptions(weights=str(weights), labels=labels_file, precision="fp32",
                                    output=out, validate=False))
    labels = read_labels(labels_file)
    assert read_contract(out).labels == list(labels)
    assert result.metadata["mnv1.num_classes"] == str(classes)
    assert result.metadata["mnv1.published_imagenet_accuracy"] == "{}"

    images = fixture_images_dir(weights, tmp_path / "images")
    golden = create_golden(tmp_path / "golden", None, None, str(weights), labels=labels_file,
                           image_dir=tmp_path / "images")
    assert golden.logits.shape[1] == classes and golden.labels == list(labels)
    assert np.array_equal(golden.images[: len(images)], images)  # untouched by the golden
    _, library_logits = fixture_logits(weights)
    assert np.abs(golden.logits[: len(images)] - library_logits).max() <= 1e-4

    report = validate(out, tmp_path / "golden", backend="reference")
    assert report.passed and report.kind == "fp32", report.verdict_line()
    pick = [0, -3, -2, -1]  # a smooth picture and the pure red, green and blue frames
    got = ReferenceBackend(out).run(images[pick])
    assert got.logits is not None and np.abs(got.logits - library_logits[pick]).max() <= 1e-4
    assert [r.top1_golden for r in report.images[: len(images)]] == [
        labels[int(i)] for i in library_logits.argmax(axis=1)
    ]


def test_keras2_transfer_fp32_with_labels(tmp_path: Path) -> None:
    import json
    import shutil

    check_classes_fixture("keras_transfer_0.25_128", ".h5", 3, tmp_path)
    # the contract compares the labels' names and order with the golden's
    shutil.copytree(tmp_path / "golden", tmp_path / "swapped")
    manifest_path = tmp_path / "swapped" / "manifest.json"
    manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    manifest["labels"] = manifest["labels"][::-1]
    manifest_path.write_text(json.dumps(manifest), encoding="utf-8")
    report = validate(tmp_path / "fp32.mlpackage", tmp_path / "swapped", backend="reference")
    assert not report.passed
    assert any("class labels differ" in e for e in report.contract_errors), report.contract_errors


def test_keras3_transfer_fp32_with_labels(tmp_path: Path) -> None:
    check_classes_fixture("keras3_transfer_0.25_128", ".keras", 4, tmp_path)


@pytest.mark.slow
def test_timm_nc10_fp32_with_labels(tmp_path: Path) -> None:
    check_classes_fixture("timm_mobilenetv1_100_nc10", ".safetensors", 10, tmp_path)
