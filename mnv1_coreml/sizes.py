"""How small can the ``.mlpackage`` be? Its bytes on disk against the format's floor.

The floor counts only what the weights themselves need in a MIL weight file: every tensor is a
blob with a 64-byte header and data padded to 64 bytes, after a 64-byte file header.

* fp16 / fp32: 2 / 4 bytes per value, for every conv weight, every conv bias (BatchNorm folds
  into it) and the FC weight and bias.
* palettized n-bit: ``ceil(numel * n / 8)`` index bytes plus a ``2^n``-entry fp16 LUT (two blobs)
  per conv/FC weight; biases stay fp16.
* int8: one byte per weight plus a per-output-channel fp16 scale (two blobs); biases stay fp16.

Everything else in the package (the spec with its 1000 labels and metadata, the manifest) is
overhead, and the ratio ``size / floor`` measures it.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import torch
from torch import nn

from .compress.config import CompressionConfig, Palettize, QuantizeInt8
from .errors import UserError
from .fsutil import as_path
from .model import ConvBnAct, MobileNetConfig, MobileNetV1

BLOB_HEADER = 64
FILE_HEADER = 64
ALIGN = 64


def _blob(nbytes: int) -> int:
    return BLOB_HEADER + math.ceil(nbytes / ALIGN) * ALIGN


@dataclass(frozen=True)
class WeightTensor:
    name: str
    numel: int
    out_channels: int


def weight_tensors(cfg: MobileNetConfig) -> tuple[list[WeightTensor], list[int]]:
    """Conv/FC weights (compressible) and bias lengths (kept fp16) after BN folding."""
    with torch.device("meta"):
        model = MobileNetV1(cfg)
    weights, biases = [], []
    for name, m in model.named_modules():
        if isinstance(m, ConvBnAct):
            weights.append(WeightTensor(name, m.conv.weight.numel(), m.conv.out_channels))
            biases.append(m.conv.out_channels)
        elif isinstance(m, nn.Linear):
            weights.append(WeightTensor(name, m.weight.numel(), m.out_features))
            biases.append(m.out_features)
    return weights, biases


def floor_bytes(
    cfg: MobileNetConfig, precision: str = "fp16", compression: CompressionConfig | None = None
) -> int:
    """The smallest weight file that can hold this model in this format."""
    palettize_bits, quantize = None, None
    if isinstance(compression, Palettize):
        palettize_bits = compression.bits
    elif isinstance(compression, QuantizeInt8):
        quantize = "int8"
    elif compression is not None:
        raise UserError(f"no size floor known for {type(compression).__name__}")
    weights, biases = weight_tensors(cfg)
    value_bytes = 4 if precision == "fp32" else 2
    total = FILE_HEADER + sum(_blob(b * value_bytes) for b in biases)
    for w in weights:
        if palettize_bits:
            total += _blob(math.ceil(w.numel * palettize_bits / 8))
            total += _blob((1 << palettize_bits) * value_bytes)
        elif quantize == "int8":
            total += _blob(w.numel) + _blob(w.out_channels * value_bytes)
        else:
            total += _blob(w.numel * value_bytes)
    return total


def package_bytes(path: str | os.PathLike[str]) -> int:
    """Bytes of every file in the package (what an app bundle carries before compilation)."""
    return sum(p.stat().st_size for p in as_path(path).rglob("*") if p.is_file())
