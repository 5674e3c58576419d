"""Op kernels of the reference interpreter, one per MIL op type, in a registry.

Semantics follow coremltools' op definitions (``coremltools/converters/mil/mil/ops/defs``);
each kernel's docstring names what it reproduces. Kernels are vectorised torch code.

Dtypes: every kernel computes in float32 (or the op's integer dtype); the interpreter then
conforms the result to the dtype the *program* declares for the output var. An fp16 var is
stored as a float32 tensor holding exactly fp16-representable values (computed in fp32, then
rounded to nearest-even fp16 once), so fp16 rounding between ops is reproduced while every
kernel keeps using fast fp32 torch code. For +, -, *, / that single rounding equals native fp16
arithmetic; for reductions and convolutions it models an fp16 engine that accumulates in fp32.

Batches: each registration declares its :data:`BatchRule`, when one kernel call may take N
samples of a batch-1 program at once; without one the interpreter calls the kernel sample by
sample (safe, and bit-identical to single runs). Rules are declared only where the result is
provably the same bits either way: elementwise IEEE arithmetic, data movement, max/min.
Convs and matmuls (oneDNN picks batch-size-dependent algorithms), sums (ATen vectorises
short rows across rows) and SIMD transcendentals (vector body and scalar tail differ) run per
sample, as measured. Kernels for other ops live in :mod:`.ops_elementwise`, :mod:`.ops_math`,
:mod:`.ops_tensor` (incl. iOS18 states), :mod:`.ops_index` (gather / scatter, slice_update) and
:mod:`.ops_image` (the package imports them, which registers their kernels); quantization
kernels (W8A8) are below.
"""

from __future__ import annotations

import math
import warnings
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

    ``batch_size`` is N > 0 when the interpreter runs N samples through a batch-1 program in
    one call of this kernel (its registration declared the op batch-safe, see
    :data:`BatchRule`); 0 otherwise, including each call of an op run sample by sample.
    Only kernels whose output shape is a parameter (``reshape``) need to know.

    ``inputs`` is ``op.inputs`` read once (coremltools rebuilds that dict on every access)
    and ``cache`` keeps constant parameters already parsed by :meth:`ints`, :meth:`bools` and
    :meth:`scalar`; the interpreter keeps both per op, across calls and samples.
    """

    __slots__ = ("op", "_inputs", "_env", "_consts", "_cache", "batch_size", "batched")

    def __init__(
        self,
        op: Operation,
        env: dict[Var, Any],
        consts: dict[Var, Any],
        batch_size: int = 0,
        inputs: dict[str, Any] | None = None,
        cache: dict[tuple[str, str], Any] | None = None,
    ) -> None:
        self.op = op
        self._inputs = op.inputs if inputs is None else inputs
        self._env = env
        self._consts = consts
        self._cache = {} if cache is None else cache
        self.batch_size = batch_size
        self.batched = batch_size > 0

    def has(self, name: str) -> bool:
        return self._inputs.get(name) is not None

    def var(self, name: str) -> Var | None:
        """The input var itself (its declared dtype and shape), None if absent."""
        return self._inputs.get(name)

    def tensor(self, name: str) -> torch.Tensor:
        return self._env[self._inputs[name]]

    def tensors(self, name: str) -> list[torch.Tensor]:
        """A variadic (tuple) input such as ``concat``'s ``values``."""
        return [self._env[v] for v in self._inputs[name]]

    def opt_tensor(self, name: str) -> torch.Tensor | None:
        var = self._inputs.get(name)
        return None if var is None else self._env[var]

    def value(self, name: str, default: Any = None) -> Any:
        """A parameter as NumPy / Python: the constant if it is one, else the runtime value."""
        var = self._inputs.get(name)
        if var is None:
            return default
        if var in self._consts:
            return self._consts[var]
        val = self._env[var]
        return val.numpy() if isinstance(val, torch.Tensor) else val

    def _parsed(self, kind: str, name: str, parse: Callable[[Any], Any]) -> Any:
        """``parse(value(name))``, memoised when the parameter is a constant."""
        key = (kind, name)
        if key in self._cache:
            return self._cache[key]
        val = self.value(name)
        out = None if val is None else parse(val)
        var = self._inputs.get(name)
        if var is None or var in self._consts:
            self._cache[key] = out
        return out

    def ints(self, name: str, default: Sequence[int] | None = None) -> list[int] | None:
        val = self._parsed("ints", name, lambda v: [int(x) for x in np.asarray(v).reshape(-1)])
        if val is None:
            return None if default is None else list(default)
        return list(val)

    def bools(self, name: str, default: Sequence[bool] | None = None) -> list[bool] | None:
        val = self._parsed("bools", name, lambda v: [bool(x) for x in np.asarray(v).reshape(-1)])
        if val is None:
            return None if default is None else list(default)
        return list(val)

    def scalar(self, name: str, default: Any = None) -> Any:
        val = self._parsed("scalar", name,
                           lambda v: v if isinstance(v, str) else np.asarray(v).item())
        return default if val is None else val


