"""Public entry point: compress every conv/linear weight of a Core ML ML Program."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Literal, NamedTuple

from ._coremltools import ct, cto, load_program
from .kmeans import warm_up
from .palettize import (
    effective_group_size,
    find_weight_sites,
    iter_ops,
    palettizer_config,
    precompute_palettes,
    readback_sse,
)
from .quantize import DEQUANTIZE_OPS, quantizer_config

Granularity = Literal["per-tensor", "per-grouped-channel"]
Method = Literal["optimal", "coremltools"]
#: LUT sizes Core ML supports; 3 bits (8 entries) only from iOS18 on.
PALETTE_BITS = (1, 2, 3, 4, 6, 8)
QUANTIZE_METHOD = "int8-symmetric-per-channel"


@dataclass(frozen=True)
class CompressionSpec:
    """What to do to the weights: palettize (``palettize_bits``) or quantize (``"int8"``).

    ``method`` picks the palette clustering: ``"optimal"`` (exact k-means, ours) or
    ``"coremltools"`` (its own k-means, kept for comparison). ``group_size`` only applies to
    ``granularity="per-grouped-channel"``.
    """

    palettize_bits: int | None = None
    granularity: Granularity = "per-tensor"
    group_size: int = 16
    quantize: Literal["int8"] | None = None
    method: Method = "optimal"

    def __post_init__(self) -> None:
        if self.palettize_bits is not None and self.quantize is not None:
            raise ValueError("palettize and quantize are mutually exclusive: choose one")
        if self.palettize_bits is None and self.quantize is None:
            raise ValueError("nothing to compress: set palettize_bits or quantize='int8'")
        if self.palettize_bits is not None and (
            isinstance(self.palettize_bits, bool) or self.palettize_bits not in PALETTE_BITS
        ):
            raise ValueError(
                f"palettize_bits must be one of {PALETTE_BITS}, got {self.palettize_bits!r}"
            )
        if self.quantize not in (None, "int8"):
            raise ValueError(f"quantize must be 'int8', got {self.quantize!r}")
        if self.granularity not in ("per-tensor", "per-grouped-channel"):
            raise ValueError(
                "granularity must be 'per-tensor' or 'per-grouped-channel', "
                f"got {self.granularity!r}"
            )
        if self.quantize is not None and self.granularity != "per-tensor":
            raise ValueError("granularity applies to palettization only (int8 is per-channel)")
        if isinstance(self.group_size, bool) or not (
            isinstance(self.group_size, int) and self.group_size >= 1
        ):
            raise ValueError(f"group_size must be an integer >= 1, got {self.group_size!r}")
        if self.method not in ("optimal", "coremltools"):
            raise ValueError(f"method must be 'optimal' or 'coremltools', got {self.method!r}")


def required_target(spec: CompressionSpec) -> ct.target:
    """Oldest deployment target whose Core ML runs the compressed model.

    iOS16 introduced per-tensor LUTs of 2, 4, 16, 64 or 256 entries and per-channel int8;
    grouped palettes (one LUT per channel group) and 8-entry LUTs arrived with iOS18.
    """
    if spec.quantize is not None:
        return ct.target.iOS16
    if spec.granularity == "per-grouped-channel" or spec.palettize_bits == 3:
        return ct.target.iOS18
    return ct.target.iOS16


class CompressedWeight(NamedTuple):
    name: str  # the weight const (var) name in the ML Program
    op_type: str  # "conv" or "linear"
    shape: tuple[int, ...]
    method: str  # "optimal", "coremltools" or "int8-symmetric-per-channel"
    nbits: int
    sse: float | None  # sum of squared errors against the original weights (float64)


class UncompressedWeight(NamedTuple):
    name: str
    shape: tuple[int, ...]
    reason: str


@dataclass
class CompressionReport:
    """What was compressed, how well, and what was not (with why)."""

    spec: CompressionSpec
    target: str  # oldest deployment target the compression needs (``required_target``)
    compressed: list[CompressedWeight] = field(default_factory=list)
    uncompressed: list[UncompressedWeight] = field(default_factory=list)
    #: per-grouped-channel only: channels per palette of each weight (the largest divisor of
    #: its channel count not above ``spec.group_size``).
    group_sizes: dict[str, int] = field(default_factory=dict)
    #: palettes coremltools asked for that were not precomputed (0 unless its grouping changed)
    lut_cache_misses: int = 0
    seconds: dict[str, float] = field(default_factory=dict)

    def summary_lines(self) -> list[str]:
        """Human-readable summary for the CLI: what was done, how well, what was left."""
        spec = self.spec
        total = len(self.compressed) + len(self.uncompressed)
        if spec.quantize:
            what = "int8 linear-symmetric per-channel"
        else:
            what = f"{spec.palettize_bits}-bit {spec.granularity}"
            if spec.granularity == "per-grouped-channel":
                what += f" (group size {spec.group_size})"
            what += " palettes, " + (
                "optimal k-means" if spec.method == "optimal" else "coremltools k-means"
            )
        lines = [
            f"compressed {len(self.compressed)}/{total} conv/linear weights: {what}, "
            f"target {self.target}, {self.seconds.get('total', 0.0):.2f} s"
        ]
        sses = [w.sse for w in self.compressed if w.sse is not None]
        if sses:
            lines.append(f"weight SSE vs original: total {sum(sses):.4g}, worst {max(sses):.4g}")
        adjusted = {
            name: g for name, g in self.group_sizes.items() if g != spec.group_size
        }
        if adjusted:
            lines.append(
                "group size reduced to a divisor of the channel count for "
                + ", ".join(f"{name} ({g})" for name, g in adjusted.items())
            )
        lines.extend(
            f"NOT compressed: {w.name} {list(w.shape)}: {w.reason}" for w in self.uncompressed
        )
        return lines

    def to_json(self) -> dict:
        return {
            "spec": asdict(self.spec),
            "target": self.target,
            "compressed": [
                {**w._asdict(), "shape": list(w.shape)} for w in self.compressed
            ],
            "uncompressed": [
                {**w._asdict(), "shape": list(w.shape)} for w in self.uncompressed
            ],
            "group_sizes": dict(self.group_sizes),
            "lut_cache_misses": self.lut_cache_misses,
            "seconds": {k: round(v, 4) for k, v in self.seconds.items()},
        }


def _target_name(version: int) -> str:
    for target in ct.target:
        if target.value == version and target.name.startswith("iOS"):
            return target.name
    return f"specification version {version}"


def compress(
    mlmodel: ct.models.MLModel, spec: CompressionSpec, *, workers: int | None = None
) -> tuple[ct.models.MLModel, CompressionReport]:
    """Compress every conv and linear weight of ``mlmodel`` as ``spec`` says.

    Returns the new model (the input is not modified) and a report listing each compressed
    weight with its SSE, and each conv/linear weight left as is with the reason. ``workers``
    bounds the clustering threads (default: all cores).
    """
    t_start = time.perf_counter()
    model_spec = mlmodel.get_spec()
    if model_spec.WhichOneof("Type") != "mlProgram":
        raise ValueError(
            "compression needs an ML Program model (convert_to='mlprogram'), "
            f"got {model_spec.WhichOneof('Type')}"
        )
    target = required_target(spec)
    have = model_spec.specificationVersion
    if have < target.value:
        what = (
            "int8 quantization" if spec.quantize else
            f"{spec.palettize_bits}-bit {spec.granularity} palettization"
        )
        raise ValueError(
            f"{what} needs minimum_deployment_target >= {target.name}, the model targets "
            f"{_target_name(have)}: re-convert with ct.target.{target.name}"
        )

    prog = load_program(mlmodel)
    sites, skipped = find_weight_sites(prog)
    report = CompressionReport(spec=spec, target=target.name)
    report.uncompressed.extend(UncompressedWeight(*s) for s in skipped)
    our_sse: dict[str, float] = {}
    seconds: dict[str, float] = {}

    if spec.quantize is not None:
        method, nbits, expected = QUANTIZE_METHOD, 8, DEQUANTIZE_OPS
        t = time.perf_counter()
        new_model = cto.linear_quantize_weights(mlmodel, quantizer_config(sites))
        seconds["coremltools_pass"] = time.perf_counter() - t
    else:
        method, nbits, expected = spec.method, spec.palettize_bits, ("constexpr_lut_to_dense",)
        group_sizes = None
        if spec.granularity == "per-grouped-channel":
            group_sizes = {
                s.weight_name: effective_group_size(s.shape[0], spec.group_size) for s in sites
            }
            report.group_sizes = dict(group_sizes)
        lut_function = None
        if spec.method == "optimal":
            t = time.perf_counter()
            warm_up()
            cache, our_sse = precompute_palettes(sites, nbits, group_sizes, workers)
            lut_function = cache.lut_function
            seconds["cluster"] = time.perf_counter() - t
        t = time.perf_counter()
        config = palettizer_config(sites, nbits, group_sizes, lut_function)
        new_model = cto.palettize_weights(mlmodel, config)
        seconds["coremltools_pass"] = time.perf_counter() - t
        if spec.method == "optimal":
            report.lut_cache_misses = cache.misses

    new_ops = {}
    for func in load_program(new_model).functions.values():
        new_ops.update({op.name: op for op in iter_ops(func)})
    for site in sites:
        op = new_ops.get(site.op_name)
        producer = None if op is None else op.inputs["weight"].op
        if producer is None or producer.op_type not in expected:
            found = "missing" if op is None else f"fed by {getattr(producer, 'op_type', None)}"
            report.uncompressed.append(
                UncompressedWeight(
                    site.weight_name, site.shape, f"coremltools left it uncompressed ({found})"
                )
            )
            continue
        sse = our_sse.get(site.weight_name)
        if sse is None:
            sse = readback_sse(site.value, producer)
        report.compressed.append(
            CompressedWeight(site.weight_name, site.op_type, site.shape, method, nbits, sse)
        )
    seconds["total"] = time.perf_counter() - t_start
    report.seconds = seconds
    return new_model, report
