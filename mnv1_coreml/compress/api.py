"""Public entry point: compress every conv/linear weight of a Core ML ML Program.

``compress(mlmodel, config)`` finds the weight of every conv and linear op, runs the pass that
``config``'s class registered here with :func:`compression_pass`, and checks, op by op, that
coremltools really compressed each weight.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from ..coreml import (
    TARGETS,
    cto,
    load_program,
    quiet_coremltools,
    shared_constants,
    target_name,
)
from ..errors import UserError
from .config import CompressionConfig, Palettize, QuantizeInt8, QuantizeW8A8
from .kmeans import warm_up
from .palettize import (
    WeightSite,
    effective_group_size,
    find_weight_sites,
    iter_ops,
    palettizer_config,
    precompute_palettes,
    readback_sse,
)
from .quantize import DEQUANTIZE_OPS, quantizer_config

QUANTIZE_METHOD = "int8-symmetric-per-channel"


def required_target(config: CompressionConfig) -> Any:
    """The ``ct.target`` the compressed model needs (see ``CompressionConfig.required_target``)."""
    return TARGETS[config.required_target()]


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

    config: CompressionConfig
    target: str  # oldest deployment target the compression needs
    compressed: list[CompressedWeight] = field(default_factory=list)
    uncompressed: list[UncompressedWeight] = field(default_factory=list)
    #: per-grouped-channel only: channels per palette of each weight (the largest divisor of
    #: its channel count not above ``spec.group_size``).
    group_sizes: dict[str, int] = field(default_factory=dict)
    #: palettes coremltools asked for that were not precomputed (0 unless its grouping changed)
    lut_cache_misses: int = 0
    seconds: dict[str, float] = field(default_factory=dict)
    #: W8A8 only: which activations were quantized, which left fp16 (why), the calibration
    activations: Any = None  # w8a8.ActivationQuantization | None

    def summary_lines(self) -> list[str]:
        """Human-readable summary for the CLI: what was done, how well, what was left."""
        config = self.config
        total = len(self.compressed) + len(self.uncompressed)
        what = " ".join(v for v in config.describe().values() if v != "none")
        lines = [
            f"compressed {len(self.compressed)}/{total} conv/linear weights: {what}, "
            f"target {self.target}, {self.seconds.get('total', 0.0):.2f} s"
        ]
        sses = [w.sse for w in self.compressed if w.sse is not None]
        if sses:
            lines.append(f"weight SSE vs original: total {sum(sses):.4g}, worst {max(sses):.4g}")
        adjusted = {
            name: g for name, g in self.group_sizes.items()
            if g != getattr(config, "group_size", g)
        }
        if adjusted:
            lines.append(
                "group size reduced to a divisor of the channel count for "
                + ", ".join(f"{name} ({g})" for name, g in adjusted.items())
            )
        lines.extend(
            f"NOT compressed: {w.name} {list(w.shape)}: {w.reason}" for w in self.uncompressed
        )
        if self.activations is not None:
            lines.extend(self.activations.summary_lines())
        return lines

    def to_json(self) -> dict:
        return {
            "config": self.config.to_json(),
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
            "activations": None if self.activations is None else self.activations.to_json(),
        }


@dataclass
class PassResult:
    """What a compression pass produced: the model, and how to recognise a compressed weight."""

    model: Any
    method: str  # recorded per weight in the report
    nbits: int
    producer_ops: tuple[str, ...]  # op types that may feed a compressed weight
    sse: dict[str, float] = field(default_factory=dict)  # per weight, where the pass knows it


CompressionPass = Callable[[Any, Any, list[WeightSite], CompressionReport, int | None], PassResult]
_PASSES: dict[type[CompressionConfig], CompressionPass] = {}


def compression_pass(
    config_type: type[CompressionConfig],
) -> Callable[[CompressionPass], CompressionPass]:
    """Register ``fn(mlmodel, config, sites, report, workers) -> PassResult`` for a config type."""

    def decorate(fn: CompressionPass) -> CompressionPass:
        _PASSES[config_type] = fn
        return fn

    return decorate


@compression_pass(QuantizeInt8)
def _quantize_int8(mlmodel, config, sites, report, workers) -> PassResult:
    t = time.perf_counter()
    new_model = cto.linear_quantize_weights(mlmodel, quantizer_config(sites))
    report.seconds["coremltools_pass"] = time.perf_counter() - t
    return PassResult(new_model, QUANTIZE_METHOD, 8, DEQUANTIZE_OPS)


@compression_pass(QuantizeW8A8)
def _quantize_w8a8(mlmodel, config, sites, report, workers) -> PassResult:
    from .w8a8 import quantize_w8a8

    t = time.perf_counter()
    new_model, report.activations = quantize_w8a8(
        mlmodel, quantizer_config(sites), config.calibration
    )
    report.seconds["calibration"] = report.activations.calibration_seconds
    report.seconds["coremltools_pass"] = (
        time.perf_counter() - t - report.activations.calibration_seconds
    )
    return PassResult(new_model, QUANTIZE_METHOD, 8, DEQUANTIZE_OPS)


@compression_pass(Palettize)
def _palettize(mlmodel, config, sites, report, workers) -> PassResult:
    group_sizes = None
    if config.granularity == "per-grouped-channel":
        group_sizes = {
            s.weight_name: effective_group_size(s.shape[0], config.group_size) for s in sites
        }
        report.group_sizes = dict(group_sizes)
    lut_function, cache, our_sse = None, None, {}
    if config.method == "optimal":
        t = time.perf_counter()
        warm_up()
        cache, our_sse = precompute_palettes(sites, config.bits, group_sizes, workers)
        lut_function = cache.lut_function
        report.seconds["cluster"] = time.perf_counter() - t
    t = time.perf_counter()
    new_model = cto.palettize_weights(
        mlmodel, palettizer_config(sites, config.bits, group_sizes, lut_function)
    )
    report.seconds["coremltools_pass"] = time.perf_counter() - t
    if cache is not None:
        report.lut_cache_misses = cache.misses
    return PassResult(new_model, config.method, config.bits, ("constexpr_lut_to_dense",), our_sse)


def compress(
    mlmodel: Any, config: CompressionConfig, *, workers: int | None = None
) -> tuple[Any, CompressionReport]:
    """Compress every conv and linear weight of ``mlmodel`` as ``config`` says.

    Returns the new model (the input is not modified) and a report listing each compressed
    weight with its SSE, and each conv/linear weight left as is with the reason. ``workers``
    bounds the clustering threads (default: all cores).
    """
    t_start = time.perf_counter()
    run_pass = _PASSES.get(type(config))
    if run_pass is None:
        raise UserError(f"no compression pass for {type(config).__name__}")
    model_spec = mlmodel.get_spec()
    if model_spec.WhichOneof("Type") != "mlProgram":
        raise UserError(
            "compression needs an ML Program model (convert_to='mlprogram'), "
            f"got {model_spec.WhichOneof('Type')}"
        )
    target = config.required_target()
    have = model_spec.specificationVersion
    if have < TARGETS[target].value:
        what = " ".join(v for v in config.describe().values() if v != "none")
        raise UserError(
            f"{what} needs minimum_deployment_target >= {target}, the model targets "
            f"{target_name(have)}: re-convert with ct.target.{target}"
        )

    prog = load_program(mlmodel)
    sites, skipped = find_weight_sites(prog)
    report = CompressionReport(config=config, target=target)
    report.uncompressed.extend(UncompressedWeight(*s) for s in skipped)
    with quiet_coremltools(), shared_constants():
        result = run_pass(mlmodel, config, sites, report, workers)
    new_ops = {}
    for func in load_program(result.model).functions.values():
        new_ops.update({op.name: op for op in iter_ops(func)})
    for site in sites:
        op = new_ops.get(site.op_name)
        producer = None if op is None else op.inputs["weight"].op
        if producer is None or producer.op_type not in result.producer_ops:
            found = "missing" if op is None else f"fed by {getattr(producer, 'op_type', None)}"
            report.uncompressed.append(
                UncompressedWeight(
                    site.weight_name, site.shape, f"coremltools left it uncompressed ({found})"
                )
            )
            continue
        sse = result.sse.get(site.weight_name)
        if sse is None:
            sse = readback_sse(site.value, producer)
        report.compressed.append(
            CompressedWeight(
                site.weight_name, site.op_type, site.shape, result.method, result.nbits, sse
            )
        )
    report.seconds["total"] = time.perf_counter() - t_start
    return result.model, report


__all__ = [
    "CompressedWeight", "CompressionReport", "PassResult", "UncompressedWeight", "compress",
    "compression_pass", "required_target",
]