Kernel = Callable[[OpArgs], Any]
Check = Callable[[Operation], None]
#: (param, var) pairs of an op's inputs computed from the model inputs (variadic inputs such
#: as ``concat``'s ``values`` give one pair per element).
Batched = Sequence[tuple[str, Var]]
#: ``rule(op, batched)`` -> "" if the kernel, called once with N samples stacked on dim 0 of
#: the ``batched`` inputs (each, and each tensor output, declared with a leading dim 1),
#: returns exactly the N results of N batch-1 calls; otherwise the reason it does not. An op
#: without a rule, or whose rule refuses, runs sample by sample (the safe default).
BatchRule = Callable[[Operation, Batched], str]


@dataclass(frozen=True)
class KernelSpec:
    """A kernel and what the interpreter must know about it.

    ``exact``: the output's values are input values or constants of the output dtype (reshape,
    relu, clip, max_pool, ...), so conforming to fp16 is a no-op and is skipped for speed.
    ``check``: load-time validation of parameters, raising :class:`UnsupportedOpError`.
    ``batch``: when N samples may go through one call (:data:`BatchRule`); None: per sample.
    ``fast_batch``: when N samples may go through one call if the caller accepts last-bit
    differences from batch-1 runs (summation order inside a conv or a sum; the op never mixes
    samples). Used only by models loaded with ``exact_batch=False`` (accuracy statistics).
    """

    fn: Kernel
    exact: bool = False
    check: Check | None = None
    batch: BatchRule | None = None
    fast_batch: BatchRule | None = None


OPS: dict[str, KernelSpec] = {}


#: The batch "rule" of kernels that must see one sample per call (the default).
PER_SAMPLE: BatchRule | None = None


def register(
    *names: str, batch: BatchRule | None, exact: bool = False, check: Check | None = None,
    fast_batch: BatchRule | None = None,
) -> Callable[[Kernel], Kernel]:
    """Register ``fn`` for op types ``names``; ``batch`` is required, so that every kernel
    states whether it may take a whole batch (a :data:`BatchRule`) or not (``PER_SAMPLE``)."""

    def deco(fn: Kernel) -> Kernel:
        for name in names:
            if name in OPS:
                raise RuntimeError(f"op {name!r} registered twice")
            OPS[name] = KernelSpec(fn, exact, check, batch, fast_batch)
        return fn

    return deco


# --------------------------------------------------------------------------------------------
# batch rules


def _const_ints(op: Operation, name: str) -> list[int] | None:
    var = op.inputs.get(name)
    if var is None or var.val is None:
        return None
    return [int(v) for v in np.ravel(var.val)]


def flows(*params: str, check: BatchRule | None = None) -> BatchRule:
    """Batch-safe when only ``params`` carry the batch and ``check`` (if any) agrees: for ops
    that treat dim 0 like any other independent index (elementwise ops, pools, ...)."""

    def rule(op: Operation, batched: Batched) -> str:
        stray = sorted({p for p, _ in batched} - set(params))
        if stray:
            return f"input {stray[0]!r} depends on the model input"
        return check(op, batched) if check is not None else ""

    return rule


def _same_rank(op: Operation, batched: Batched) -> str:
    rank = op.outputs[0].rank
    if any(v.rank != rank for _, v in batched):
        return "broadcasting moves the batch dim"
    return ""


