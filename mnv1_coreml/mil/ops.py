"""Op kernels of the reference interpreter, one per MIL op type, in a registry.

Semantics follow coremltools' op definitions (``coremltools/converters/mil/mil/ops/defs``);
each kernel's docstring names what it reproduces. Kernels are vectorised torch code.

Dtypes: every kernel computes in float32 (or the op's integer dtype); the interpreter then
conforms the result to the dtype the *program* declares for the output var. An fp16 var is
stored as a float32 tensor holding exactly fp16-representable values (computed in fp32, then
rounded to nearest-even fp16 once), so fp16 rounding between ops is reproduced while every
kernel keeps using fast fp32 torch code. For +, -, *, / that single rounding equals native fp16
arithmetic; for reductions and convolutions it models an fp16 engine that accumulates in fp32.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .errors import InterpreterError, UnsupportedOpError
from .loader import Operation, Var, types

# --------------------------------------------------------------------------------------------
# dtypes

_TORCH_STORAGE: dict[Any, torch.dtype] = {
    types.fp16: torch.float32,  # held as fp32 tensors with fp16-exact values (module docstring)
    types.fp32: torch.float32,
    types.fp64: torch.float64,
    types.int8: torch.int8,
    types.uint8: torch.uint8,
    types.int16: torch.int16,
    types.uint16: torch.int32,  # torch's uint16 lacks most kernels; int32 holds every value
    types.int32: torch.int32,
    types.int64: torch.int64,
    types.bool: torch.bool,
}

_NUMPY_OUT: dict[Any, type] = {
    types.fp16: np.float16,
    types.fp32: np.float32,
    types.fp64: np.float64,
    types.int8: np.int8,
    types.uint8: np.uint8,
    types.int16: np.int16,
    types.uint16: np.uint16,
    types.int32: np.int32,
    types.int64: np.int64,
    types.bool: np.bool_,
}


def storage_dtype(mil_dtype: Any) -> torch.dtype | None:
    """Torch dtype a value of MIL dtype ``mil_dtype`` is held in; None for non-tensor types."""
    return _TORCH_STORAGE.get(mil_dtype)


def numpy_dtype(mil_dtype: Any) -> type | None:
    """NumPy dtype handed back to callers for a var of ``mil_dtype`` (fp16 vars -> float16)."""
    return _NUMPY_OUT.get(mil_dtype)


def conform(t: torch.Tensor, mil_dtype: Any) -> torch.Tensor:
    """Give ``t`` the program-declared dtype: cast, and round to fp16 for fp16 vars."""
    if mil_dtype is types.fp16:
        if t.dtype != torch.float32:
            t = t.to(torch.float32)
        return t.to(torch.float16).to(torch.float32)
    target = _TORCH_STORAGE.get(mil_dtype)
    if target is None:
        name = types.builtin_to_string(mil_dtype)
        raise InterpreterError(f"values of MIL type {name} are not supported")
    if t.dtype != target:
        if target == torch.bool:
            return t != 0
        if t.is_floating_point() and not target.is_floating_point:
            t = torch.trunc(t)  # MIL/NumPy float->int casts truncate toward zero
        return t.to(target)
    return t


def to_tensor(value: Any, mil_dtype: Any) -> torch.Tensor:
    """A constant (NumPy or Python scalar) as the interpreter's storage tensor."""
    arr = np.asarray(value)
    if arr.dtype == np.uint16:
        arr = arr.astype(np.int32)
    t = torch.from_numpy(np.ascontiguousarray(arr))
    return conform(t, mil_dtype)


# --------------------------------------------------------------------------------------------
# registry


