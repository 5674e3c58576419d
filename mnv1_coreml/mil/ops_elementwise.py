"""Activation, elementwise, normalisation and reduction kernels beyond MobileNet V1's.

What coremltools' PyTorch frontend emits for other image classifiers: ``sigmoid``/``silu``
(EfficientNet), ``sigmoid_hard`` and ``thresholded_relu`` (hard-swish and hard-sigmoid in
MobileNet V3 and GhostNet), ``gelu`` and ``layer_norm`` (ConvNeXt, ViT), and the rest of the
MIL activation set. Formulas are the ones in coremltools' op definitions (their docstrings and
``value_inference``), cited per kernel.

Batches: only kernels whose result for an element cannot depend on where it sits in memory
take N samples in one call (IEEE-exact arithmetic: clamps, multiply-adds as separate ops,
``sqrt``, ``abs``, ...; max and min reductions). ATen's SIMD transcendentals (``sigmoid``, ``silu``,
``elu``, ``softplus``, tanh-GELU, ``exp2``, ``pow``) compute the vector body and the scalar
tail differently and were measured to differ in the last bit between a batch and single runs,
so those, sums and the other transcendental or composite ops run per sample (no batch rule).

fp16: like every kernel here (see :mod:`.ops`), these compute in fp32 from fp16-exact inputs
and the interpreter rounds the result to fp16 once. For single-rounding ops (``abs``,
``maximum``-like, ``thresholded_relu``, ...) that is exactly fp16 arithmetic; for
transcendental and composite ops (``exp``, ``gelu``, ``layer_norm``, reductions) it is the
correctly rounded result of the fp32 computation, which is within one fp16 ulp of any fp16
implementation's and is the best a reference can claim without Apple's kernels.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from .errors import UnsupportedOpError
from .loader import Operation, types
from .ops import (
    PER_SAMPLE,
    UNARY,
    BatchRule,
    OpArgs,
    _const_str,
    axes_avoid_batch,
    register,
)


def _alpha(a: OpArgs, default: float | None = None) -> float:
    return float(a.scalar("alpha", default))


# --------------------------------------------------------------------------------------------
# activations (iOS15 activation.py; iOS17 only widens the alpha/beta dtypes)


@register("sigmoid", batch=PER_SAMPLE)
def _sigmoid(a: OpArgs) -> torch.Tensor:
    """``1 / (1 + exp(-x))``."""
    return torch.sigmoid(a.tensor("x"))


@register("silu", batch=PER_SAMPLE)
def _silu(a: OpArgs) -> torch.Tensor:
    """``x * sigmoid(x)`` (swish)."""
    return F.silu(a.tensor("x"))


@register("sigmoid_hard", batch=UNARY)
def _sigmoid_hard(a: OpArgs) -> torch.Tensor:
    """``min(max(alpha * x + beta, 0), 1)``; defaults alpha 0.2, beta 0.5. PyTorch's hard
    sigmoid and hard-swish convert to alpha 1/6 (an fp16 program stores it rounded)."""
    x = a.tensor("x")
    alpha, beta = float(a.scalar("alpha", 0.2)), float(a.scalar("beta", 0.5))
    return torch.clamp(alpha * x + beta, 0.0, 1.0)


@register("thresholded_relu", exact=True, batch=UNARY)
def _thresholded_relu(a: OpArgs) -> torch.Tensor:
    """``x`` where ``x >= alpha``, else 0 (value_inference's ``y[y < alpha] = 0``); alpha
    defaults to 1. Hard-swish converts to ``thresholded_relu(x, alpha=-3)`` first."""
    x = a.tensor("x")
    return torch.where(x < _alpha(a, 1.0), torch.zeros((), dtype=x.dtype), x)


_GELU_MODES = ("EXACT", "TANH_APPROXIMATION", "SIGMOID_APPROXIMATION")


def _check_gelu(op: Operation) -> None:
    mode = _const_str(op, "mode", "EXACT")
    if mode not in _GELU_MODES:
        raise UnsupportedOpError(op.op_type, op.name, f"mode {mode!r}")


@register("gelu", check=_check_gelu, batch=PER_SAMPLE)
def _gelu(a: OpArgs) -> torch.Tensor:
    """EXACT ``0.5 x (1 + erf(x / sqrt 2))``; TANH_APPROXIMATION
    ``0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))``; SIGMOID_APPROXIMATION
    ``x * sigmoid(1.702 x)`` (the last is not PyTorch's: no nn.GELU mode converts to it)."""
    x = a.tensor("x")
    mode = str(a.scalar("mode", "EXACT"))
    if mode == "EXACT":  # as erfc: 1 + erf(x) cancels in fp32 for x << 0, losing fp16 digits
        return 0.5 * x * torch.special.erfc(-x * math.sqrt(0.5))
    if mode == "TANH_APPROXIMATION":
        return F.gelu(x, approximate="tanh")
    return x * torch.sigmoid(1.702 * x)


@register("leaky_relu", batch=UNARY)
def _leaky_relu(a: OpArgs) -> torch.Tensor:
    """``x`` if ``x >= 0`` else ``alpha * x``; alpha defaults to 0.01."""
    return F.leaky_relu(a.tensor("x"), _alpha(a, 0.01))


@register("elu", batch=PER_SAMPLE)
def _elu(a: OpArgs) -> torch.Tensor:
    """``x`` if ``x > 0`` else ``alpha * (exp(x) - 1)``; alpha defaults to 1."""
    return F.elu(a.tensor("x"), _alpha(a, 1.0))


@register("clamped_relu", batch=UNARY)
def _clamped_relu(a: OpArgs) -> torch.Tensor:
    """``min(max(x, 0), beta) + min(min(x, 0) * alpha, beta)`` (value_inference)."""
    x = a.tensor("x")
    alpha, beta = float(a.scalar("alpha", 0.0)), float(a.scalar("beta", 6.0))
    return torch.clamp(x, 0.0, beta) + torch.clamp(torch.clamp(x, max=0.0) * alpha, max=beta)


def _check_prelu(op: Operation) -> None:
    if op.inputs["x"].rank not in (3, 4, 5):
        raise UnsupportedOpError(op.op_type, op.name, f"rank {op.inputs['x'].rank} input")


def _per_channel(a: OpArgs, name: str, rank: int) -> torch.Tensor:
    """A (C,) parameter broadcast along dim 1 of a rank-``rank`` tensor."""
    t = torch.from_numpy(np.asarray(a.value(name), dtype=np.float32).reshape(-1).copy())
    return t.reshape([1, -1] + [1] * (rank - 2))


@register("prelu", check=_check_prelu, batch=UNARY)
def _prelu(a: OpArgs) -> torch.Tensor:
    """``max(x, 0) + alpha[c] * min(x, 0)``, alpha per channel (dim 1)."""
    x = a.tensor("x")
    alpha = _per_channel(a, "alpha", x.dim())
    return torch.clamp(x, min=0.0) + alpha * torch.clamp(x, max=0.0)


@register("softplus", batch=PER_SAMPLE)
def _softplus(a: OpArgs) -> torch.Tensor:
    """``log(1 + exp(x))``, computed as value_inference does, without overflow:
    ``log(1 + exp(-|x|)) + max(x, 0)``."""
    x = a.tensor("x")
    return torch.log1p(torch.exp(-torch.abs(x))) + torch.clamp(x, min=0.0)


@register("softplus_parametric", batch=PER_SAMPLE)
def _softplus_parametric(a: OpArgs) -> torch.Tensor:
    """``alpha[c] * log(1 + exp(beta[c] * x))``, per channel (dim 1)."""
    x = a.tensor("x")
    alpha, beta = _per_channel(a, "alpha", x.dim()), _per_channel(a, "beta", x.dim())
    return alpha * F.softplus(beta * x)


@register("softsign", batch=UNARY)
def _softsign(a: OpArgs) -> torch.Tensor:
    """``x / (1 + |x|)``."""
    x = a.tensor("x")
    return x / (1 + torch.abs(x))


@register("linear_activation", batch=UNARY)
def _linear_activation(a: OpArgs) -> torch.Tensor:
    """``alpha * x + beta``."""
    return float(a.scalar("alpha")) * a.tensor("x") + float(a.scalar("beta", 0.0))


@register("scaled_tanh", batch=PER_SAMPLE)
def _scaled_tanh(a: OpArgs) -> torch.Tensor:
    """``alpha * tanh(beta * x)``."""
    x = a.tensor("x")
    return float(a.scalar("alpha", 1.0)) * torch.tanh(float(a.scalar("beta", 1.0)) * x)


# --------------------------------------------------------------------------------------------
# elementwise unary (iOS15 elementwise_unary.py)


@register("identity", exact=True, batch=UNARY)
def _identity(a: OpArgs) -> torch.Tensor:
    return a.tensor("x")


def _unary(name: str, fn, exact: bool = False,  # noqa: ANN001 (torch callables)
           batch: BatchRule | None = UNARY) -> None:
    register(name, exact=exact, batch=batch)(lambda a: fn(a.tensor("x")))


_unary("tanh", torch.tanh, batch=PER_SAMPLE)
_unary("exp", torch.exp, batch=PER_SAMPLE)
_unary("exp2", torch.exp2, batch=PER_SAMPLE)
_unary("erf", torch.erf, batch=PER_SAMPLE)
_unary("sqrt", torch.sqrt)
_unary("square", torch.square)
_unary("abs", torch.abs, exact=True)
_unary("sign", torch.sign, exact=True)
_unary("floor", torch.floor, exact=True)
_unary("ceil", torch.ceil, exact=True)


def _epsilon(a: OpArgs, default: float) -> float:
    """The op's epsilon; absent, the spec's default in x's dtype (fp16: 1e-12 becomes 0)."""
    if a.has("epsilon"):
        return float(a.scalar("epsilon"))
    return float(np.float16(default)) if a.var("x").dtype is types.fp16 else default


@register("rsqrt", batch=PER_SAMPLE)
def _rsqrt(a: OpArgs) -> torch.Tensor:
    """``1 / sqrt(x + epsilon)``; epsilon defaults to 1e-12."""
    return torch.rsqrt(a.tensor("x") + _epsilon(a, 1e-12))


@register("inverse", batch=UNARY)
def _inverse(a: OpArgs) -> torch.Tensor:
    """``1 / (x + epsilon)``; epsilon defaults to 1e-4."""
    return torch.reciprocal(a.tensor("x") + _epsilon(a, 1e-4))


@register("log", batch=PER_SAMPLE)
def _log(a: OpArgs) -> torch.Tensor:
    """``log(x + epsilon)``; epsilon defaults to 1e-45 (fp32's smallest subnormal)."""
    return torch.log(a.tensor("x") + _epsilon(a, 1e-45))


@register("pow", batch=PER_SAMPLE)
def _pow(a: OpArgs) -> torch.Tensor:
    return torch.pow(a.tensor("x"), a.tensor("y"))


# --------------------------------------------------------------------------------------------
# normalisation


def _axes(a: OpArgs, rank: int) -> list[int] | None:
    axes = a.ints("axes")
    return None if axes is None else sorted({ax % rank for ax in axes})


@register("layer_norm", batch=PER_SAMPLE)
def _layer_norm(a: OpArgs) -> torch.Tensor:
    """``gamma * (x - mean) / sqrt(var + epsilon) + beta`` over ``axes`` (default: all),
    biased variance, epsilon default 1e-5; gamma and beta have shape ``x.shape[axes]``."""
    x = a.tensor("x")
    axes = _axes(a, x.dim()) or list(range(x.dim()))
    eps = _epsilon(a, 1e-5)
    mean = x.mean(dim=axes, keepdim=True)
    centred = x - mean
    var = centred.square().mean(dim=axes, keepdim=True)
    out = centred * torch.rsqrt(var + eps)
    affine_shape = [x.shape[i] if i in axes else 1 for i in range(x.dim())]
    gamma, beta = a.opt_tensor("gamma"), a.opt_tensor("beta")
    if gamma is not None:
        out = out * gamma.reshape(affine_shape)
    if beta is not None:
        out = out + beta.reshape(affine_shape)
    return out


@register("instance_norm", batch=PER_SAMPLE)
def _instance_norm(a: OpArgs) -> torch.Tensor:
    """Per sample and channel over the spatial dims, epsilon default 1e-5, gamma/beta (C,)."""
    x = a.tensor("x")
    axes = list(range(2, x.dim()))
    centred = x - x.mean(dim=axes, keepdim=True)
    out = centred * torch.rsqrt(centred.square().mean(dim=axes, keepdim=True) + _epsilon(a, 1e-5))
    if a.has("gamma"):
        out = out * _per_channel(a, "gamma", x.dim())
    if a.has("beta"):
        out = out + _per_channel(a, "beta", x.dim())
    return out


# --------------------------------------------------------------------------------------------
# reductions (iOS15 reduction.py): ``axes`` default all, ``keep_dims`` default False


def _reduce(name: str, fn, exact: bool = False) -> None:  # noqa: ANN001
    def kernel(a: OpArgs) -> torch.Tensor:
        x = a.tensor("x")
        keep = bool(a.scalar("keep_dims", False))
        axes = _axes(a, x.dim())
        if axes is None:
            axes = list(range(x.dim()))
        if not axes:
            return x
        return fn(x, axes, keep)

    kernel.__doc__ = f"MIL {name} over ``axes`` (all if absent); ``keep_dims`` keeps size 1."
    # Summing reductions run per sample: ATen vectorises short rows across rows, so the
    # summation order (last bit) depends on the batch size (measured: a mean over 8x8
    # maps); max and min are exact in any order.
    register(name, exact=exact, batch=axes_avoid_batch("axes") if exact else PER_SAMPLE)(kernel)


def _amax(x: torch.Tensor, axes: list[int], keep: bool) -> torch.Tensor:
    return torch.amax(x, dim=axes, keepdim=keep)


def _amin(x: torch.Tensor, axes: list[int], keep: bool) -> torch.Tensor:
    return torch.amin(x, dim=axes, keepdim=keep)


def _prod(x: torch.Tensor, axes: list[int], keep: bool) -> torch.Tensor:
    for ax in sorted(axes, reverse=True):
        x = torch.prod(x, dim=ax, keepdim=keep)
    return x


def _log_sum_exp(x: torch.Tensor, axes: list[int], keep: bool) -> torch.Tensor:
    return torch.logsumexp(x, dim=axes, keepdim=keep)


_reduce("reduce_max", _amax, exact=True)
_reduce("reduce_min", _amin, exact=True)
_reduce("reduce_sum", lambda x, ax, k: torch.sum(x, dim=ax, keepdim=k))
_reduce("reduce_prod", _prod)
_reduce("reduce_sum_square", lambda x, ax, k: torch.sum(x * x, dim=ax, keepdim=k))
_reduce("reduce_l1_norm", lambda x, ax, k: torch.sum(torch.abs(x), dim=ax, keepdim=k))
_reduce("reduce_l2_norm", lambda x, ax, k: torch.sqrt(torch.sum(x * x, dim=ax, keepdim=k)))
_reduce("reduce_log_sum", lambda x, ax, k: torch.log(torch.sum(x, dim=ax, keepdim=k)))
_reduce("reduce_log_sum_exp", _log_sum_exp)


def _arg_axis(a: OpArgs, x: torch.Tensor) -> int:
    return int(a.scalar("axis", -1)) % x.dim()


@register("reduce_argmax", batch=axes_avoid_batch("axis", default=-1))
def _reduce_argmax(a: OpArgs) -> torch.Tensor:
    """Index of the first maximum along ``axis`` (default -1), int32 (iOS17: output_dtype)."""
    x = a.tensor("x")
    return torch.argmax(x, dim=_arg_axis(a, x), keepdim=bool(a.scalar("keep_dims", False)))


@register("reduce_argmin", batch=axes_avoid_batch("axis", default=-1))
def _reduce_argmin(a: OpArgs) -> torch.Tensor:
    """Index of the first minimum along ``axis`` (default -1), int32 (iOS17: output_dtype)."""
    x = a.tensor("x")
    return torch.argmin(x, dim=_arg_axis(a, x), keepdim=bool(a.scalar("keep_dims", False)))
