"""Gather / scatter kernels, ``slice_update`` and ``reshape_like``.

Semantics are coremltools' op definitions (``defs/iOS15/scatter_gather.py``,
``iOS16/scatter_gather.py``, ``iOS17/scatter_gather.py``, ``iOS16/tensor_transformation.py``
and ``iOS18/tensor_transformation.py``) with the index rules Core ML's expected outputs in
coremltools' op tests fix:

* Negative indices count from the end, except in iOS17+ scatters (the ops with a
  ``validate_indices`` input), where the spec makes them out of bound.
* An index out of range is a :class:`PredictionError` (a ``RuntimeError``, as a failed Core ML
  prediction is) where the op validates: every pre-iOS17 op (their spec has no unchecked mode)
  and iOS17+ ops with ``validate_indices``. Without validation Core ML's result is "undefined
  but memory safe": an iOS17+ gather then reads 0 there, a scatter drops those updates
  (coremltools' ``test_ios17_invalid_indices`` only asks that the result is not the in-range
  one).
* Scatters apply updates in index order, each combined with what the earlier ones left
  (``mode`` ``update`` keeps the last one, as ``np.put_along_axis``, the tests' reference,
  does); an fp16 output is rounded after each step, as native fp16 arithmetic would be.

Every value out of a gather, and of a scatter in ``update`` / ``max`` / ``min`` mode, is an
input value. All run per sample (indices may point anywhere, the batch dim included).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch

from .errors import PredictionError, UnsupportedOpError
from .loader import Operation, types
from .ops import PER_SAMPLE, OpArgs, _const_ints, register
from .ops_tensor import slice_index

# --------------------------------------------------------------------------------------------
# index rules


def _validates(op: Operation) -> bool:
    """Out-of-range indices are an error: pre-iOS17 ops, or ``validate_indices=True``."""
    var = op.inputs.get("validate_indices")
    if "validate_indices" not in type(op).input_spec.input_types:
        return True
    return var is not None and bool(np.ravel(var.val)[0])


def _negatives_wrap(op: Operation) -> bool:
    """Negative indices count from the end, except in iOS17+ scatters (out of bound there)."""
    return not (op.op_type.startswith("scatter")
                and "validate_indices" in type(op).input_spec.input_types)


def _indices(a: OpArgs, sizes: torch.Tensor | int) -> tuple[torch.Tensor, torch.Tensor]:
    """``indices`` as int64 in ``[0, size)`` (negatives wrapped where the op allows) and the
    mask of the in-range ones; raises for an out-of-range one where the op validates.
    ``sizes`` broadcasts against the indices (per-component sizes for the nd ops)."""
    idx = torch.as_tensor(np.asarray(a.value("indices")), dtype=torch.int64)
    size = torch.as_tensor(sizes, dtype=torch.int64)
    if _negatives_wrap(a.op):
        idx = torch.where(idx < 0, idx + size, idx)
    ok = (idx >= 0) & (idx < size)
    if not bool(ok.all()):
        if _validates(a.op):
            bad = np.asarray(a.value("indices"))[~ok.numpy()].reshape(-1)[:4].tolist()
            raise PredictionError(f"{a.op.op_type} {a.op.name!r}: indices {bad} out of range "
                                  f"for size {size.reshape(-1).tolist()}")
        idx = torch.where(ok, idx, 0)
    return idx, ok


def _check_batch_dims(op: Operation) -> None:
    if "batch_dims" in op.inputs and _const_ints(op, "batch_dims") is None:
        raise UnsupportedOpError(op.op_type, op.name, "batch_dims must be a constant")


def _batch_dims(a: OpArgs) -> int:
    return int(a.scalar("batch_dims", 0))


# --------------------------------------------------------------------------------------------
# gathers


@register("gather", exact=True, check=_check_batch_dims, batch=PER_SAMPLE)
def _gather(a: OpArgs) -> torch.Tensor:
    """``np.take(x, indices, axis)`` for each of the ``batch_dims`` leading dims x and indices
    share (iOS16+): output ``D[:axis] + N[batch_dims:] + D[axis+1:]``."""
    x = a.tensor("x")
    axis = int(a.scalar("axis", 0)) % x.dim()
    bd = _batch_dims(a)
    idx, ok = _indices(a, x.shape[axis])
    lead, pre, post = x.shape[:bd], x.shape[bd:axis], x.shape[axis + 1 :]
    nb, tail = math.prod(lead), idx.shape[bd:]
    xb = x.reshape(nb, math.prod(pre), x.shape[axis], math.prod(post))
    ib = idx.reshape(nb, math.prod(tail))
    out = xb[torch.arange(nb)[:, None], :, ib, :]  # (nb, m, pre, post): advanced dims first
    if not bool(ok.all()):
        out = out * ok.reshape(nb, -1, 1, 1).to(out.dtype)
    return out.transpose(1, 2).reshape([*lead, *pre, *tail, *post])


@register("gather_along_axis", exact=True, batch=PER_SAMPLE)
def _gather_along_axis(a: OpArgs) -> torch.Tensor:
    """``np.take_along_axis(x, indices, axis)``: output shaped like ``indices``."""
    x = a.tensor("x")
    axis = int(a.scalar("axis", 0)) % x.dim()
    idx, ok = _indices(a, x.shape[axis])
    out = torch.gather(x, axis, idx)
    return out if bool(ok.all()) else out * ok.to(out.dtype)


def _nd_targets(a: OpArgs, shape: list[int], bd: int) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Row numbers into ``shape`` flattened to ``(prod(shape[:bd + k]), -1)`` for the
    ``indices[..., k]`` tuples of a gather_nd / scatter_nd (``bd`` batch dims in front), and
    the in-range mask; also returns ``k``."""
    raw = np.asarray(a.value("indices"))
    k = raw.shape[-1]
    idx, ok = _indices(a, torch.tensor(shape[bd : bd + k]))
    ok = ok.all(dim=-1)
    strides = [math.prod(shape[bd + j + 1 : bd + k]) for j in range(k)]
    rows = (idx * torch.tensor(strides, dtype=torch.int64)).sum(-1)
    if bd:
        nb, inner = math.prod(shape[:bd]), math.prod(shape[bd : bd + k])
        batch = torch.arange(nb).reshape([*shape[:bd], *[1] * (rows.dim() - bd)])
        rows = rows + batch * inner
    return torch.where(ok, rows, 0), ok, k