class OpArgs:
    """An op's inputs at run time: torch tensors for dynamic ones, NumPy/Python for constants.

    ``batched`` is True when the interpreter runs N = ``batch_size`` images through a batch-1
    program in one pass (see ``interpreter.BatchPlan``) and this op sees them; ``carries_batch``
    tells which inputs hold the N images. Only ``reshape``, ``classify`` and
    :func:`per_sample` need to know.
    """

    __slots__ = ("op", "_env", "_consts", "_dependent", "batch_size", "batched")

    def __init__(
        self,
        op: Operation,
        env: dict[Var, Any],
        consts: dict[Var, Any],
        batch_size: int = 0,
        dependent: set[Var] | frozenset[Var] = frozenset(),
    ) -> None:
        self.op = op
        self._env = env
        self._consts = consts
        self._dependent = dependent
        self.batch_size = batch_size
        self.batched = batch_size > 0

    def carries_batch(self, name: str) -> bool:
        """Whether input ``name`` is computed from the model inputs (holds the N images)."""
        return self.batched and self.op.inputs.get(name) in self._dependent

    def has(self, name: str) -> bool:
        return self.op.inputs.get(name) is not None

    def tensor(self, name: str) -> torch.Tensor:
        return self._env[self.op.inputs[name]]

    def opt_tensor(self, name: str) -> torch.Tensor | None:
        var = self.op.inputs.get(name)
        return None if var is None else self._env[var]

    def value(self, name: str, default: Any = None) -> Any:
        """A parameter as NumPy / Python: the constant if it is one, else the runtime value."""
        var = self.op.inputs.get(name)
        if var is None:
            return default
        if var in self._consts:
            return self._consts[var]
        val = self._env[var]
        return val.numpy() if isinstance(val, torch.Tensor) else val

    def ints(self, name: str, default: Sequence[int] | None = None) -> list[int] | None:
        val = self.value(name)
        if val is None:
            return None if default is None else list(default)
        return [int(v) for v in np.asarray(val).reshape(-1)]

    def scalar(self, name: str, default: Any = None) -> Any:
        val = self.value(name)
        if val is None:
            return default
        return np.asarray(val).item() if not isinstance(val, str) else val


Kernel = Callable[[OpArgs], Any]
Check = Callable[[Operation], None]


@dataclass(frozen=True)
class KernelSpec:
    """A kernel and what the interpreter must know about it.

    ``exact``: the output's values are input values or constants of the output dtype (reshape,
    relu, clip, max_pool, ...), so conforming to fp16 is a no-op and is skipped for speed.
    ``check``: load-time validation of parameters, raising :class:`UnsupportedOpError`.
    """

    fn: Kernel
    exact: bool = False
    check: Check | None = None


OPS: dict[str, KernelSpec] = {}


def register(
    *names: str, exact: bool = False, check: Check | None = None
) -> Callable[[Kernel], Kernel]:
    def deco(fn: Kernel) -> Kernel:
        for name in names:
            OPS[name] = KernelSpec(fn, exact, check)
        return fn

    return deco


def supported_ops() -> list[str]:
    """Op types the interpreter runs (``const`` and every ``constexpr_*`` included)."""
    return sorted([*OPS, "const", *CONSTEXPR_OPS])


def _const_str(op: Operation, name: str, default: str | None = None) -> str | None:
    var = op.inputs.get(name)
    if var is None:
        return default
    if var.val is None:
        raise UnsupportedOpError(op.op_type, op.name, f"{name!r} must be a constant")
    return str(var.val)


# --------------------------------------------------------------------------------------------
# constexpr decompression (at load time, with coremltools' own op definitions)

CONSTEXPR_OPS = (
    "constexpr_affine_dequantize",
    "constexpr_blockwise_shift_scale",
    "constexpr_cast",
    "constexpr_lut_to_dense",
    "constexpr_sparse_to_dense",
)


class _ValueVar:
    """A var whose value we supply, delegating everything else to the real var."""

    def __init__(self, var: Var, value: Any) -> None:
        self._var = var
        self.val = value
        self.sym_val = value

    def __getattr__(self, name: str) -> Any:
        return getattr(self._var, name)


class _OpWithValues:
    """An op seen through ``_ValueVar`` inputs, so its own ``materialized_val_inference`` runs
    even where an input is itself a constexpr output (joint compression: a quantized LUT),
    which coremltools' loader leaves without a value."""

    def __init__(self, op: Operation, values: dict[str, Any]) -> None:
        self._op = op
        self._values = values

    def __getattr__(self, name: str) -> Any:
        if name in self._values:
            return _ValueVar(getattr(self._op, name), self._values[name])
        return getattr(self._op, name)


def materialize_constexpr(op: Operation, known: dict[Var, np.ndarray]) -> list[np.ndarray]:
    """Decompress a ``constexpr_*`` op with coremltools' ``materialized_val_inference``.

    ``known`` maps vars to values materialized earlier, for chained constexprs.
    """
    if op.op_type not in CONSTEXPR_OPS:
        raise UnsupportedOpError(op.op_type, op.name, "no decompression for this constexpr op")
    values = {
        param: known[var]
        for param, var in op.inputs.items()
        if isinstance(var, Var) and var.val is None and var in known
    }
    view = _OpWithValues(op, values) if values else op
    result = type(op).materialized_val_inference(view)
    outputs = list(result) if isinstance(result, tuple) else [result]
    if len(outputs) != len(op.outputs):
        raise InterpreterError(f"{op.op_type} {op.name!r}: unexpected number of outputs")
    return [np.asarray(v) for v in outputs]


