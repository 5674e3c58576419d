"""Exact weighted 1-D k-means, and palettes (LUT + indices) built from it.

Why our own: coremltools' palettization k-means (SMAWK via ``kmeans1d`` for large fp16 tensors,
scikit-learn's Lloyd for the rest) takes 8-12 s on MobileNet V1 1.0-224 with 2 cores, and its
Lloyd fallback is not optimal. A weight tensor has few *distinct* values (at most 65,536 in
fp16), so we cluster its histogram exactly: the partition with minimum weighted within-cluster
sum of squares (SSE), as in Wu (1991) and Ckmeans.1d.dp (Wang and Song, 2011).

Algorithm. Sort the n distinct values; clusters are contiguous runs. With prefix sums of w, w*x
and w*x^2 the cost of any run is O(1). ``D[m][i]`` = least SSE of the first i+1 values in m+1
clusters = ``min_j D[m-1][j-1] + cost(j, i)``. The cost is Monge, so the leftmost argmin
``J[m][i]`` is monotone in i and in m: ``J[m-1][i] <= J[m][i] <= J[m][i+1]``. Each layer is
filled by one of two exact schemes, whichever is cheaper for it:

* divide and conquer over the rows (the row argmins are monotone), with the lower bound from the
  previous layer: O(n log n) per layer; it wins in the first layers, where clusters are wide;
* Knuth-Yao scanning, rows in decreasing order, each row scanning only
  ``[J[m-1][i], J[m][i+1]]``: about 2n + sum_i (J[m][i] - J[m-1][i]) evaluations, close to
  O(n) once m is moderate.

The kernel counts what each layer cost and what the other scheme would have cost, and switches
accordingly, so no layer is much dearer than O(n log n): O(k n log n) time overall, O(k n)
memory for the argmin table. At n = 18,654 distinct values and k = 256 that is 31 M cost
evaluations, 0.09 s. The loop runs under numba (compiled once, cached on disk, GIL released so
tensors cluster in parallel threads); a vectorised-numpy divide and conquer measured 4.9 ms per
layer at n = 21,891, i.e. 1.2 s per 8-bit tensor, slower than coremltools itself.

Palettes. The optimal centroids are float64; the LUT stores the weight dtype (fp16). Rounding a
cluster's mean to the nearest representable value is the best LUT entry for that cluster (the
SSE is a parabola in the entry), then every value is re-assigned to its nearest entry and the
two steps repeat while the SSE decreases. Neither step can raise the SSE, so the palette is never
worse than the rounded optimum.
"""

from __future__ import annotations

from dataclasses import dataclass

import numba
import numpy as np

__all__ = [
    "KMeansResult",
    "Palette",
    "brute_force_kmeans_1d",
    "optimal_kmeans_1d",
    "palettize_array",
    "warm_up",
]

#: Distinct values clustered exactly. Every fp16 tensor qualifies (65,536 bit patterns); a
#: float32 tensor with more distinct values is first merged into this many runs of consecutive
#: values (see ``palettize_array``), which bounds the argmin table at 64 MB for 8 bits.
MAX_EXACT_VALUES = 1 << 16
#: Polishing rounds after rounding centroids to the LUT dtype; they stop as soon as the SSE no
#: longer decreases, in practice after 1-3 rounds.
MAX_POLISH_ROUNDS = 16


@numba.njit(cache=True, nogil=True, inline="always")
def _cost(w_pre: np.ndarray, s1: np.ndarray, s2: np.ndarray, j: int, i: int) -> float:
    """SSE of the run of sorted values j..i (inclusive) around its weighted mean."""
    ww = w_pre[i + 1] - w_pre[j]
    s = s1[i + 1] - s1[j]
    c = s2[i + 1] - s2[j] - s * s / ww
    return c if c > 0.0 else 0.0


