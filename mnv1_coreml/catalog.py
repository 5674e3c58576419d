"""The 16 published MobileNet V1 variants: Keras weight files and published ImageNet accuracy.

Accuracy comes from ``data/mobilenet_v1_variants.tsv`` (paper, TF-slim 2017/2018 tables, Keras
README); the model metadata and README quote it so users know what a variant should reach.
"""

from __future__ import annotations

import csv
import math
from functools import lru_cache
from importlib.resources import files
from typing import NamedTuple

KERAS_BASE_URL = "https://storage.googleapis.com/tensorflow/keras-applications/mobilenet/"
KERAS_ALPHAS: tuple[float, ...] = (0.25, 0.5, 0.75, 1.0)
KERAS_RESOLUTIONS: tuple[int, ...] = (128, 160, 192, 224)
_ALPHA_TAGS = {0.25: "2_5", 0.5: "5_0", 0.75: "7_5", 1.0: "1_0"}

#: Columns of :func:`published_accuracy` and where each number was published.
ACCURACY_SOURCES: dict[str, str] = {
    "paper_top1": "arXiv 1704.04861, Tables 6, 7 and 9",
    "slim2017_top1": "TF-slim mobilenet_v1.md, 2017-06-14 checkpoints",
    "slim2017_top5": "TF-slim mobilenet_v1.md, 2017-06-14 checkpoints",
    "slim2018_top1": "TF-slim mobilenet_v1.md, 2018-08-02 checkpoints",
    "slim2018_top5": "TF-slim mobilenet_v1.md, 2018-08-02 checkpoints",
    "slim2018_quant_top1": "TF-slim mobilenet_v1.md, 2018-08-02 8-bit quantized",
    "keras_top1": "keras-applications README (224 only)",
    "keras_top5": "keras-applications README (224 only)",
}


class KerasVariant(NamedTuple):
    """One published Keras Applications ImageNet file (converted from the 2017 slim ckpts)."""

    alpha: float
    res: int
    filename: str
    url: str


def keras_filename(alpha: float, res: int) -> str | None:
    """``mobilenet_<a>_<res>_tf.h5`` for a published variant, else None."""
    tag = _alpha_tag(alpha)
    if tag is None or res not in KERAS_RESOLUTIONS:
        return None
    return f"mobilenet_{tag}_{res}_tf.h5"


def _alpha_tag(alpha: float) -> str | None:
    for a, tag in _ALPHA_TAGS.items():
        if math.isclose(alpha, a, rel_tol=0, abs_tol=1e-9):
            return tag
    return None


#: All 16 files, largest first, with their canonical URLs.
KERAS_VARIANTS: tuple[KerasVariant, ...] = tuple(
    KerasVariant(a, r, name, KERAS_BASE_URL + name)
    for a in sorted(KERAS_ALPHAS, reverse=True)
    for r in sorted(KERAS_RESOLUTIONS, reverse=True)
    if (name := keras_filename(a, r)) is not None
)


def keras_variant(alpha: float, res: int) -> KerasVariant | None:
    """The published Keras file for (alpha, res), or None when Keras publishes none."""
    name = keras_filename(alpha, res)
    return next((v for v in KERAS_VARIANTS if v.filename == name), None)


def available_keras_variants() -> str:
    """Human-readable list for error messages."""
    alphas = ", ".join(f"{a:g}" for a in KERAS_ALPHAS)
    resolutions = ", ".join(str(r) for r in KERAS_RESOLUTIONS)
    return f"alpha {alphas} at res {resolutions}"


@lru_cache(maxsize=1)
def _variant_rows() -> dict[tuple[float, int], dict[str, float | None]]:
    text = files("mnv1_coreml").joinpath("data/mobilenet_v1_variants.tsv").read_text("utf-8")
    rows: dict[tuple[float, int], dict[str, float | None]] = {}
    for row in csv.DictReader(text.splitlines(), delimiter="\t"):
        key = (float(row["alpha"]), int(row["res"]))
        rows[key] = {
            col: float(row[col]) if row.get(col, "").strip() else None for col in ACCURACY_SOURCES
        }
    return rows


def published_accuracy(alpha: float, res: int) -> dict[str, float | None] | None:
    """Published ImageNet top-1/top-5 (%) for a paper variant, or None for other variants.

    Keys are those of :data:`ACCURACY_SOURCES`; a value is None where that source published no
    number (the paper and Keras skip most variants).
    """
    for (a, r), acc in _variant_rows().items():
        if r == res and math.isclose(alpha, a, rel_tol=0, abs_tol=1e-9):
            return dict(acc)
    return None