# --------------------------------------------------------------------------------------------
# elementwise


@register("add")
def _add(a: OpArgs) -> torch.Tensor:
    return torch.add(a.tensor("x"), a.tensor("y"))


@register("sub")
def _sub(a: OpArgs) -> torch.Tensor:
    return torch.sub(a.tensor("x"), a.tensor("y"))


@register("mul")
def _mul(a: OpArgs) -> torch.Tensor:
    return torch.mul(a.tensor("x"), a.tensor("y"))


@register("real_div")
def _real_div(a: OpArgs) -> torch.Tensor:
    """True division; an int32 output is then truncated toward zero (coremltools' inference)."""
    return torch.true_divide(a.tensor("x"), a.tensor("y"))


@register("maximum", exact=True)
def _maximum(a: OpArgs) -> torch.Tensor:
    x, y = a.tensor("x"), a.tensor("y")
    return torch.maximum(*_same_dtype(x, y))


@register("minimum", exact=True)
def _minimum(a: OpArgs) -> torch.Tensor:
    x, y = a.tensor("x"), a.tensor("y")
    return torch.minimum(*_same_dtype(x, y))


def _same_dtype(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    if x.dtype == y.dtype:
        return x, y
    dt = torch.promote_types(x.dtype, y.dtype)
    return x.to(dt), y.to(dt)


@register("cast")
def _cast(a: OpArgs) -> torch.Tensor:
    """Value conversion happens in ``conform`` (fp16 rounding, truncation to ints, != 0)."""
    return a.tensor("x")


def _check_cast(op: Operation) -> None:
    dtype = _const_str(op, "dtype")
    if types.string_to_builtin(dtype) not in _TORCH_STORAGE:
        raise UnsupportedOpError(op.op_type, op.name, f"cast to {dtype!r}")


OPS["cast"] = KernelSpec(_cast, False, _check_cast)


# --------------------------------------------------------------------------------------------
# activations


@register("relu", exact=True)
def _relu(a: OpArgs) -> torch.Tensor:
    return torch.relu(a.tensor("x"))


@register("relu6", exact=True)
def _relu6(a: OpArgs) -> torch.Tensor:
    return torch.clamp(a.tensor("x"), 0.0, 6.0)


@register("clip", exact=True)
def _clip(a: OpArgs) -> torch.Tensor:
    """``min(max(x, alpha), beta)``; alpha and beta are constants of x's dtype."""
    return torch.clamp(a.tensor("x"), float(a.scalar("alpha")), float(a.scalar("beta")))


@register("softmax")
def _softmax(a: OpArgs) -> torch.Tensor:
    x = a.tensor("x")
    return torch.softmax(x, dim=int(a.scalar("axis", -1)))


# --------------------------------------------------------------------------------------------
# convolution, padding and pooling


def same_pads(
    pad_type: str,
    in_sizes: Sequence[int],
    kernel: Sequence[int],
    strides: Sequence[int],
    dilations: Sequence[int],
) -> list[tuple[int, int]]:
    """(before, after) padding per spatial dim for ``same`` / ``same_lower``.

    The total is coremltools' ``aggregated_pad``: ``max(0, s*ceil(i/s) - i + k_eff - s)``, so
    the output size is ``ceil(i/s)``. ``same`` puts the odd pixel after (bottom/right, as
    TensorFlow's SAME does), ``same_lower`` before (top/left).
    """
    pads = []
    for i, k, s, d in zip(in_sizes, kernel, strides, dilations, strict=True):
        k_eff = (k - 1) * d + 1
        total = max(0, s * math.ceil(i / s) - i + k_eff - s)
        small, large = total // 2, total - total // 2
        pads.append((small, large) if pad_type == "same" else (large, small))
    return pads


def resolve_pads(
    op: OpArgs,
    in_sizes: Sequence[int],
    kernel: Sequence[int],
    strides: Sequence[int],
    dilations: Sequence[int],
) -> list[tuple[int, int]]:
    """Per-dim (before, after) padding for any ``pad_type`` of conv and pooling ops."""
    nd = len(in_sizes)
    pad_type = str(op.scalar("pad_type", "valid")).lower()
    if pad_type == "valid":
        return [(0, 0)] * nd
    if pad_type == "custom":
        pad = op.ints("pad", [0] * (2 * nd))
        return [(pad[2 * i], pad[2 * i + 1]) for i in range(nd)]
    if pad_type in ("same", "same_lower"):
        return same_pads(pad_type, in_sizes, kernel, strides, dilations)
    raise InterpreterError(f"{op.op.op_type} {op.op.name!r}: unknown pad_type {pad_type!r}")


def _torch_pad_arg(pads: Sequence[tuple[int, int]]) -> list[int]:
    """(before, after) per dim, first dim first -> F.pad's last-dim-first flat list."""
    flat: list[int] = []
    for before, after in reversed(pads):
        flat += [before, after]
    return flat


def _check_pad_type(op: Operation) -> None:
    pad_type = _const_str(op, "pad_type", "valid").lower()
    if pad_type not in ("valid", "custom", "same", "same_lower"):
        raise UnsupportedOpError(op.op_type, op.name, f"pad_type {pad_type!r}")
    x = op.inputs["x"]
    if not 1 <= x.rank - 2 <= 3:
        raise UnsupportedOpError(op.op_type, op.name, f"{x.rank - 2} spatial dims")


_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}


