"""Palettization through coremltools, with our exact k-means as its ``lut_function``.

coremltools' ``palettize_weights`` pass walks the const ops one by one and, in ``"custom"``
mode, calls ``lut_function(values)`` once per palette: with the whole tensor for per-tensor
granularity, or with each channel group (the weight split along its output-channel axis, axis 0
for conv and linear) for per-grouped-channel. It expects ``(lut, indices)``: a 1-D LUT whose
length is a power of two, in the weight's dtype, and one flat index per value.

To use both cores, every palette is computed up front in a thread pool (the numba kernel runs
without the GIL), keyed by a digest of the exact bytes coremltools will pass; the
``lut_function`` then only looks its palette up. A miss (coremltools grouping differently from
what we predicted) is still served exactly, just computed on the spot, and counted.

Weight selection: only the const feeding the ``weight`` input of each ``conv`` and ``linear``
op, by name (``op_name_configs``) with ``weight_threshold=0``. ``op_type_configs`` for conv and
linear would also select their bias consts, which only a coremltools workaround for rank-1
tensors happens to skip; by name, biases and other consts are never touched.
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from ..coreml import Program, cto
from .kmeans import Palette, palettize_array

__all__ = [
    "CHANNEL_AXIS",
    "PaletteCache",
    "WeightSite",
    "effective_group_size",
    "find_weight_sites",
    "iter_ops",
    "readback_sse",
    "precompute_palettes",
    "split_groups",
]

#: Output-channel axis of conv ([C_out, C_in/groups, kh, kw]) and linear ([out, in]) weights,
#: the axis coremltools groups channels along.
CHANNEL_AXIS = 0
COMPRESSIBLE_OPS = ("conv", "linear")
#: coremltools keeps consts under 10 elements inline in the program and will not compress them.
MIN_WEIGHT_FILE_SIZE = 10


@dataclass(frozen=True)
class WeightSite:
    """The constant weight of one conv or linear op."""

    op_name: str
    op_type: str
    weight_name: str  # name of the const op (and of its output var)
    shape: tuple[int, ...]
    value: np.ndarray = field(repr=False, compare=False)


def iter_ops(block: object) -> Iterable[object]:
    """Every op of a block and of the blocks nested in it."""
    for op in block.operations:  # type: ignore[attr-defined]
        yield op
        for inner in op.blocks:
            yield from iter_ops(inner)


def find_weight_sites(prog: Program) -> tuple[list[WeightSite], list[tuple[str, tuple, str]]]:
    """Constant conv/linear weights that can be compressed, and (name, shape, reason) for the
    conv/linear weights that cannot."""
    sites: list[WeightSite] = []
    skipped: list[tuple[str, tuple, str]] = []
    seen: set[str] = set()
    for func in prog.functions.values():
        for op in iter_ops(func):
            if op.op_type not in COMPRESSIBLE_OPS:
                continue
            var = op.inputs["weight"]
            producer = var.op
            shape = tuple(int(d) for d in var.shape)
            if producer is None or producer.op_type != "const":
                kind = "an input" if producer is None else f"computed by {producer.op_type}"
                skipped.append((var.name, shape, f"weight of {op.name} is {kind}, not a const"))
                continue
            if producer.name in seen:
                continue  # a weight shared by several ops is compressed once
            seen.add(producer.name)
            value = producer.outputs[0].val
            if not np.issubdtype(value.dtype, np.floating):
                reason = f"weight dtype {value.dtype} is not floating point"
            elif value.size < MIN_WEIGHT_FILE_SIZE:
                reason = f"{value.size} elements: Core ML keeps consts under 10 inline"
            elif value.ndim < 2:
                reason = "rank-1 weight: coremltools does not compress rank-1 consts"
            else:
                reason = ""
            if reason:
                skipped.append((producer.name, shape, reason))
                continue
            sites.append(WeightSite(op.name, op.op_type, producer.name, shape, value))
    return sites, skipped


def effective_group_size(channels: int, group_size: int) -> int:
    """Largest divisor of ``channels`` that is <= ``group_size``.

    coremltools skips any weight whose channel count its group size does not divide (MobileNet's
    1000-class classifier with 16, an 8-channel alpha=0.25 stem with 16); shrinking the group
    keeps every weight compressed, with at least as many palettes as asked for.
    """
    g = min(group_size, channels)
    while channels % g:
        g -= 1
    return g


def split_groups(value: np.ndarray, group_size: int | None) -> list[np.ndarray]:
    """The arrays coremltools will hand to ``lut_function``: the tensor, or its channel groups."""
    if group_size is None:
        return [value]
    return np.split(value, value.shape[CHANNEL_AXIS] // group_size, axis=CHANNEL_AXIS)


def _key(values: np.ndarray) -> tuple:
    data = np.ascontiguousarray(values)
    digest = hashlib.blake2b(memoryview(data).cast("B"), digest_size=16).digest()
    return (data.shape, data.dtype.str, digest)


class PaletteCache:
    """Palettes computed ahead of the coremltools pass, served to it as a ``lut_function``."""

    def __init__(self, nbits: int) -> None:
        self.nbits = nbits
        self._palettes: dict[tuple, Palette] = {}
        self._lock = threading.Lock()
        self.misses = 0

    def add(self, values: np.ndarray, palette: Palette) -> None:
        with self._lock:
            self._palettes[_key(values)] = palette

    def lut_function(self, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The coremltools ``lut_function`` contract: (LUT of 2**nbits entries in the weight
        dtype, uint8 index per value in row-major order)."""
        palette = self._palettes.get(_key(values))
        if palette is None:
            self.misses += 1
            palette = palettize_array(values, self.nbits)
        return palette.lut, palette.indices


