"""mnv1-coreml: MobileNet V1 from PyTorch to Core ML, with proof that both compute the same.

The Python API (see README "Python API")::

    import mnv1_coreml as mc

    result = mc.convert(alpha=0.25, res=128, weights="random", output="m.mlpackage",
                        compression=mc.Palettize(8))
    report = mc.validate("m.mlpackage", golden="golden/random-0_0.25_128")

Names are imported on first use, so ``import mnv1_coreml`` stays cheap (no torch, no
coremltools until something needs them).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ._version import __version__
from .errors import UserError

if TYPE_CHECKING:
    from .compress.config import Palettize, QuantizeInt8, QuantizeW8A8
    from .mil import ReferenceModel
    from .model import build_model
    from .pipeline import ConvertOptions, ConvertResult, convert
    from .train import TrainOptions, train
    from .validation import validate
    from .weights import load_weights

#: public name -> module that defines it
_LAZY = {
    "convert": "pipeline",
    "ConvertOptions": "pipeline",
    "ConvertResult": "pipeline",
    "validate": "validation",
    "load_weights": "weights",
    "build_model": "model",
    "ReferenceModel": "mil",
    "Palettize": "compress.config",
    "QuantizeInt8": "compress.config",
    "QuantizeW8A8": "compress.config",
    "train": "train",
    "TrainOptions": "train",
}

__all__ = [
    "ConvertOptions", "ConvertResult", "Palettize", "QuantizeInt8", "QuantizeW8A8",
    "ReferenceModel", "UserError", "__version__", "build_model", "convert", "load_weights",
    "validate", "train", "TrainOptions",
]


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'mnv1_coreml' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