@register("gather_nd", exact=True, check=_check_batch_dims, batch=PER_SAMPLE)
def _gather_nd(a: OpArgs) -> torch.Tensor:
    """``x[indices[..., :]]`` per batch (``batch_dims`` leading dims shared, iOS16+): output
    ``indices.shape[:-1] + x.shape[batch_dims + indices.shape[-1]:]``."""
    x = a.tensor("x")
    bd = _batch_dims(a)
    shape = list(x.shape)
    rows, ok, k = _nd_targets(a, shape, bd)
    flat = x.reshape(math.prod(shape[: bd + k]), -1)
    out = flat[rows.reshape(-1)]
    if not bool(ok.all()):
        out = out * ok.reshape(-1, 1).to(out.dtype)
    return out.reshape([*rows.shape, *shape[bd + k :]])


# --------------------------------------------------------------------------------------------
# scatters

_COMBINE: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "update": lambda old, new: new,
    "add": torch.add,
    "sub": torch.sub,
    "mul": torch.mul,
    "div": torch.true_divide,
    "max": torch.maximum,
    "min": torch.minimum,
}


def _check_scatter(op: Operation) -> None:
    var = op.inputs.get("mode")
    mode = "add" if var is None else str(var.val)
    if mode not in _COMBINE:
        raise UnsupportedOpError(op.op_type, op.name, f"mode {mode!r}")


def _scatter_rows(a: OpArgs, data: torch.Tensor, rows: torch.Tensor, ok: torch.Tensor,
                  updates: torch.Tensor) -> torch.Tensor:
    """``data`` (R, M) with ``updates`` (C, M) combined into rows ``rows`` (C,) by ``mode``,
    in index order (see the module docstring); rows where ``ok`` is False are dropped."""
    rows, updates = rows[ok], updates[ok]
    combine = _COMBINE[str(a.scalar("mode", "add"))]
    dtype = a.var("data").dtype
    out = data.clone()
    if rows.numel() == 0:
        return out
    # occurrence number of each row among the equal ones before it: step k applies the k-th
    # update of every row at once (distinct rows, so one vectorised step each)
    order = torch.argsort(rows, stable=True)
    ranked = rows[order]
    pos = torch.arange(rows.numel())
    starts = torch.cummax(torch.where(torch.cat([torch.tensor([True]), ranked[1:] != ranked[:-1]]),
                                      pos, 0), 0).values
    occurrence = torch.empty_like(pos)
    occurrence[order] = pos - starts
    for k in range(int(occurrence.max()) + 1):
        step = occurrence == k
        r = rows[step]
        new = combine(out[r], updates[step].to(out.dtype))
        if dtype is types.fp16:
            new = new.to(torch.float16).to(torch.float32)
        elif not out.is_floating_point() and new.is_floating_point():
            new = torch.trunc(new)  # int division truncates, as MIL's real_div on ints
        out[r] = new.to(out.dtype)
    return out