#: NumPy-broadcasting binary ops: a batched operand of lower rank would shift dim 0.
BROADCAST = flows("x", "y", check=_same_rank)
UNARY = flows("x")


def axes_avoid_batch(param: str, *flow: str, default: int | None = None,
                     of_output: bool = False) -> BatchRule:
    """Batch-safe when the constant ``param`` (an axis or axes) never names dim 0, counted in
    the output's rank if ``of_output`` (expand_dims). A missing ``param`` is ``default``, or
    every axis if that is None (reductions)."""

    def check(op: Operation, batched: Batched) -> str:
        if op.inputs.get(param) is None:
            if default is None:
                return f"no {param}: every axis"
            axes = [default]
        else:
            axes = _const_ints(op, param)
            if axes is None:
                return f"{param} computed at run time"
        rank = op.outputs[0].rank if of_output else batched[0][1].rank
        if any(ax % max(rank, 1) == 0 for ax in axes):
            return f"{param} {axes} includes the batch dim"
        return ""

    return flows(*(flow or ("x",)), check=check)


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
    with warnings.catch_warnings():  # coremltools' NumPy code may warn; not for our users
        warnings.simplefilter("ignore")
        result = type(op).materialized_val_inference(view)
    outputs = list(result) if isinstance(result, tuple) else [result]
    if len(outputs) != len(op.outputs):
        raise InterpreterError(f"{op.op_type} {op.name!r}: unexpected number of outputs")
    return [np.asarray(v) for v in outputs]


# --------------------------------------------------------------------------------------------
# elementwise


@register("add", batch=BROADCAST)
def _add(a: OpArgs) -> torch.Tensor:
    return torch.add(a.tensor("x"), a.tensor("y"))


@register("sub", batch=BROADCAST)
def _sub(a: OpArgs) -> torch.Tensor:
    return torch.sub(a.tensor("x"), a.tensor("y"))


@register("mul", batch=BROADCAST)
def _mul(a: OpArgs) -> torch.Tensor:
    return torch.mul(a.tensor("x"), a.tensor("y"))


@register("real_div", batch=BROADCAST)
def _real_div(a: OpArgs) -> torch.Tensor:
    """True division; an int32 output is then truncated toward zero (coremltools' inference)."""
    return torch.true_divide(a.tensor("x"), a.tensor("y"))


@register("maximum", exact=True, batch=BROADCAST)
def _maximum(a: OpArgs) -> torch.Tensor:
    x, y = a.tensor("x"), a.tensor("y")
    return torch.maximum(*_same_dtype(x, y))


@register("minimum", exact=True, batch=BROADCAST)
def _minimum(a: OpArgs) -> torch.Tensor:
    x, y = a.tensor("x"), a.tensor("y")
    return torch.minimum(*_same_dtype(x, y))


