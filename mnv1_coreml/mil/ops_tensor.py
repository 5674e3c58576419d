"""Tensor-manipulation and attention kernels beyond MobileNet V1's.

``concat`` and ``slice_by_index`` (GhostNet's ghost modules, a ViT's class token), ``split``,
``slice_by_size``, ``flatten2d``, ``stack``, ``tile``, nearest-neighbour upsampling,
``einsum`` in the one form MIL defines, and iOS18's ``scaled_dot_product_attention``.
Semantics are coremltools' op definitions (``defs/iOS15/tensor_operation.py``,
``tensor_transformation.py``, ``image_resizing.py``, ``linear.py``, ``iOS18/transformers.py``).
Every output here is made of input values, except the matmul-based ``einsum`` and attention
(fp16: computed in fp32, rounded once, as :mod:`.ops` describes).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from .errors import InterpreterError, UnsupportedOpError
from .loader import Operation, Var
from .ops import PER_SAMPLE, Batched, OpArgs, _const_ints, axes_avoid_batch, flows, register

# --------------------------------------------------------------------------------------------
# concat, stack, split


def _all_values_batched(op: Operation, batched: Batched) -> str:
    if len(batched) != len(op.inputs["values"]):
        return "joins values with constants (each sample needs its own copy)"
    return ""


def _concat_rule(op: Operation, batched: Batched) -> str:
    return _all_values_batched(op, batched) or axes_avoid_batch("axis", "values")(op, batched)


@register("concat", exact=True, batch=_concat_rule)
def _concat(a: OpArgs) -> torch.Tensor:
    """Join ``values`` along ``axis``; ``interleave`` alternates them slice by slice (all
    values then have the same shape): ``out[i::n] = values[i]`` along the axis."""
    values = a.tensors("values")
    axis = int(a.scalar("axis"))
    if values[0].dim() == 0:  # scalars: coremltools' value_inference stacks them
        return torch.stack(values)
    values = _common_dtype(values)
    if bool(a.scalar("interleave", False)):
        axis %= values[0].dim()
        stacked = torch.stack(values, dim=axis + 1)
        shape = list(values[0].shape)
        shape[axis] *= len(values)
        return stacked.reshape(shape)
    return torch.cat(values, dim=axis)


def _common_dtype(values: list[torch.Tensor]) -> list[torch.Tensor]:
    dtype = values[0].dtype
    for v in values[1:]:
        dtype = torch.promote_types(dtype, v.dtype)
    return [v.to(dtype) for v in values]


def _stack_rule(op: Operation, batched: Batched) -> str:
    return _all_values_batched(op, batched) or axes_avoid_batch(
        "axis", "values", of_output=True)(op, batched)


@register("stack", exact=True, batch=_stack_rule)
def _stack(a: OpArgs) -> torch.Tensor:
    """Stack equal-shape ``values`` along a new dim ``axis`` (of the output's rank)."""
    return torch.stack(_common_dtype(a.tensors("values")), dim=int(a.scalar("axis")))


@register("split", exact=True, batch=axes_avoid_batch("axis"))
def _split(a: OpArgs) -> tuple[torch.Tensor, ...]:
    """``split_sizes`` along ``axis``, or ``num_splits`` equal parts."""
    x = a.tensor("x")
    axis = int(a.scalar("axis")) % x.dim()
    sizes = a.ints("split_sizes")
    if sizes is None:
        num = int(a.scalar("num_splits"))
        sizes = [x.shape[axis] // num] * num
    return tuple(torch.split(x, sizes, dim=axis))


# --------------------------------------------------------------------------------------------
# slicing


def _keeps_dim0(op: Operation, batched: Batched) -> str:
    """Dim 0 is 1 in and out (the batch plan's invariant) and not squeezed away, so the slice
    takes element 0 there: with N samples, the kernel keeps all N."""
    squeeze = op.inputs.get("squeeze_mask")
    if squeeze is not None and (squeeze.val is None or bool(np.ravel(squeeze.val)[0])):
        return "squeezes the batch dim"
    return ""


@register("slice_by_index", exact=True, batch=flows("x", check=_keeps_dim0))
def _slice_by_index(a: OpArgs) -> torch.Tensor:
    """NumPy basic slicing per dim (coremltools' ``solve_slice_by_index_slice``): ``begin``,
    ``end``, ``stride`` (negative walks backwards); ``begin_mask``/``end_mask`` ignore the
    bound; ``squeeze_mask`` takes the one element at ``begin`` and drops the dim."""
    return slice_index(a, a.tensor("x"))


def slice_index(a: OpArgs, x: torch.Tensor) -> torch.Tensor:
    """``x`` sliced by the ``slice_by_index`` parameters of ``a`` (also ``slice_update``'s)."""
    rank = x.dim()
    begin, end = a.ints("begin"), a.ints("end")
    stride = a.ints("stride", [1] * rank)
    begin_mask = a.bools("begin_mask", [False] * rank)
    end_mask = a.bools("end_mask", [False] * rank)
    squeeze = a.bools("squeeze_mask", [False] * rank)
    slices: list[slice | int] = []
    for i in range(rank):
        if a.batched and i == 0:
            slices.append(slice(None))
        elif squeeze[i]:
            slices.append(slice(None if begin_mask[i] else begin[i], None, 2**31 - 1))
        else:
            slices.append(slice(None if begin_mask[i] else begin[i],
                                None if end_mask[i] else end[i], stride[i]))
    out = _numpy_slice(x, tuple(slices))
    drop = [i for i in range(rank) if squeeze[i]]
    return out.reshape([s for i, s in enumerate(out.shape) if i not in drop])


def _numpy_slice(x: torch.Tensor, slices: tuple[slice, ...]) -> torch.Tensor:
    """Torch slicing where every step is positive (a view), NumPy's otherwise."""
    if all(s.step is None or s.step > 0 for s in slices):
        return x[slices]
    return torch.from_numpy(x.numpy()[slices].copy(order="C"))  # fresh, positive strides


@register("slice_by_size", exact=True, batch=flows("x", check=_keeps_dim0))
def _slice_by_size(a: OpArgs) -> torch.Tensor:
    """``size[i]`` elements from ``begin[i]`` (negative: from the end); size -1: to the end."""
    x = a.tensor("x")
    begin, size = a.ints("begin"), a.ints("size")
    slices = []
    for i in range(x.dim()):
        if a.batched and i == 0:
            slices.append(slice(None))
            continue
        b = begin[i] + x.shape[i] if begin[i] < 0 else begin[i]
        slices.append(slice(b, b + size[i]) if size[i] > 0 else slice(b, None))
    return x[tuple(slices)]


# --------------------------------------------------------------------------------------------
# reshaping, tiling


def _flatten_keeps_batch(op: Operation, batched: Batched) -> str:
    axis = _const_ints(op, "axis")
    rank = op.inputs["x"].rank
    if axis is not None and axis[0] % rank == 0:
        return "flattens the batch dim into the rest"
    return ""


@register("flatten2d", exact=True, batch=flows("x", check=_flatten_keeps_batch))
def _flatten2d(a: OpArgs) -> torch.Tensor:
    """``(prod(shape[:axis]), prod(shape[axis:]))``; axis defaults to 1, Python slicing for
    negative axes (coremltools' type inference)."""
    x = a.tensor("x")
    axis = int(a.scalar("axis", 1))
    shape = list(x.shape)
    return x.reshape(math.prod(shape[:axis]), math.prod(shape[axis:]))


def _reps_keep_batch(op: Operation, batched: Batched) -> str:
    reps = _const_ints(op, "reps")
    return "" if reps is not None and reps[0] == 1 else "tiles the batch dim"


@register("tile", exact=True, batch=flows("x", check=_reps_keep_batch))
def _tile(a: OpArgs) -> torch.Tensor:
    """``np.tile`` with ``len(reps) == rank(x)``."""
    return a.tensor("x").repeat(a.ints("reps"))


# --------------------------------------------------------------------------------------------
# resizing


def _scale_factor(op: Operation, name: str) -> float:
    var = op.inputs.get(name)
    value = 1.0 if var is None else float(np.asarray(var.val))
    if not math.isfinite(value) or value <= 0:
        raise UnsupportedOpError(op.op_type, op.name, f"{name} {value}: must be positive")
    return value


def _check_upsample(op: Operation) -> None:
    for name in ("scale_factor_height", "scale_factor_width"):
        _scale_factor(op, name)


def _upsampled_size(scale: object, size: int) -> int:
    """``floor(size * scale)`` in the scale's own dtype, as coremltools' type inference
    computes it (an fp32 scale multiplies in fp32)."""
    return int(np.floor(np.asarray(scale)[()] * size))


@register("upsample_nearest_neighbor", exact=True, check=_check_upsample,
          batch=flows("x"))
def _upsample_nearest_neighbor(a: OpArgs) -> torch.Tensor:
    """Output size ``floor(in * scale)`` per spatial dim (the last two); output index ``o``
    reads input ``floor(o * in / out)``: the scale recomputed from the sizes, in exact integer
    arithmetic. Integer factors repeat each pixel ``f`` times. Core ML's own expected outputs
    for fractional factors (coremltools' iOS15 ``TestUpsampleNearestNeighborFractionalScales``:
    3 -> 3 columns at 1.12 reads 0, 1, 2, where ``floor(o / scale)`` would read 0, 0, 1) and
    its TensorFlow tests (``ResizeNearestNeighbor`` without half-pixel centers, 10 -> 25 rows)
    fix this rule; coremltools has no value inference for the op."""
    x = a.tensor("x")
    for dim, name in ((-2, "scale_factor_height"), (-1, "scale_factor_width")):
        size = x.shape[dim]
        out = _upsampled_size(a.value(name, 1), size)
        if out == size:
            continue
        if out % size == 0:
            x = x.repeat_interleave(out // size, dim=dim)
        else:
            src = torch.div(torch.arange(out) * size, out, rounding_mode="floor")
            x = x.index_select(dim, src)
    return x


# --------------------------------------------------------------------------------------------
# einsum and attention


def _check_einsum(op: Operation) -> None:
    values: tuple[Var, ...] = op.inputs["values"]
    if len(values) != 2 or values[0].rank not in (3, 4):
        raise UnsupportedOpError(op.op_type, op.name, "only MIL's rank-3/4 two-operand form")


@register("einsum", check=_check_einsum, batch=PER_SAMPLE)
def _einsum(a: OpArgs) -> torch.Tensor:
    """The one contraction MIL's einsum defines (any equation string equivalent to
    ``nchw,nwhu->nchu`` or ``chw,whr->chr``, which type inference enforces): a matmul over
    dims -1 of the first and -3 of the second operand, H and B broadcast when 1."""
    x, y = a.tensors("values")
    h = max(x.shape[-2], y.shape[-2])
    x = x.expand(*x.shape[:-2], h, x.shape[-1])
    y = y.expand(*y.shape[:-2], h, y.shape[-1])
    # [..., C, H, W1] @ [..., W1, H, W2] per h: move H in front of the matrix dims.
    out = torch.matmul(x.transpose(-3, -2), y.transpose(-3, -2))  # [..., H, C, W2]
    return out.transpose(-3, -2)


@register("scaled_dot_product_attention", batch=PER_SAMPLE)
def _sdpa(a: OpArgs) -> torch.Tensor:
    """``softmax(Q K^T / sqrt(E) + mask) V``; a bool mask keeps the True positions (the others
    get -inf), a float mask is added (iOS18 ``scaled_dot_product_attention``)."""
    q, k, v = a.tensor("query"), a.tensor("key"), a.tensor("value")
    scores = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(q.shape[-1])
    mask = a.opt_tensor("attn_mask")
    if mask is not None and mask.dtype == torch.bool:
        scores = scores.masked_fill(~mask, -math.inf)
    elif mask is not None:
        scores = scores + mask
    return torch.matmul(torch.softmax(scores, dim=-1), v)


# --------------------------------------------------------------------------------------------
# states (iOS18 stateful models)


class StateCell:
    """A state input's value during one prediction: ``read_state`` reads it,
    ``coreml_update_state`` replaces it (never in place, so earlier reads keep their value)."""

    __slots__ = ("value",)

    def __init__(self, value: torch.Tensor) -> None:
        self.value = value


def _cell(a: OpArgs, name: str) -> StateCell:
    cell = a._env[a.var(name)]
    if not isinstance(cell, StateCell):
        raise InterpreterError(f"{a.op.op_type} {a.op.name!r}: {name!r} is not a state input")
    return cell


@register("read_state", exact=True, batch=PER_SAMPLE)
def _read_state(a: OpArgs) -> torch.Tensor:
    """The state's current value (zeros before any update, as ``MLModel.make_state`` gives)."""
    return _cell(a, "input").value


@register("coreml_update_state", exact=True, batch=PER_SAMPLE)
def _coreml_update_state(a: OpArgs) -> torch.Tensor:
    """Store ``value`` in the state (the interpreter returns it to the caller's state after the
    run) and pass it on as the op's output."""
    value = a.tensor("value")
    _cell(a, "state").value = value
    return value
