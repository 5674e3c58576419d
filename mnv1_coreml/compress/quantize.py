"""int8 weight quantization: coremltools' linear symmetric, per output channel.

Symmetric keeps zero exact (no zero point to store); one scale per output channel follows the
very different ranges of MobileNet's depthwise and pointwise filters. Core ML represents it as
``constexpr_affine_dequantize`` (iOS16/17) or ``constexpr_blockwise_shift_scale`` (iOS18+).
"""

from __future__ import annotations

from ..coreml import cto
from .palettize import WeightSite

__all__ = ["DEQUANTIZE_OPS", "quantizer_config"]

DEQUANTIZE_OPS = ("constexpr_affine_dequantize", "constexpr_blockwise_shift_scale")


def quantizer_config(sites: list[WeightSite]) -> cto.OptimizationConfig:
    """One int8 config per weight const, selected by name so biases are never quantized."""
    config = cto.OpLinearQuantizerConfig(
        mode="linear_symmetric",
        dtype="int8",
        granularity="per_channel",
        weight_threshold=0,
    )
    return cto.OptimizationConfig(op_name_configs={s.weight_name: config for s in sites})