def per_sample(
    a: OpArgs, fn: Callable[..., torch.Tensor], *named: tuple[str, torch.Tensor]
) -> torch.Tensor:
    """``fn(*tensors)``, image by image in a batched run (slicing the inputs holding the batch).

    oneDNN and MKL choose batch-size-dependent algorithms for conv and GEMM, whose summation
    order differs in the last bit (and an fp16 program can then round differently). Per image,
    a batch gives results bit-identical to one-at-a-time runs; on CPU this costs about nothing
    (measured on MobileNet V1 1.0-224 layers: per-image convs are as fast as batched ones).
    """
    tensors = [t for _, t in named]
    if a.batch_size <= 1:
        return fn(*tensors)
    split = [a.carries_batch(name) for name, _ in named]
    parts = [
        fn(*(t[i : i + 1] if s else t for t, s in zip(tensors, split, strict=True)))
        for i in range(a.batch_size)
    ]
    return torch.cat(parts)


@register("conv", check=_check_pad_type)
def _conv(a: OpArgs) -> torch.Tensor:
    """MIL conv: any pad_type, groups, strides, dilations, optional bias; 1-3 spatial dims."""
    x, w, b = a.tensor("x"), a.tensor("weight"), a.opt_tensor("bias")
    nd = x.dim() - 2
    strides = a.ints("strides", [1] * nd)
    dilations = a.ints("dilations", [1] * nd)
    groups = int(a.scalar("groups", 1))
    pads = resolve_pads(a, x.shape[2:], w.shape[2:], strides, dilations)
    if all(p0 == p1 for p0, p1 in pads):
        padding: list[int] | int = [p0 for p0, _ in pads]
    else:  # asymmetric: pad explicitly, conv unpadded
        x = F.pad(x, _torch_pad_arg(pads))
        padding = 0
    conv = _CONV[nd]
    return per_sample(
        a, lambda xi: conv(xi, w, b, stride=strides, padding=padding, dilation=dilations,
                           groups=groups), ("x", x)
    )


def _check_pad(op: Operation) -> None:
    mode = _const_str(op, "mode", "constant")
    if mode not in ("constant", "reflect", "replicate"):
        raise UnsupportedOpError(op.op_type, op.name, f"mode {mode!r}")