@register("scatter", check=_check_scatter, batch=PER_SAMPLE)
def _scatter(a: OpArgs) -> torch.Tensor:
    """``data`` with slices ``updates[..., i, ...]`` combined at ``data[..., indices[i], ...]``
    along ``axis``; updates are ``data.shape[:axis] + indices.shape + data.shape[axis+1:]``."""
    data, updates = a.tensor("data"), a.tensor("updates")
    axis = int(a.scalar("axis", 0)) % data.dim()
    idx, ok = _indices(a, data.shape[axis])
    moved = data.movedim(axis, 0)
    n = idx.numel()
    upd = updates.reshape([*data.shape[:axis], n, *data.shape[axis + 1 :]]).movedim(axis, 0)
    out = _scatter_rows(a, moved.reshape(data.shape[axis], -1), idx.reshape(-1),
                        ok.reshape(-1), upd.reshape(n, -1))
    return out.reshape(moved.shape).movedim(0, axis)


@register("scatter_along_axis", check=_check_scatter, batch=PER_SAMPLE)
def _scatter_along_axis(a: OpArgs) -> torch.Tensor:
    """``updates[p]`` combined into ``data`` at ``p`` with ``p[axis] = indices[p]``
    (``np.put_along_axis`` for ``update``)."""
    data, updates = a.tensor("data"), a.tensor("updates")
    axis = int(a.scalar("axis", 0)) % data.dim()
    idx, ok = _indices(a, data.shape[axis])
    grids = torch.meshgrid(*[torch.arange(s) for s in idx.shape], indexing="ij")
    coords = [idx if d == axis else g for d, g in enumerate(grids)]
    strides = [math.prod(data.shape[d + 1 :]) for d in range(data.dim())]
    flat = sum(c * s for c, s in zip(coords, strides, strict=True))
    out = _scatter_rows(a, data.reshape(-1, 1), flat.reshape(-1), ok.reshape(-1),
                        updates.reshape(-1, 1))
    return out.reshape(data.shape)


@register("scatter_nd", check=_check_scatter, batch=PER_SAMPLE)
def _scatter_nd(a: OpArgs) -> torch.Tensor:
    """``updates[i...]`` combined into the slice ``data[indices[i..., :]]``."""
    data, updates = a.tensor("data"), a.tensor("updates")
    shape = list(data.shape)
    rows, ok, k = _nd_targets(a, shape, 0)
    n = rows.numel()
    out = _scatter_rows(a, data.reshape(math.prod(shape[:k]), -1), rows.reshape(-1),
                        ok.reshape(-1), updates.reshape(n, -1))
    return out.reshape(shape)


# --------------------------------------------------------------------------------------------
# slice_update, reshape_like


@register("slice_update", exact=True, batch=PER_SAMPLE)
def _slice_update(a: OpArgs) -> torch.Tensor:
    """``x`` with ``x[slice] = update``, the slice as ``slice_by_index`` takes it (iOS18)."""
    x, update = a.tensor("x"), a.tensor("update")
    positions = torch.arange(x.numel()).reshape(x.shape)
    targets = slice_index(a, positions)
    if targets.numel() != update.numel():
        raise PredictionError(f"slice_update {a.op.name!r}: update of shape "
                              f"{tuple(update.shape)} for a slice of shape {tuple(targets.shape)}")
    out = x.clone()
    out.view(-1)[targets.reshape(-1)] = update.reshape(-1).to(x.dtype)
    return out


@register("reshape_like", exact=True, batch=PER_SAMPLE)
def _reshape_like(a: OpArgs) -> torch.Tensor:
    """``x`` reshaped to the concatenated ``ref.shape[begin:end]`` (``ref.shape[begin:]``
    with ``end_mask``) of each ref tensor (iOS16)."""
    x = a.tensor("x")
    refs = a.tensors("ref_tensors")
    begins = [int(v) for v in a.tensors("begins")]
    ends = [int(v) for v in a.tensors("ends")]
    masks = [bool(v) for v in a.tensors("end_masks")]
    shape: list[int] = []
    for ref, begin, end, mask in zip(refs, begins, ends, masks, strict=True):
        shape += list(ref.shape[begin:] if mask else ref.shape[begin:end])
    return x.reshape(shape)
