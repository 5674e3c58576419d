"""Weight compression for the converted MobileNet: palettization with exact k-means, or int8.

coremltools' own palettization k-means is slow (8-12 s for MobileNet V1 1.0-224 on 2 cores)
and, below 10k weights, not optimal. ``compress`` plugs an exact, histogram-based 1-D k-means
(:mod:`.kmeans`) into coremltools' palettization pass and compresses every conv and linear
weight, however small.

    from mnv1_coreml.compress import CompressionSpec, compress, required_target
    spec = CompressionSpec(palettize_bits=8)
    mlmodel = ct.convert(..., minimum_deployment_target=required_target(spec))
    small_model, report = compress(mlmodel, spec)
"""

from .api import (
    PALETTE_BITS,
    CompressedWeight,
    CompressionReport,
    CompressionSpec,
    UncompressedWeight,
    compress,
    required_target,
)

__all__ = [
    "PALETTE_BITS",
    "CompressedWeight",
    "CompressionReport",
    "CompressionSpec",
    "UncompressedWeight",
    "compress",
    "required_target",
]
