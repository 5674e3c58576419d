"""Elementwise math, comparisons, logic, sorting and index-generating kernels.

Trigonometric and hyperbolic functions, ``round``, ``threshold``, ``floor_div`` and ``mod``
(``defs/iOS15/elementwise_unary.py``, ``elementwise_binary.py``); the six comparisons and the
logical ops (bool outputs); ``select`` (``control_flow.py``); ``cumsum``, ``fill``,
``fill_like`` (iOS16), ``range_1d``, ``shape``, ``one_hot``, ``non_zero``, ``band_part``,
``argsort`` and ``topk`` (iOS15/16/17 ``tensor_operation.py``); ``reverse`` and
``reverse_sequence`` (iOS15/17 ``tensor_transformation.py``). Semantics are those
definitions: their docstrings and, where one exists and is sound, their ``value_inference``;
each kernel's docstring says which, and where the two part ways.

Exactness: comparisons, logic, ``select``, ``threshold``, ``round``, sorting, ``one_hot``,
``fill`` and the data-movement ops produce input values or constants, bit for bit
(``floor_div``/``mod`` reproduce NumPy's ``npy_divmod``, signed zeros included). The
transcendental functions are ATen's, within an fp32 ulp of NumPy's (fp16: computed in fp32,
rounded once, as :mod:`.ops` describes), and run per sample (their SIMD body and scalar tail
differ). ``cumsum`` adds sequentially in fp32, as NumPy's ``np.cumsum`` does.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch

from .errors import InterpreterError, UnsupportedOpError
from .loader import Operation, types
from .ops import (
    BROADCAST,
    PER_SAMPLE,
    UNARY,
    Batched,
    OpArgs,
    _const_ints,
    _const_str,
    _same_dtype,
    _same_rank,
    axes_avoid_batch,
    flows,
    register,
)
from .ops_elementwise import _unary


def _name(a: OpArgs) -> str:
    return f"{a.op.op_type} {a.op.name!r}"


# --------------------------------------------------------------------------------------------
# elementwise unary (iOS15 elementwise_unary.py: fp16 / fp32 only)

# ATen's SIMD transcendentals: within one fp32 ulp of NumPy's; per sample (module docstring).
_unary("sin", torch.sin, batch=PER_SAMPLE)
_unary("cos", torch.cos, batch=PER_SAMPLE)
_unary("tan", torch.tan, batch=PER_SAMPLE)
_unary("asin", torch.asin, batch=PER_SAMPLE)
_unary("acos", torch.acos, batch=PER_SAMPLE)
_unary("atan", torch.atan, batch=PER_SAMPLE)
_unary("sinh", torch.sinh, batch=PER_SAMPLE)
_unary("cosh", torch.cosh, batch=PER_SAMPLE)
_unary("atanh", torch.atanh, batch=PER_SAMPLE)
# ``np.round``: to nearest, ties to even (the docstring's "0.5 is rounded to 0"); -0.5 -> -0.
_unary("round", torch.round, exact=True)


@register("threshold", exact=True, batch=UNARY)
def _threshold(a: OpArgs) -> torch.Tensor:
    """``np.maximum(x, alpha)`` (value_inference): ``x`` where ``x > alpha`` or ``x`` is NaN,
    else ``alpha`` (so a NaN alpha gives NaN, and of ``-0``/``+0`` alpha's sign wins). Written
    as a select: ``torch.maximum`` picks the sign of equal zeros differently in its SIMD body
    and scalar tail."""
    x, alpha = _same_dtype(a.tensor("x"), a.tensor("alpha"))
    keep = x > alpha
    if x.is_floating_point():
        keep = keep | torch.isnan(x)
    return torch.where(keep, x, alpha)


@register("logical_not", exact=True, batch=UNARY)
def _logical_not(a: OpArgs) -> torch.Tensor:
    return torch.logical_not(a.tensor("x"))


# --------------------------------------------------------------------------------------------
# elementwise binary (iOS15 elementwise_binary.py): x and y share one dtype and broadcast


def _binary(name: str, fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
            doc: str) -> None:
    def kernel(a: OpArgs) -> torch.Tensor:
        return fn(*_same_dtype(a.tensor("x"), a.tensor("y")))

    kernel.__doc__ = doc
    register(name, exact=True, batch=BROADCAST)(kernel)


for _op, _fn in (("equal", torch.eq), ("not_equal", torch.ne), ("greater", torch.gt),
                 ("greater_equal", torch.ge), ("less", torch.lt), ("less_equal", torch.le)):
    _binary(_op, _fn, f"IEEE ``{_op}`` of fp16 / fp32 / int32 operands: a bool tensor (NaN "
                      "compares unequal to everything).")
for _op, _fn in (("logical_and", torch.logical_and), ("logical_or", torch.logical_or),
                 ("logical_xor", torch.logical_xor)):
    _binary(_op, _fn, f"``np.{_op}`` of two bool tensors.")


def _fmod(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """C ``fmod`` of fp32 values: exact, computed in fp64 (ATen's fp32 SIMD ``fmod`` returns
    NaN for a subnormal divisor), so the result converts back to fp32 without rounding."""
    return torch.fmod(x.double(), y.double()).to(x.dtype)


def _int_operands(a: OpArgs, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """int64 copies (``INT_MIN // -1`` wraps on conversion back, like NumPy's int32 result);
    division by zero is an error here (NumPy returns 0 with a warning: undefined in MIL)."""
    if bool((y == 0).any()):
        raise InterpreterError(f"{_name(a)}: integer division by zero")
    return x.long(), y.long()


@register("floor_div", batch=BROADCAST)
def _floor_div(a: OpArgs) -> torch.Tensor:
    """``x // y`` rounded toward -inf (``operator.floordiv``, i.e. ``np.floor_divide``).

    Floats follow NumPy's ``npy_divmod`` step by step: ``div = (x - fmod(x, y)) / y``, less 1
    when the remainder's sign differs from y's, then floored and snapped to the nearest
    integer; ``div == 0`` gives a zero with the sign of ``x / y``; ``y == 0`` gives ``x / y``
    (+-inf or NaN). fp16 operands: the same in fp32, rounded once (NumPy's fp16 loop too).
    """
    x, y = _same_dtype(a.tensor("x"), a.tensor("y"))
    if not x.is_floating_point():
        xl, yl = _int_operands(a, x, y)
        return torch.div(xl, yl, rounding_mode="floor")
    mod = _fmod(x, y)
    div = (x - mod) / y
    div = torch.where((mod != 0) & ((y < 0) != (mod < 0)), div - 1, div)
    floor = torch.floor(div)
    floor = torch.where(div - floor > 0.5, floor + 1, floor)
    quotient = x / y
    floor = torch.where(div == 0, torch.copysign(torch.zeros_like(div), quotient), floor)
    return torch.where(y == 0, quotient, floor)


@register("mod", batch=BROADCAST)
def _mod(a: OpArgs) -> torch.Tensor:
    """``x % y`` with the sign of ``y`` (``operator.mod``, i.e. ``np.remainder``; not C's
    ``fmod``): ``fmod(x, y)``, plus y when the signs differ; a zero remainder takes y's sign;
    ``y == 0`` gives NaN for floats."""
    x, y = _same_dtype(a.tensor("x"), a.tensor("y"))
    if not x.is_floating_point():
        xl, yl = _int_operands(a, x, y)
        return torch.remainder(xl, yl)
    mod = _fmod(x, y)
    mod = torch.where((mod != 0) & ((y < 0) != (mod < 0)), mod + y, mod)
    return torch.where(mod == 0, torch.copysign(torch.zeros_like(mod), y), mod)


def _check_select(op: Operation) -> None:
    """coremltools' type inference broadcasts only ``a`` with ``b``; a ``cond`` reaching
    further would give another shape than the program declares."""
    shapes = [op.inputs[p].shape for p in ("cond", "a", "b")]
    out = op.outputs[0].shape
    if any(not isinstance(d, (int, np.integer)) for s in (*shapes, out) for d in s):
        return
    if tuple(np.broadcast_shapes(*shapes)) != tuple(out):
        raise UnsupportedOpError(op.op_type, op.name,
                                 f"cond of shape {tuple(shapes[0])} broadcasts a and b beyond "
                                 f"the declared shape {tuple(out)}")


@register("select", exact=True, check=_check_select,
          batch=flows("cond", "a", "b", check=_same_rank))
def _select(a: OpArgs) -> torch.Tensor:
    """``np.where(cond, a, b)`` with NumPy broadcasting of all three."""
    x, y = _same_dtype(a.tensor("a"), a.tensor("b"))
    return torch.where(a.tensor("cond"), x, y)


# --------------------------------------------------------------------------------------------
# scans, fills and ranges (iOS15 tensor_operation.py, iOS16 fill_like)


def _check_cumsum(op: Operation) -> None:
    if op.inputs["x"].rank == 0:
        raise UnsupportedOpError(op.op_type, op.name, "rank-0 x (no axis to sum along)")


@register("cumsum", check=_check_cumsum, batch=axes_avoid_batch("axis", default=0))
def _cumsum(a: OpArgs) -> torch.Tensor:
    """Running sum along ``axis`` (default 0). ``exclusive``: each output leaves out its own
    element (the first is 0, the last lacks the last input: Core ML's ``excludeFinalSum``);
    ``reverse``: sums run from the end (TensorFlow's cumsum; flip, scan, flip back as
    value_inference does). Floats add one element at a time in fp32 (``np.cumsum``, which
    value_inference calls; ATen's cumsum accumulates in fp64); fp16 inputs likewise, each
    output rounded once. int32: wraps on overflow.

    coremltools' value inference for ``exclusive=True`` is broken (its ``np.zeros`` call
    raises), so the exclusive form follows the docstring only.
    """
    x = a.tensor("x")
    axis = int(a.scalar("axis", 0)) % x.dim()
    exclusive = bool(a.scalar("exclusive", False))
    reverse = bool(a.scalar("reverse", False))
    arr = x.numpy()
    if reverse:
        arr = np.flip(arr, axis=axis)
    acc = np.float32 if x.is_floating_point() else np.int64
    out = np.cumsum(arr, axis=axis, dtype=acc)
    if exclusive:
        first = np.zeros_like(np.take(out, [0], axis=axis))
        out = np.concatenate([first, np.delete(out, -1, axis=axis)], axis=axis)
    if reverse:
        out = np.flip(out, axis=axis)
    return torch.from_numpy(np.ascontiguousarray(out))


def _fill_value(a: OpArgs) -> torch.Tensor:
    """``value`` (default ``0.0``, fp32) as a 0-d tensor of its own dtype."""
    if a.has("value"):
        return a.tensor("value").reshape(())
    return torch.zeros((), dtype=torch.float32)


@register("fill", exact=True, batch=PER_SAMPLE)
def _fill(a: OpArgs) -> torch.Tensor:
    """A tensor of shape ``shape`` (a constant or computed int32 vector) holding ``value``."""
    shape = a.ints("shape")
    if any(s < 0 for s in shape):
        raise InterpreterError(f"{_name(a)}: negative dimension in shape {shape}")
    return _fill_value(a).expand(shape)


@register("fill_like", exact=True, batch=flows("ref_tensor"))
def _fill_like(a: OpArgs) -> torch.Tensor:
    """``ref_tensor``'s shape filled with ``value``; the output has value's dtype (iOS16)."""
    return _fill_value(a).expand(a.tensor("ref_tensor").shape)


@register("shape", batch=PER_SAMPLE)
def _shape(a: OpArgs) -> torch.Tensor:
    """The run-time shape of ``x`` as an int32 vector."""
    return torch.tensor(list(a.tensor("x").shape), dtype=torch.int32)


_RANGE_LIMIT = 2**31 - 1


@register("range_1d", batch=PER_SAMPLE)
def _range_1d(a: OpArgs) -> torch.Tensor:
    """``np.arange(start, end, step)`` exactly as value_inference gets it from NumPy.

    Floats: the length is ``ceil((end - start) / step)`` with both operations in the inputs'
    dtype (as NumPy and coremltools' type inference compute it from fp32/fp16 scalars); the
    second element is ``start + step`` in that dtype, and NumPy fills the rest in float64 as
    ``start + i * delta`` with ``delta = second - start``, rounded once to the output dtype.
    int32: ``start + i * step``, length ``ceil((end - start) / step)``, empty if negative.
    """
    var = a.var("start")
    dtype = var.dtype
    start, end, step = (np.asarray(a.value(p)).reshape(-1) for p in ("start", "end", "step"))
    if start.size != 1 or end.size != 1 or step.size != 1:
        raise InterpreterError(f"{_name(a)}: start, end and step must be scalars")
    if types.is_int(dtype):
        s, e, d = int(start[0]), int(end[0]), int(step[0])
        if d == 0:
            raise InterpreterError(f"{_name(a)}: step is 0")
        n = max(-((s - e) // d), 0)
        if n > _RANGE_LIMIT:
            raise InterpreterError(f"{_name(a)}: {n} elements")
        return s + torch.arange(n, dtype=torch.int64) * d
    np_dtype = np.float16 if dtype is types.fp16 else np.float32
    s, e, d = np_dtype(start[0]), np_dtype(end[0]), np_dtype(step[0])
    with np.errstate(all="ignore"):
        length = np_dtype(np_dtype(e - s) / d)
        second = np_dtype(s + d)
    if not np.isfinite(length):
        raise InterpreterError(f"{_name(a)}: start {s}, end {e}, step {d} give no finite length")
    n = max(math.ceil(float(length)), 0)
    if n > _RANGE_LIMIT:
        raise InterpreterError(f"{_name(a)}: {n} elements")
    delta = float(second) - float(s)
    out = float(s) + torch.arange(n, dtype=torch.float64) * delta
    # one rounding from float64 (straight to fp16 for fp16: no double rounding via fp32)
    return out.to(torch.float16 if dtype is types.fp16 else torch.float32).to(torch.float32)


@register("one_hot", exact=True,
          batch=axes_avoid_batch("axis", "indices", default=-1, of_output=True))
def _one_hot(a: OpArgs) -> torch.Tensor:
    """``out[..., i, ...] = on_value if indices[...] == i else off_value`` with the new axis of
    size ``one_hot_vector_size`` (a constant or computed int32) at ``axis`` (default -1,
    counted in the output's rank); on/off default to int32 1/0. An index outside
    ``[0, size)`` (negative included) equals no ``i``: its vector is all ``off_value``, as in
    TensorFlow's one_hot, which coremltools converts to this op unchanged."""
    idx = a.tensor("indices").long()
    size = int(a.scalar("one_hot_vector_size"))
    if size < 0:
        raise InterpreterError(f"{_name(a)}: one_hot_vector_size {size} is negative")
    axis = int(a.scalar("axis", -1)) % (idx.dim() + 1)
    positions = torch.arange(size).reshape([size] + [1] * (idx.dim() - axis))
    hit = idx.unsqueeze(axis) == positions
    on = a.tensor("on_value") if a.has("on_value") else torch.tensor(1, dtype=torch.int32)
    off = a.tensor("off_value") if a.has("off_value") else torch.tensor(0, dtype=torch.int32)
    on, off = _same_dtype(on.reshape(()), off.reshape(()))
    return torch.where(hit, on, off)


@register("non_zero", batch=PER_SAMPLE)
def _non_zero(a: OpArgs) -> torch.Tensor:
    """``np.transpose(np.nonzero(x))``: an (N, rank) int32 matrix of the indices of the
    non-zero elements in row-major order (NaN is non-zero, -0.0 is zero)."""
    return torch.nonzero(a.tensor("x")).to(torch.int32)


def _check_band_part(op: Operation) -> None:
    if op.inputs["x"].rank < 2:
        raise UnsupportedOpError(op.op_type, op.name, f"rank {op.inputs['x'].rank} x "
                                 "(the band is on the last two dims)")


def _band_keeps_batch(op: Operation, batched: Batched) -> str:
    return "" if op.inputs["x"].rank >= 3 else "the band includes the batch dim"


@register("band_part", exact=True, check=_check_band_part,
          batch=flows("x", check=_band_keeps_batch))
def _band_part(a: OpArgs) -> torch.Tensor:
    """``band(m, n) * x`` over the last two dims, ``band(m, n) = (lower < 0 or m - n <=
    lower) and (upper < 0 or n - m <= upper)``, lower/upper default -1: a multiplication, as
    the docstring and value_inference define it (so a negative value outside the band gives
    -0.0, and inf or NaN gives NaN); bool x: ``x and band``."""
    x = a.tensor("x")
    lower, upper = int(a.scalar("lower", -1)), int(a.scalar("upper", -1))
    rows, cols = x.shape[-2], x.shape[-1]
    diff = torch.arange(rows).reshape(rows, 1) - torch.arange(cols).reshape(1, cols)
    band = torch.ones(rows, cols, dtype=torch.bool)
    if lower >= 0:
        band &= diff <= lower
    if upper >= 0:
        band &= -diff <= upper
    if x.dtype == torch.bool:
        return x & band
    return x * band.to(x.dtype)


# --------------------------------------------------------------------------------------------
# sorting (iOS15 argsort; topk iOS15, iOS16 sort/return_indices, iOS17 more dtypes)


def _sort_indices(x: torch.Tensor, axis: int, ascending: bool) -> torch.Tensor:
    """Stable sort order along ``axis``: equal values keep their index order in both
    directions, NaN sorts last in both. That is value_inference's ``np.argsort(x)`` /
    ``np.argsort(-x)`` with a stable sort (NumPy's default introsort, SIMD-accelerated here,
    orders ties arbitrarily even on 8 elements). Integers sort descending by ``~x``, which
    unlike ``-x`` does not overflow at INT_MIN or wrap for unsigned types."""
    if not ascending:
        x = -x if x.is_floating_point() else torch.bitwise_not(x)
    return torch.sort(x, dim=axis, stable=True).indices


@register("argsort", batch=axes_avoid_batch("axis", default=-1))
def _argsort(a: OpArgs) -> torch.Tensor:
    """int32 indices that sort ``x`` along ``axis`` (default -1), descending unless
    ``ascending`` (default False); ties in index order (:func:`_sort_indices`)."""
    x = a.tensor("x")
    axis = int(a.scalar("axis", -1)) % x.dim()
    return _sort_indices(x, axis, bool(a.scalar("ascending", False))).to(torch.int32)


def _check_topk(op: Operation) -> None:
    k = _const_ints(op, "k")
    if k is not None and k[0] < 0:
        # iOS17 documents k = -1 as "all elements", but coremltools then declares an output
        # dim of -1 (and its value inference drops the last element): no shape to check.
        raise UnsupportedOpError(op.op_type, op.name, f"k {k[0]} (only k >= 0)")
    dtype = _const_str(op, "output_indices_dtype", "int32")
    if dtype not in ("int32", "uint16"):
        raise UnsupportedOpError(op.op_type, op.name, f"output_indices_dtype {dtype!r}")


@register("topk", exact=True, check=_check_topk, batch=axes_avoid_batch("axis", default=-1))
def _topk(a: OpArgs) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """The ``k`` (default 1) largest values along ``axis`` (default -1), or smallest if
    ``ascending``, in sorted order, with their indices (ties: lower index first, NaN last;
    :func:`_sort_indices`). iOS16 ``sort=False`` leaves the order unspecified: sorted order is
    returned (as value_inference does). ``return_indices=False`` (iOS16+) returns the values
    only; iOS17 ``output_indices_dtype`` may be uint16."""
    x = a.tensor("x")
    axis = int(a.scalar("axis", -1)) % x.dim()
    k = int(a.scalar("k", 1))
    if k > x.shape[axis]:
        raise InterpreterError(f"{_name(a)}: k {k} exceeds the axis size {x.shape[axis]}")
    idx = _sort_indices(x, axis, bool(a.scalar("ascending", False))).narrow(axis, 0, k)
    values = torch.gather(x, axis, idx)
    if len(a.op.outputs) == 1:
        return values
    return values, idx.to(torch.int32)


# --------------------------------------------------------------------------------------------
# reversing (iOS15 tensor_transformation.py; iOS17 only widens the dtypes)


@register("reverse", exact=True, batch=axes_avoid_batch("axes"))
def _reverse(a: OpArgs) -> torch.Tensor:
    """Flip ``x`` along ``axes`` (default: every axis). As value_inference applies
    ``np.flip`` once per listed axis, an axis listed twice is flipped back."""
    x = a.tensor("x")
    axes = a.ints("axes")
    if axes is None:
        axes = list(range(x.dim()))
    counts = [0] * x.dim()
    for ax in axes:
        counts[ax % x.dim()] += 1
    dims = [i for i, c in enumerate(counts) if c % 2]
    return torch.flip(x, dims) if dims else x


def _rs_axes(op: Operation) -> tuple[int, int]:
    rank = op.inputs["x"].rank
    seq, batch = _const_ints(op, "seq_axis") or [0], _const_ints(op, "batch_axis") or [0]
    return seq[0] % rank, batch[0] % rank


def _check_reverse_sequence(op: Operation) -> None:
    seq, batch = _rs_axes(op)
    if seq == batch:
        raise UnsupportedOpError(op.op_type, op.name,
                                 f"seq_axis and batch_axis both {seq} (they must differ)")


def _rs_keeps_batch(op: Operation, batched: Batched) -> str:
    return "" if 0 not in _rs_axes(op) else "reverses along or across the batch dim"


@register("reverse_sequence", exact=True, check=_check_reverse_sequence,
          batch=flows("x", check=_rs_keeps_batch))
def _reverse_sequence(a: OpArgs) -> torch.Tensor:
    """For each index ``b`` along ``batch_axis``, reverse the first ``lengths[b]`` elements
    along ``seq_axis`` and keep the rest (TensorFlow's reverse_sequence, which the docstring
    cites; coremltools has no value inference). Axes default to 0; ``lengths`` must have
    ``x.shape[batch_axis]`` entries in ``[0, x.shape[seq_axis]]``."""
    x = a.tensor("x")
    rank = x.dim()
    seq = int(a.scalar("seq_axis", 0)) % rank
    bat = int(a.scalar("batch_axis", 0)) % rank
    lengths = torch.as_tensor(np.asarray(a.value("lengths")), dtype=torch.int64).reshape(-1)
    size = x.shape[seq]
    if lengths.numel() != x.shape[bat]:
        raise InterpreterError(f"{_name(a)}: {lengths.numel()} lengths for "
                               f"{x.shape[bat]} sequences")
    if bool(((lengths < 0) | (lengths > size)).any()):
        raise InterpreterError(f"{_name(a)}: lengths {lengths.tolist()} outside [0, {size}]")
    pos_shape, len_shape = [1] * rank, [1] * rank
    pos_shape[seq], len_shape[bat] = size, lengths.numel()
    pos = torch.arange(size).reshape(pos_shape)
    n = lengths.reshape(len_shape)
    src = torch.where(pos < n, n - 1 - pos, pos)
    return torch.gather(x, seq, src.expand(x.shape))
