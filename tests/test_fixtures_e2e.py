"""Ground truth end to end: libraries' own logits -> our import -> Core ML -> reference backend."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from mnv1_coreml.backends import ReferenceBackend
from mnv1_coreml.convert import ConvertOptions, convert
from mnv1_coreml.validate import resolve_golden, validate
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
    from mnv1_coreml.compress import CompressionSpec

    out = tmp_path / f"{kind}.mlpackage"
    comp = CompressionSpec(palettize_bits=8) if kind == "pal8" else None
    convert(ConvertOptions(alpha=0.25, res=128, weights=str(SMALL), compression=comp,
                           output=out, validate=False))
    golden, label = resolve_golden(out, None)
    report = validate(out, golden, backend="reference", golden_label=label)
    assert report.passed, report.verdict_line()
    assert all(r.top1_agree or r.status == "ambiguous" for r in report.images)


def test_keras_1_0_224_fp32(tmp_path: Path) -> None:
    check_fp32_against_library(shared_fixture("keras_mobilenet_1.0_224.h5"), 1.0, 224, tmp_path)


def test_timm_1_0_224_fp32(tmp_path: Path) -> None:
    check_fp32_against_library(
        shared_fixture("timm_mobilenetv1_100.safetensors"), 1.0, 224, tmp_path
    )