def _same_dtype(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    if x.dtype == y.dtype:
        return x, y
    dt = torch.promote_types(x.dtype, y.dtype)
    return x.to(dt), y.to(dt)


def _check_cast(op: Operation) -> None:
    dtype = _const_str(op, "dtype")
    if types.string_to_builtin(dtype) not in _TORCH_STORAGE:
        raise UnsupportedOpError(op.op_type, op.name, f"cast to {dtype!r}")


@register("cast", check=_check_cast, batch=UNARY)
def _cast(a: OpArgs) -> torch.Tensor:
    """Value conversion happens in ``conform`` (fp16 rounding, truncation to ints, != 0)."""
    return a.tensor("x")


# --------------------------------------------------------------------------------------------
# activations


@register("relu", exact=True, batch=UNARY)
def _relu(a: OpArgs) -> torch.Tensor:
    return torch.relu(a.tensor("x"))


@register("relu6", exact=True, batch=UNARY)
def _relu6(a: OpArgs) -> torch.Tensor:
    return torch.clamp(a.tensor("x"), 0.0, 6.0)


@register("clip", exact=True, batch=UNARY)
def _clip(a: OpArgs) -> torch.Tensor:
    """``min(max(x, alpha), beta)``; alpha and beta are constants of x's dtype."""
    return torch.clamp(a.tensor("x"), float(a.scalar("alpha")), float(a.scalar("beta")))


def _softmax_on_last_axis(op: Operation, batched: Batched) -> str:
    rank = op.outputs[0].rank
    axis = _const_ints(op, "axis")
    axis_ = (-1 if axis is None else axis[0]) % max(rank, 1)
    if rank < 2 or axis_ != rank - 1:
        # ATen's softmax over an inner axis vectorises across rows, so its last bit depends
        # on the batch size (measured); over the last axis each row is computed alike.
        return "softmax not over the last axis"
    return ""


@register("softmax", batch=flows("x", check=_softmax_on_last_axis))
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


@register("conv", check=_check_pad_type, batch=PER_SAMPLE, fast_batch=UNARY)
def _conv(a: OpArgs) -> torch.Tensor:
    """MIL conv: any pad_type, groups, strides, dilations, optional bias; 1-3 spatial dims.

    Per sample in a batch (no batch rule): oneDNN picks batch-size-dependent algorithms whose
    summation order differs in the last bit, so only batch-1 calls reproduce batch-1 runs bit
    for bit (per-image convs cost the same on CPU: measured on MobileNet V1 1.0-224 layers).
    """
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
    return _CONV[nd](x, w, b, stride=strides, padding=padding, dilation=dilations,
                     groups=groups)


def _check_pad(op: Operation) -> None:
    mode = _const_str(op, "mode", "constant")
    if mode not in ("constant", "reflect", "replicate"):
        raise UnsupportedOpError(op.op_type, op.name, f"mode {mode!r}")


def _pad_keeps_batch(op: Operation, batched: Batched) -> str:
    pad = _const_ints(op, "pad")
    rank = batched[0][1].rank
    if pad is None:
        return "pad computed at run time"
    if len(pad) == 2 * rank and (pad[0] or pad[1]):
        return "padding of the batch dim"
    return ""


@register("pad", exact=True, check=_check_pad, batch=flows("x", check=_pad_keeps_batch))
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


@register("avg_pool", check=_check_pad_type, batch=PER_SAMPLE, fast_batch=UNARY)
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


@register("max_pool", exact=True, check=_check_pad_type, batch=UNARY)
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


@register("batch_norm", batch=PER_SAMPLE, fast_batch=UNARY)
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


@register("reduce_mean", batch=PER_SAMPLE, fast_batch=axes_avoid_batch("axes"))
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


def _not_a_vector(op: Operation, batched: Batched) -> str:
    return "" if batched[0][1].rank >= 2 else "linear on a vector"


@register("linear", batch=PER_SAMPLE, fast_batch=flows("x", check=_not_a_vector))
def _linear(a: OpArgs) -> torch.Tensor:
    """``x @ weight.T + bias``; weight is (D_out, D_in)."""
    return F.linear(a.tensor("x"), a.tensor("weight"), a.opt_tensor("bias"))


@register("matmul", batch=PER_SAMPLE)
def _matmul(a: OpArgs) -> torch.Tensor:
    """NumPy-style batched matmul after the optional transposes of the last two dims."""
    x, y = a.tensor("x"), a.tensor("y")
    if bool(a.scalar("transpose_x", False)):
        x = x.transpose(-1, -2)
    if bool(a.scalar("transpose_y", False)):
        y = y.transpose(-1, -2)
    return torch.matmul(*_same_dtype(x, y))


# --------------------------------------------------------------------------------------------
# shape ops


def _reshape_to_const(op: Operation, batched: Batched) -> str:
    return "" if _const_ints(op, "shape") is not None else "reshape to a computed shape"


@register("reshape", exact=True, batch=flows("x", check=_reshape_to_const))
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


@register("squeeze", exact=True, batch=axes_avoid_batch("axes"))
def _squeeze(a: OpArgs) -> torch.Tensor:
    """Drop the size-1 dims in ``axes``; without ``axes``, every size-1 dim of the program's
    declared input shape (so a batched run keeps its batch dim only if the plan allows)."""
    x = a.tensor("x")
    axes = a.ints("axes")
    if axes is None:
        static = a.var("x").shape
        axes = [i for i, s in enumerate(static) if s == 1]
    axes = sorted({ax % x.dim() for ax in axes}, reverse=True)
    for ax in axes:
        if x.shape[ax] == 1:
            x = x.squeeze(ax)
    return x


@register("expand_dims", exact=True, batch=axes_avoid_batch("axes", of_output=True))
def _expand_dims(a: OpArgs) -> torch.Tensor:
    """Insert size-1 dims; negative axes count from the end of the *output* rank."""
    x = a.tensor("x")
    axes = a.ints("axes")
    out_rank = x.dim() + len(axes)
    for ax in sorted(ax + out_rank if ax < 0 else ax for ax in axes):
        x = x.unsqueeze(ax)
    return x


def _perm_keeps_batch(op: Operation, batched: Batched) -> str:
    perm = _const_ints(op, "perm")
    rank = op.outputs[0].rank
    return "" if perm is not None and perm[0] % rank == 0 else "transpose moves the batch dim"


@register("transpose", exact=True, batch=flows("x", check=_perm_keeps_batch))
def _transpose(a: OpArgs) -> torch.Tensor:
    return a.tensor("x").permute(a.ints("perm"))


# --------------------------------------------------------------------------------------------
# activation quantization (iOS17 quantize / dequantize, as W8A8 passes emit them)


def _along_axis(a: OpArgs, name: str, rank: int) -> torch.Tensor | None:
    """A scalar or per-``axis`` vector parameter as a float32 tensor broadcastable to rank
    ``rank`` (coremltools' ``promote_rank_to_same_as_data``); None if absent."""
    value = a.value(name)
    if value is None:
        return None
    t = torch.from_numpy(np.asarray(value, dtype=np.float32).copy())
    if t.dim() == 1:
        shape = [1] * rank
        shape[int(a.scalar("axis")) % rank] = t.shape[0]
        t = t.reshape(shape)
    return t


def _quant_axis_avoids_batch(op: Operation, batched: Batched) -> str:
    axis = _const_ints(op, "axis")
    if axis is not None and axis[0] % op.outputs[0].rank == 0:
        return "per-channel parameters along the batch dim"
    return ""


_QUANT_RANGE = {"int8": (-128, 127), "uint8": (0, 255)}


def _check_quantize(op: Operation) -> None:
    dtype = _const_str(op, "output_dtype")
    if dtype not in _QUANT_RANGE:
        raise UnsupportedOpError(op.op_type, op.name, f"output_dtype {dtype!r}")


@register("quantize", check=_check_quantize,
          batch=flows("input", check=_quant_axis_avoids_batch))
def _quantize(a: OpArgs) -> torch.Tensor:
    """``clip(round(input / scale) + zero_point)`` to int8 / uint8 (iOS17 ``quantize``).

    As coremltools' value inference (``optimize._utils.quantize_by_scale_and_zp``): the
    division is in the input's dtype (fp16 inputs: fp32 division rounded once to fp16, which
    equals native fp16 division), rounding is half to even (``np.around``), then the zero
    point is added and the result clipped to the dtype's range.
    """
    x = a.tensor("input")
    q = x / _along_axis(a, "scale", x.dim())
    if a.var("input").dtype is types.fp16:
        q = q.to(torch.float16).to(torch.float32)
    q = torch.round(q)  # half to even
    zero_point = _along_axis(a, "zero_point", x.dim())
    if zero_point is not None:
        q = q + zero_point
    low, high = _QUANT_RANGE[str(a.scalar("output_dtype"))]
    return torch.clamp(q, low, high)


@register("dequantize", batch=flows("input", check=_quant_axis_avoids_batch))
def _dequantize(a: OpArgs) -> torch.Tensor:
    """``scale * (input - zero_point)`` (iOS17 ``dequantize``): in fp32, then rounded once to
    the scale's dtype, as coremltools' ``dequantize_by_scale_and_zp`` computes it."""
    q = a.tensor("input").to(torch.float32)
    zero_point = _along_axis(a, "zero_point", q.dim())
    if zero_point is not None:
        q = q - zero_point
    return q * _along_axis(a, "scale", q.dim())


# --------------------------------------------------------------------------------------------
# classify


@register("classify", batch=flows("probabilities"))
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