def precompute_palettes(
    sites: list[WeightSite],
    nbits: int,
    group_sizes: dict[str, int] | None,
    workers: int | None = None,
) -> tuple[PaletteCache, dict[str, float]]:
    """Cluster every tensor (or channel group) in parallel; returns the cache and the weighted
    SSE of each weight (summed over its groups), keyed by weight name."""
    cache = PaletteCache(nbits)
    jobs: list[tuple[str, np.ndarray]] = []
    for site in sites:
        g = None if group_sizes is None else group_sizes[site.weight_name]
        jobs.extend((site.weight_name, part) for part in split_groups(site.value, g))
    # Largest first, so the last job to finish is a short one.
    jobs.sort(key=lambda job: job[1].size, reverse=True)
    workers = max(1, min(workers or os.cpu_count() or 1, len(jobs)))

    def run(job: tuple[str, np.ndarray]) -> tuple[str, float]:
        name, part = job
        palette = palettize_array(part, nbits)
        cache.add(part, palette)
        return name, palette.sse

    sse: dict[str, float] = {site.weight_name: 0.0 for site in sites}
    if workers == 1:
        results: Iterable[tuple[str, float]] = map(run, jobs)
    else:
        pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="palettize")
        with pool:
            results = list(pool.map(run, jobs))
    for name, part_sse in results:
        sse[name] += part_sse
    return cache, sse


def palettizer_config(
    sites: list[WeightSite],
    nbits: int,
    group_sizes: dict[str, int] | None,
    lut_function: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]] | None,
) -> cto.OptimizationConfig:
    """One ``OpPalettizerConfig`` per weight const: ours (``custom``) or coremltools' k-means."""
    configs = {}
    for site in sites:
        kwargs: dict[str, object] = {"weight_threshold": 0}
        if lut_function is None:
            kwargs.update(mode="kmeans", nbits=nbits)
        else:
            kwargs.update(mode="custom", lut_function=lut_function)
        if group_sizes is not None:
            kwargs.update(
                granularity="per_grouped_channel",
                group_size=group_sizes[site.weight_name],
                channel_axis=CHANNEL_AXIS,
            )
        configs[site.weight_name] = cto.OpPalettizerConfig(**kwargs)
    return cto.OptimizationConfig(op_name_configs=configs)


def readback_sse(original: np.ndarray, constexpr_op: object) -> float:
    """Weighted SSE of a compressed weight, read back from the constexpr op that now feeds it
    (``constexpr_lut_to_dense`` or a dequantize op, decompressed as Core ML will) against the
    original values, in float64."""
    dense = constexpr_op.materialized_val_inference()  # type: ignore[attr-defined]
    diff = dense.astype(np.float64) - original.astype(np.float64)
    return float(np.sum(diff * diff))
