"""The exact 1-D k-means against brute force, and the palettes built from it."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from mnv1_coreml.compress import kmeans as km
from mnv1_coreml.compress.kmeans import (
    brute_force_kmeans_1d,
    optimal_kmeans_1d,
    palettize_array,
)

RTOL = 1e-9


def close_or_below(value: float, optimum: float, scale: float) -> bool:
    """value equals the optimum up to float64 rounding of sums of size ``scale``."""
    return value <= optimum + RTOL * max(optimum, 0.0) + 1e-12 * scale


def enumerate_kmeans(x: np.ndarray, w: np.ndarray, k: int) -> float:
    """Least SSE over every split of the sorted values into at most k contiguous runs."""
    n = x.size
    best = np.inf
    for c in range(1, min(k, n) + 1):
        for cuts in itertools.combinations(range(1, n), c - 1):
            edges = (0, *cuts, n)
            sse = 0.0
            for a, b in itertools.pairwise(edges):
                mu = np.sum(w[a:b] * x[a:b]) / np.sum(w[a:b])
                sse += np.sum(w[a:b] * (x[a:b] - mu) ** 2)
            best = min(best, sse)
    return float(best)


def sse_of_starts(x: np.ndarray, w: np.ndarray, starts: np.ndarray) -> float:
    ends = np.append(starts[1:], x.size)
    return float(sum(
        np.sum(w[a:b] * (x[a:b] - np.sum(w[a:b] * x[a:b]) / np.sum(w[a:b])) ** 2)
        for a, b in zip(starts, ends, strict=True)
    ))


def reference_dp(x: np.ndarray, w: np.ndarray, k: int) -> float:
    """O(k n^2) DP scanning every split (no monotonicity assumed), vectorised per row."""
    n = x.size
    cw, c1, c2 = (np.concatenate([[0.0], np.cumsum(v)]) for v in (w, w * x, w * x * x))
    j = np.arange(n)
    best = np.array([c2[i + 1] - c1[i + 1] ** 2 / cw[i + 1] for i in range(n)])
    for _ in range(1, k):
        nxt = best.copy()
        for i in range(1, n):
            jj = j[1 : i + 1]
            cost = (c2[i + 1] - c2[jj]) - (c1[i + 1] - c1[jj]) ** 2 / (cw[i + 1] - cw[jj])
            nxt[i] = min(nxt[i], np.min(best[jj - 1] + cost))
        best = nxt
    return float(best[-1])


def random_case(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, int]:
    n = int(rng.integers(1, 14))
    kind = rng.integers(0, 3)
    if kind == 0:
        raw = rng.normal(size=n)
    elif kind == 1:
        raw = rng.integers(-3, 4, size=n).astype(float)  # many ties
    else:
        raw = np.concatenate([rng.normal(0, 1e-3, n), rng.normal(50, 1, 2)])  # two scales
    x = np.unique(raw)
    w = rng.integers(1, 20, size=x.size).astype(float)
    return x, w, int(rng.integers(1, 7))


def test_matches_brute_force_and_enumeration_on_many_small_inputs() -> None:
    rng = np.random.default_rng(1)
    for _ in range(400):
        x, w, k = random_case(rng)
        result = optimal_kmeans_1d(x, w, k)
        brute = brute_force_kmeans_1d(x, w, k)
        scale = float(np.sum(w * x * x))
        assert close_or_below(result.sse, brute, scale), (x, w, k)
        assert close_or_below(brute, result.sse, scale), (x, w, k)
        if x.size <= 9:
            assert np.isclose(enumerate_kmeans(x, w, k), brute, rtol=RTOL, atol=1e-12 * scale)
        # The partition and centroids are consistent with the reported SSE.
        assert np.isclose(sse_of_starts(x, w, result.starts), result.sse, rtol=RTOL, atol=1e-15)
        assert np.all(np.diff(result.centroids) >= 0)
        assert result.centroids.size == min(k, x.size)


@pytest.mark.parametrize("scheme", [0, 1, 2])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_both_monotone_schemes_are_exact_on_medium_inputs(scheme: int, seed: int) -> None:
    # Large enough for the divide-and-conquer and Knuth-Yao bounds to prune; the reference
    # scans every split, so a wrong monotonicity assumption would show.
    rng = np.random.default_rng(seed)
    raw = np.concatenate([rng.normal(0, 1, 700), rng.laplace(4, 0.3, 300)])
    x, counts = np.unique(raw.astype(np.float16).astype(np.float64), return_counts=True)
    w = counts.astype(float)
    for k in (2, 7, 33):
        starts = km._cluster_starts(x, w, k, scheme)
        assert starts[0] == 0 and np.all(np.diff(starts) > 0) and starts[-1] < x.size
        ref = reference_dp(x, w, k)
        assert np.isclose(sse_of_starts(x, w, starts), ref, rtol=1e-9, atol=0), (k, scheme)


def test_k_at_least_n_gives_every_value_its_own_cluster() -> None:
    x = np.array([-1.0, 0.5, 2.0])
    for k in (3, 4, 256):
        result = optimal_kmeans_1d(x, np.array([1.0, 5.0, 2.0]), k)
        assert result.sse == 0.0
        np.testing.assert_array_equal(result.centroids, x)


def test_input_validation() -> None:
    with pytest.raises(ValueError, match="increasing"):
        optimal_kmeans_1d(np.array([1.0, 1.0]), np.ones(2), 1)
    with pytest.raises(ValueError, match="finite"):
        optimal_kmeans_1d(np.array([0.0, np.nan]), np.ones(2), 1)
    with pytest.raises(ValueError, match="> 0"):
        optimal_kmeans_1d(np.array([0.0, 1.0]), np.array([1.0, 0.0]), 1)
    with pytest.raises(ValueError, match="k must be"):
        optimal_kmeans_1d(np.array([0.0]), np.ones(1), 0)
    with pytest.raises(ValueError, match="NaN"):
        palettize_array(np.array([0.0, np.inf], dtype=np.float16), 2)
    with pytest.raises(ValueError, match="nbits"):
        palettize_array(np.zeros(4, dtype=np.float16), 9)


# ---- palettes ------------------------------------------------------------------------------


def check_palette(data: np.ndarray, nbits: int) -> km.Palette:
    """Invariants every palette must satisfy; returns it for further checks."""
    pal = palettize_array(data, nbits)
    assert pal.lut.shape == (1 << nbits,) and pal.lut.dtype == data.dtype
    assert pal.indices.shape == (data.size,) and pal.indices.dtype == np.uint8
    assert pal.indices.max() < (1 << nbits)
    rebuilt = pal.lut[pal.indices].astype(np.float64)
    sse = float(np.sum((rebuilt - data.ravel().astype(np.float64)) ** 2))
    assert np.isclose(pal.sse, sse, rtol=RTOL, atol=0)
    x, w = np.unique(data.astype(np.float64), return_counts=True)
    k = 1 << nbits
    assert pal.distinct == x.size
    if x.size <= k:
        # Few distinct values: they are the palette, reconstruction is exact.
        assert pal.sse == 0.0
        np.testing.assert_array_equal(rebuilt, data.ravel().astype(np.float64))
    else:
        optimum = optimal_kmeans_1d(x, w.astype(float), k)
        scale = float(np.sum(w * x * x))
        # Never worse than the exact optimum rounded to the dtype and re-assigned...
        lut = optimum.centroids.astype(data.dtype).astype(np.float64)
        nearest = np.min((x[:, None] - lut[None, :]) ** 2, axis=1)
        assert pal.sse <= float(np.sum(w * nearest)) * (1 + RTOL) + 1e-300
        # ...and no better than the unconstrained optimum (the LUT is a valid clustering).
        assert pal.sse >= optimum.sse * (1 - RTOL) - 1e-12 * scale
    return pal


@pytest.mark.parametrize("nbits", [1, 2, 3, 4, 6, 8])
def test_palette_of_random_fp16_tensors(nbits: int) -> None:
    rng = np.random.default_rng(nbits)
    for shape in [(8, 1, 3, 3), (16, 8, 1, 1), (40, 30)]:
        data = (rng.normal(0, 0.1, shape)).astype(np.float16)
        check_palette(data, nbits)


def test_palette_of_duplicates_constant_and_edge_values() -> None:
    f16 = np.finfo(np.float16)
    tiny = np.float16(2.0**-24)  # smallest subnormal
    cases = [
        np.full((3, 3), 0.25, dtype=np.float16),  # constant
        np.array([1, 1, 1, 2, 2, 3] * 10, dtype=np.float16).reshape(6, 10),  # duplicates
        np.array([f16.max, -f16.max, 0, tiny, -tiny, f16.tiny, 1, -1], dtype=np.float16),
        np.array([f16.max] * 5 + [-f16.max] * 3 + [tiny] * 7 + list(range(20)), np.float16),
        np.array([0.0, -0.0, 0.0, -0.0, 1.0], dtype=np.float16),  # -0 and +0 are one value
    ]
    for data in cases:
        for nbits in (1, 2, 4, 8):
            check_palette(data, nbits)
    signed_zero = palettize_array(cases[-1], 1)
    assert signed_zero.distinct == 2 and signed_zero.sse == 0.0


def test_palette_keeps_float32() -> None:
    data = np.random.default_rng(3).normal(size=(64, 9)).astype(np.float32)
    pal = check_palette(data, 4)
    assert pal.lut.dtype == np.float32


def random_fp16_bits(rng: np.random.Generator, size: int) -> np.ndarray:
    """Any finite fp16 values: uniform over bit patterns (subnormals, +-0, +-65504 included),
    drawn from a small pool so that duplicates are common."""
    pool = rng.integers(0, 1 << 16, size=max(1, size // 2), dtype=np.uint16).view(np.float16)
    pool = pool[np.isfinite(pool)]
    if pool.size == 0:
        pool = np.array([0.0], dtype=np.float16)
    return rng.choice(pool, size=size)


def test_palette_of_random_fp16_bit_patterns() -> None:
    rng = np.random.default_rng(11)
    for _ in range(150):
        data = random_fp16_bits(rng, int(rng.integers(1, 40)))
        nbits = int(rng.choice([1, 2, 3]))
        pal = check_palette(data, nbits)
        x, w = np.unique(data.astype(np.float64), return_counts=True)
        if x.size <= 12:
            brute = brute_force_kmeans_1d(x, w.astype(float), 1 << nbits)
            assert pal.sse >= brute * (1 - RTOL) - 1e-12 * float(np.sum(w * x * x))


def test_never_worse_than_coremltools_kmeans() -> None:
    # Both of coremltools' paths: kmeans1d (fp16, >= 10k weights) and scikit-learn (< 10k).
    import coremltools.models.neural_network.quantization_utils as qu

    rng = np.random.default_rng(7)
    for shape, nbits in [((64, 1, 3, 3), 4), ((32, 32, 3, 3), 6), ((128, 96), 8)]:
        data = rng.normal(0, 0.05, shape).astype(np.float16)
        lut, idx = qu._get_kmeans_lookup_table_and_weight(nbits, data)
        theirs = lut.astype(np.float16).astype(np.float64).ravel()[np.asarray(idx).ravel()]
        sse_theirs = float(np.sum((theirs - data.ravel().astype(np.float64)) ** 2))
        ours = check_palette(data, nbits)
        assert ours.sse <= sse_theirs * (1 + RTOL), (shape, nbits, ours.sse, sse_theirs)


def test_many_distinct_float32_values_are_near_optimal() -> None:
    # Beyond MAX_EXACT_VALUES distinct values the DP runs on runs of consecutive values.
    data = np.random.default_rng(5).normal(size=(70, 1100)).astype(np.float32)
    x, w = np.unique(data.astype(np.float64), return_counts=True)
    assert x.size > km.MAX_EXACT_VALUES
    for nbits in (2, 4):
        pal = palettize_array(data, nbits)
        rebuilt = pal.lut[pal.indices].astype(np.float64)
        assert np.isclose(pal.sse, float(np.sum((rebuilt - data.ravel()) ** 2)), rtol=RTOL)
        exact = optimal_kmeans_1d(x, w.astype(float), 1 << nbits)
        assert exact.sse * (1 - RTOL) <= pal.sse <= exact.sse * 1.0001, (nbits, pal.sse, exact.sse)