@register("pad", exact=True, check=_check_pad)
def _pad(a: OpArgs) -> torch.Tensor:
    """Pads the last ``len(pad)/2`` dims; ``pad`` lists (before, after), first dim first."""
    x = a.tensor("x")
    pad = a.ints("pad")
    mode = str(a.scalar("mode", "constant"))
    pairs = [(pad[2 * i], pad[2 * i + 1]) for i in range(len(pad) // 2)]
    if mode == "constant":
        return F.pad(x, _torch_pad_arg(pairs), value=float(a.scalar("constant_val", 0.0)))
    # reflect / replicate: NumPy's "reflect" / "edge" (coremltools' value_inference does this)
    full = [(0, 0)] * (x.dim() - len(pairs)) + pairs
    np_mode = "edge" if mode == "replicate" else "reflect"
    return torch.from_numpy(np.pad(x.numpy(), full, mode=np_mode))


def _pool_geometry(
    a: OpArgs, x: torch.Tensor
) -> tuple[list[int], list[int], list[tuple[int, int]], list[int]]:
    """kernel, strides, (before, after) pads, and extra right padding for ceil_mode.

    Output sizes follow coremltools' ``spatial_dimensions_out_shape`` (including its ceil_mode
    rule); the extra right padding makes a floor-mode torch pool produce exactly that size.
    """
    nd = x.dim() - 2
    kernel = a.ints("kernel_sizes")
    strides = a.ints("strides", [1] * nd)
    pads = resolve_pads(a, x.shape[2:], kernel, strides, [1] * nd)
    ceil_mode = bool(a.scalar("ceil_mode", False))
    extra = []
    for i in range(nd):
        size, (p0, p1), k, s = x.shape[2 + i], pads[i], kernel[i], strides[i]
        total = p0 + p1
        if ceil_mode:
            out = math.floor((size + total - k + s - 1) / s + 1)
            if (out - 1) * s >= size + total / 2 and total > 0:
                out -= 1
        else:
            out = math.floor((size + total - k) / s + 1)
        extra.append(max(0, (out - 1) * s + k - (size + total)))
    return kernel, strides, pads, extra


_AVG = {2: F.avg_pool2d, 3: F.avg_pool3d}  # 1-D pools run as 2-D pools over a unit height
_MAX = {2: F.max_pool2d, 3: F.max_pool3d}


def _sum_pool(x: torch.Tensor, kernel: list[int], strides: list[int]) -> torch.Tensor:
    return _AVG[len(kernel)](x, kernel, strides, 0, divisor_override=1)


@register("avg_pool", check=_check_pad_type)
def _avg_pool(a: OpArgs) -> torch.Tensor:
    """Window sum / count. The count includes zero padding unless
    ``exclude_padding_from_average``; the ceil_mode overhang past the padding never counts
    (PyTorch's rule, which MIL's ceil_mode follows)."""
    x = a.tensor("x")
    kernel, strides, pads, extra = _pool_geometry(a, x)
    one_d = x.dim() == 3
    if one_d:  # 1-D pools run as 2-D pools over a unit height
        x = x.unsqueeze(2)
        kernel, strides, pads, extra = [1, *kernel], [1, *strides], [(0, 0), *pads], [0, *extra]
    exclude = bool(a.scalar("exclude_padding_from_average", False))
    sizes = list(x.shape[2:])
    full = [(p0, p1 + e) for (p0, p1), e in zip(pads, extra, strict=True)]
    total = _sum_pool(F.pad(x, _torch_pad_arg(full)), kernel, strides)
    # The divisor: window positions inside the input, plus the zero padding unless excluded.
    if exclude:
        mask = F.pad(torch.ones([1, 1, *sizes], dtype=x.dtype), _torch_pad_arg(full))
    else:
        padded = [s + p0 + p1 for s, (p0, p1) in zip(sizes, pads, strict=True)]
        ceil_overhang = _torch_pad_arg([(0, e) for e in extra])
        mask = F.pad(torch.ones([1, 1, *padded], dtype=x.dtype), ceil_overhang)
    out = total / _sum_pool(mask, kernel, strides)
    return out.squeeze(2) if one_d else out


@register("max_pool", exact=True, check=_check_pad_type)
def _max_pool(a: OpArgs) -> torch.Tensor:
    """Max over each window; padding (and the ceil_mode overhang) never wins (-inf)."""
    x = a.tensor("x")
    one_d = x.dim() == 3
    kernel, strides, pads, extra = _pool_geometry(a, x)
    if one_d:
        x = x.unsqueeze(2)
        kernel, strides, pads, extra = [1, *kernel], [1, *strides], [(0, 0), *pads], [0, *extra]
    full = [(p0, p1 + e) for (p0, p1), e in zip(pads, extra, strict=True)]
    if any(p for pair in full for p in pair):
        x = F.pad(x, _torch_pad_arg(full), value=-math.inf)
    out = _MAX[len(kernel)](x, kernel, strides, 0)
    return out.squeeze(2) if one_d else out


# --------------------------------------------------------------------------------------------
# normalisation and reductions


@register("batch_norm")
def _batch_norm(a: OpArgs) -> torch.Tensor:
    """``gamma * (x - mean) / sqrt(variance + epsilon) + beta`` over channel dim 1."""
    x = a.tensor("x")
    return F.batch_norm(
        x,
        a.tensor("mean"),
        a.tensor("variance"),
        a.opt_tensor("gamma"),
        a.opt_tensor("beta"),
        training=False,
        eps=float(a.scalar("epsilon", 1e-5)),
    )


@register("reduce_mean")
def _reduce_mean(a: OpArgs) -> torch.Tensor:
    """Mean over ``axes`` (all axes if absent); ``keep_dims`` keeps them as size 1."""
    x = a.tensor("x")
    axes = a.ints("axes")
    keep = bool(a.scalar("keep_dims", False))
    if axes is None:
        axes = list(range(x.dim()))
    if not axes:
        return x
    return x.float().mean(dim=axes, keepdim=keep)


# --------------------------------------------------------------------------------------------
# linear algebra


@register("linear")
def _linear(a: OpArgs) -> torch.Tensor:
    """``x @ weight.T + bias``; weight is (D_out, D_in)."""
    w, b = a.tensor("weight"), a.opt_tensor("bias")
    return per_sample(a, lambda xi: F.linear(xi, w, b), ("x", a.tensor("x")))


@register("matmul")
def _matmul(a: OpArgs) -> torch.Tensor:
    """NumPy-style batched matmul after the optional transposes of the last two dims."""
    x, y = a.tensor("x"), a.tensor("y")
    if bool(a.scalar("transpose_x", False)):
        x = x.transpose(-1, -2)
    if bool(a.scalar("transpose_y", False)):
        y = y.transpose(-1, -2)
    x, y = _same_dtype(x, y)
    return per_sample(a, torch.matmul, ("x", x), ("y", y))


# --------------------------------------------------------------------------------------------
# shape ops


@register("reshape", exact=True)
def _reshape(a: OpArgs) -> torch.Tensor:
    """``0`` copies the input dim when ``len(shape) == rank(x)``; ``-1`` is inferred.

    In a batched run (N images through a batch-1 program) the leading 1 of the target is the
    batch dim: the load-time batch plan only allows this when both the input's and the
    target's leading dims are 1, and then the target's first dim becomes N.
    """
    x = a.tensor("x")
    shape = a.ints("shape")
    if len(shape) == x.dim():
        shape = [x.shape[i] if s == 0 else s for i, s in enumerate(shape)]
    if a.batched:
        shape[0] = x.shape[0]
    return x.reshape(shape)


@register("squeeze", exact=True)
def _squeeze(a: OpArgs) -> torch.Tensor:
    """Drop the size-1 dims in ``axes``; without ``axes``, every size-1 dim of the program's
    declared input shape (so a batched run keeps its batch dim only if the plan allows)."""
    x = a.tensor("x")
    axes = a.ints("axes")
    if axes is None:
        static = a.op.inputs["x"].shape
        axes = [i for i, s in enumerate(static) if s == 1]
    axes = sorted({ax % x.dim() for ax in axes}, reverse=True)
    for ax in axes:
        if x.shape[ax] == 1:
            x = x.squeeze(ax)
    return x


@register("expand_dims", exact=True)
def _expand_dims(a: OpArgs) -> torch.Tensor:
    """Insert size-1 dims; negative axes count from the end of the *output* rank."""
    x = a.tensor("x")
    axes = a.ints("axes")
    out_rank = x.dim() + len(axes)
    for ax in sorted(ax + out_rank if ax < 0 else ax for ax in axes):
        x = x.unsqueeze(ax)
    return x


@register("transpose", exact=True)
def _transpose(a: OpArgs) -> torch.Tensor:
    return a.tensor("x").permute(a.ints("perm"))


# --------------------------------------------------------------------------------------------
# classify


@register("classify")
def _classify(a: OpArgs) -> tuple[list[Any], torch.Tensor]:
    """Top-1 label per image and the probabilities as an (N, num_classes) tensor.

    Core ML returns a dict ``{label: probability}``; an array in label order (the order of
    the ``classes`` input) carries the same information and is what callers compare.
    """
    probs = a.tensor("probabilities")
    classes = list(a.value("classes"))
    n = probs.shape[0] if a.batched else 1
    flat = probs.reshape(n, -1)
    if flat.shape[1] != len(classes):
        raise InterpreterError(
            f"classify {a.op.name!r}: {flat.shape[1]} probabilities for {len(classes)} classes"
        )
    top = torch.argmax(flat, dim=1).tolist()
    return [classes[i] for i in top], flat
