"""Compression of the converted MobileNet: palettization with exact k-means, int8, or W8A8.

coremltools' own palettization k-means is slow (8-12 s for MobileNet V1 1.0-224 on 2 cores)
and, below 10k weights, not optimal. ``compress`` plugs an exact, histogram-based 1-D k-means
(:mod:`.kmeans`) into coremltools' palettization pass and compresses every conv and linear
weight, however small. W8A8 (:mod:`.w8a8`) also quantizes activations, with ranges that the
reference interpreter measures. What to do is a config object, as in coremltools
``optimize.coreml``:

    from mnv1_coreml.compress import Palettize, compress, required_target
    config = Palettize(8)
    mlmodel = ct.convert(..., minimum_deployment_target=required_target(config))
    small_model, report = compress(mlmodel, config)
"""

from __future__ import annotations

import importlib
from typing import Any

from .config import (
    PALETTE_BITS,
    CompressionConfig,
    Palettize,
    QuantizeInt8,
    QuantizeW8A8,
    register,
)

#: The pass machinery imports coremltools and numba; it loads on first use, so that reading
#: the configs (the CLI's options, metadata) stays cheap.
_FROM_API = (
    "CompressedWeight", "CompressionReport", "UncompressedWeight", "compress",
    "compression_pass", "required_target",
)

__all__ = [
    "PALETTE_BITS", "CompressionConfig", "Palettize", "QuantizeInt8", "QuantizeW8A8", "register",
    *_FROM_API,
]


def __getattr__(name: str) -> Any:
    if name not in _FROM_API:
        raise AttributeError(f"module 'mnv1_coreml.compress' has no attribute {name!r}")
    return getattr(importlib.import_module(".api", __name__), name)