@numba.njit(cache=True, nogil=True)
def _cluster_starts(x: np.ndarray, w: np.ndarray, k: int, scheme: int = 0) -> np.ndarray:
    """Start index of each of the k clusters of the optimal partition (requires n > k >= 1).

    ``scheme`` 0 picks per layer; 1 forces divide and conquer, 2 Knuth-Yao (for tests).
    """
    n = x.size
    total_w = 0.0
    total_s = 0.0
    for i in range(n):
        total_w += w[i]
        total_s += w[i] * x[i]
    mean = total_s / total_w
    # Centred prefix sums: the cost is a difference of sums, centring keeps it accurate.
    w_pre = np.zeros(n + 1)
    s1 = np.zeros(n + 1)
    s2 = np.zeros(n + 1)
    for i in range(n):
        d = x[i] - mean
        w_pre[i + 1] = w_pre[i] + w[i]
        s1[i + 1] = s1[i] + w[i] * d
        s2[i + 1] = s2[i] + w[i] * d * d

    arg = np.zeros((k, n), dtype=np.int32)
    prev = np.empty(n)
    cur = np.empty(n)
    # Layer m needs only rows m..n-k+m: each later cluster needs at least one value.
    for i in range(n - k + 1):
        prev[i] = _cost(w_pre, s1, s2, 0, i)

    stack = np.empty((256, 4), dtype=np.int64)
    knuth = scheme == 2
    dc_evals = 0
    for m in range(1, k):
        imin = m
        imax = n - k + m
        if knuth:
            scan = 0
            for i in range(imax, imin - 1, -1):
                lo = arg[m - 1, min(i, imax - 1)]
                if lo < m:
                    lo = m
                hi = i if i == imax else min(i, arg[m, i + 1])
                scan += hi - lo + 1
                best = np.inf
                best_j = lo
                for j in range(lo, hi + 1):
                    v = prev[j - 1] + _cost(w_pre, s1, s2, j, i)
                    if v < best:
                        best = v
                        best_j = j
                cur[i] = best
                arg[m, i] = best_j
            # Back to divide and conquer if scanning got dearer than it was.
            knuth = scheme == 2 or scan <= dc_evals
        else:
            evals = 0
            stack[0, 0] = imin
            stack[0, 1] = imax
            stack[0, 2] = m
            stack[0, 3] = imax
            top = 1
            while top > 0:
                top -= 1
                rlo = stack[top, 0]
                rhi = stack[top, 1]
                jl = stack[top, 2]
                jh = stack[top, 3]
                mid = (rlo + rhi) // 2
                lo = max(jl, arg[m - 1, min(mid, imax - 1)], m)
                hi = min(jh, mid)
                evals += hi - lo + 1
                best = np.inf
                best_j = lo
                for j in range(lo, hi + 1):
                    v = prev[j - 1] + _cost(w_pre, s1, s2, j, mid)
                    if v < best:
                        best = v
                        best_j = j
                cur[mid] = best
                arg[m, mid] = best_j
                if mid > rlo:
                    stack[top, 0] = rlo
                    stack[top, 1] = mid - 1
                    stack[top, 2] = jl
                    stack[top, 3] = best_j
                    top += 1
                if mid < rhi:
                    stack[top, 0] = mid + 1
                    stack[top, 1] = rhi
                    stack[top, 2] = best_j
                    stack[top, 3] = jh
                    top += 1
            # Would Knuth-Yao scanning have been cheaper for this layer? Then use it next.
            scan = 0
            for i in range(imin, imax + 1):
                lo = max(m, arg[m - 1, min(i, imax - 1)])
                hi = i if i == imax else min(i, arg[m, i + 1])
                scan += hi - lo + 1
            dc_evals = evals
            knuth = scheme == 0 and scan < evals
        prev, cur = cur, prev

    starts = np.empty(k, dtype=np.int64)
    i = n - 1
    for m in range(k - 1, -1, -1):
        s = arg[m, i]
        starts[m] = s
        i = s - 1
    return starts


@dataclass(frozen=True)
class KMeansResult:
    """Optimal clustering of sorted distinct values: clusters are runs ``starts[c]:starts[c+1]``."""

    centroids: np.ndarray  # float64, ascending, one per cluster (min(k, n) of them)
    starts: np.ndarray  # int64 start index of each cluster in the sorted values
    sse: float  # weighted within-cluster sum of squares


def _check_values(values: np.ndarray, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    x = np.asarray(values, dtype=np.float64).ravel()
    w = np.asarray(weights, dtype=np.float64).ravel()
    if x.size == 0 or x.size != w.size:
        raise ValueError(f"need as many weights as values (>= 1), got {x.size} and {w.size}")
    if not np.all(np.isfinite(x)):
        raise ValueError("values must be finite (no NaN or inf)")
    if not (np.all(np.isfinite(w)) and np.all(w > 0)):
        raise ValueError("weights must be finite and > 0")
    if x.size > 1 and not np.all(np.diff(x) > 0):
        raise ValueError("values must be strictly increasing (sorted, distinct)")
    return x, w


def optimal_kmeans_1d(values: np.ndarray, weights: np.ndarray, k: int) -> KMeansResult:
    """Exact minimum-SSE k-means of sorted distinct ``values`` with positive ``weights``.

    With ``k >= n`` every value is its own cluster (SSE 0).
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    x, w = _check_values(values, weights)
    n = x.size
    if n <= k:
        return KMeansResult(centroids=x.copy(), starts=np.arange(n, dtype=np.int64), sse=0.0)
    starts = _cluster_starts(x, w, k)
    wsum = np.add.reduceat(w, starts)
    centroids = np.add.reduceat(w * x, starts) / wsum
    # A mean can round outside its run by an ulp; clip so the centroids stay sorted.
    ends = np.append(starts[1:], n) - 1
    centroids = np.clip(centroids, x[starts], x[ends])
    labels = np.repeat(np.arange(k), np.diff(np.append(starts, n)))
    sse = float(np.sum(w * (x - centroids[labels]) ** 2))
    return KMeansResult(centroids=centroids, starts=starts, sse=sse)


def brute_force_kmeans_1d(values: np.ndarray, weights: np.ndarray, k: int) -> float:
    """Least SSE by the plain O(k n^2) dynamic programme, costs summed directly (no prefix sums).

    The reference for tests; only for small n.
    """
    x, w = _check_values(values, weights)
    n = x.size
    if n <= k:
        return 0.0
    cost = np.zeros((n, n))
    for j in range(n):
        for i in range(j, n):
            xs, ws = x[j : i + 1], w[j : i + 1]
            mu = float(np.sum(ws * xs) / np.sum(ws))
            cost[j, i] = float(np.sum(ws * (xs - mu) ** 2))
    best = cost[0].copy()  # one cluster over values 0..i
    for _ in range(1, k):
        nxt = best.copy()  # fewer clusters are allowed (a cluster may be split for free)
        for i in range(1, n):
            nxt[i] = min(nxt[i], min(best[j - 1] + cost[j, i] for j in range(1, i + 1)))
        best = nxt
    return float(best[n - 1])


@dataclass(frozen=True)
class Palette:
    """A LUT in the weight's dtype (length a power of two) and the index of every weight."""

    lut: np.ndarray  # (2**nbits,), dtype of the weights
    indices: np.ndarray  # (size,), uint8, row-major over the weights
    sse: float  # weighted SSE of lut[indices] against the weights, in float64
    distinct: int  # number of distinct weight values


def _histogram(data: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(sorted distinct values as float64, their counts, index of each weight into them)."""
    flat = np.ascontiguousarray(data).ravel()
    if flat.dtype == np.float16:
        # A bincount over the 65,536 bit patterns beats sorting a million values.
        codes = flat.view(np.uint16)
        counts = np.bincount(codes, minlength=1 << 16)
        present = np.flatnonzero(counts)
        vals = present.astype(np.uint16).view(np.float16).astype(np.float64)
        # np.unique merges -0.0 with +0.0 and sorts across the sign bit.
        uniq, inv = np.unique(vals, return_inverse=True)
        weights = np.bincount(inv, weights=counts[present].astype(np.float64))
        code_to_value = np.zeros(1 << 16, dtype=np.intp)
        code_to_value[present] = inv
        return uniq, weights, code_to_value[codes]
    uniq, inv, counts = np.unique(flat, return_inverse=True, return_counts=True)
    return uniq.astype(np.float64), counts.astype(np.float64), inv.ravel()


def _nearest(lut_sorted: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Index of the nearest entry of an ascending LUT for each x (float64 midpoints, exact)."""
    mids = (lut_sorted[1:] + lut_sorted[:-1]) * 0.5
    return np.searchsorted(mids, x)


def _sse(x: np.ndarray, w: np.ndarray, lut: np.ndarray, assign: np.ndarray) -> float:
    return float(np.sum(w * (x - lut.astype(np.float64)[assign]) ** 2))


def palettize_array(data: np.ndarray, nbits: int) -> Palette:
    """Best palette of ``2**nbits`` entries for one weight tensor (or one channel group).

    Few distinct values (<= 2**nbits) are kept exactly; otherwise the exact k-means partition,
    rounded to the weight dtype and polished as described in the module docstring. Beyond
    ``MAX_EXACT_VALUES`` distinct values (float32 weights only) the partition is the exact one
    of equal-size runs of consecutive values, then polished on the real values: near-optimal, in
    the time and memory of an fp16 tensor.
    """
    if not 1 <= nbits <= 8:
        raise ValueError(f"nbits must be 1..8, got {nbits}")
    data = np.asarray(data)
    if data.size == 0:
        raise ValueError("cannot palettize an empty tensor")
    if not np.issubdtype(data.dtype, np.floating):
        raise ValueError(f"palettization needs float weights, got {data.dtype}")
    k = 1 << nbits
    x, w, value_index = _histogram(data)
    if not np.all(np.isfinite(x)):
        raise ValueError("weights contain NaN or inf")
    n = x.size
    if n <= k:
        lut = np.concatenate([x, np.full(k - n, x[-1])]).astype(data.dtype)
        indices = value_index.astype(np.uint8)
        return Palette(lut=lut, indices=indices, sse=0.0, distinct=n)

    if n > MAX_EXACT_VALUES:
        runs = np.unique(np.linspace(0, n, MAX_EXACT_VALUES, endpoint=False).astype(np.intp))
        run_w = np.add.reduceat(w, runs)
        res = optimal_kmeans_1d(np.add.reduceat(w * x, runs) / run_w, run_w, k)
    else:
        res = optimal_kmeans_1d(x, w, k)
    lut = res.centroids.astype(data.dtype)
    assign = _nearest(lut.astype(np.float64), x)
    sse = _sse(x, w, lut, assign)
    for _ in range(MAX_POLISH_ROUNDS):
        wsum = np.bincount(assign, weights=w, minlength=k)
        wx = np.bincount(assign, weights=w * x, minlength=k)
        used = wsum > 0
        new = lut.copy()
        new[used] = (wx[used] / wsum[used]).astype(data.dtype)
        new.sort()
        new_assign = _nearest(new.astype(np.float64), x)
        new_sse = _sse(x, w, new, new_assign)
        if not new_sse < sse:
            break
        lut, assign, sse = new, new_assign, new_sse
    indices = assign.astype(np.uint8)[value_index]
    return Palette(lut=lut, indices=indices, sse=sse, distinct=n)


def warm_up() -> None:
    """Compile (or load from the numba cache) the kernel, so timings measure clustering only."""
    x = np.arange(8, dtype=np.float64)
    _cluster_starts(x, np.ones(8), 3)
