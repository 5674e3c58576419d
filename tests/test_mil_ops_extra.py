"""Kernels added for other image classifiers, op by op, on MIL programs built directly (so
every parameter coremltools' PyTorch frontend never sets is reachable): against an
independent NumPy formula and against coremltools' own value inference (the same op on a
constant, folded by coremltools at build time), at fp32 and fp16."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from mnv1_coreml.mil import InterpreterError, ReferenceModel
from mnv1_coreml.mil.loader import ct

mb = ct.converters.mil.Builder
types = ct.converters.mil.mil.types
IOS15, IOS17, IOS18 = ct.target.iOS15, ct.target.iOS17, ct.target.iOS18
FP16_EPS = 2.0**-10  # fp16 ulp at 1
RNG = np.random.default_rng(16)
_erf = np.vectorize(math.erf)


def _sigmoid(x):
    return 1 / (1 + np.exp(-x))


# (op, parameters, NumPy formula in float64 of x and the parameters as stored (an fp16
# program holds fp16 ones), input transform)
UNARY = [
    ("sigmoid", {}, _sigmoid, None),
    ("silu", {}, lambda x: x * _sigmoid(x), None),
    ("sigmoid_hard", {"alpha": 0.3, "beta": 0.4},
     lambda x, alpha, beta: np.clip(alpha * x + beta, 0, 1), None),
    ("sigmoid_hard", {"alpha": 1 / 6, "beta": 0.5},
     lambda x, alpha, beta: np.clip(alpha * x + beta, 0, 1), None),
    ("thresholded_relu", {"alpha": 0.5}, lambda x, alpha: np.where(x >= alpha, x, 0), None),
    ("thresholded_relu", {"alpha": -3.0}, lambda x, alpha: np.where(x >= alpha, x, 0), None),
    ("gelu", {"mode": "EXACT"}, lambda x: 0.5 * x * (1 + _erf(x / np.sqrt(2))), None),
    ("gelu", {"mode": "TANH_APPROXIMATION"},
     lambda x: 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x**3))), None),
    ("gelu", {"mode": "SIGMOID_APPROXIMATION"}, lambda x: x * _sigmoid(1.702 * x), None),
    ("leaky_relu", {"alpha": 0.3}, lambda x, alpha: np.where(x >= 0, x, alpha * x), None),
    ("elu", {"alpha": 0.7}, lambda x, alpha: np.where(x > 0, x, alpha * (np.exp(x) - 1)), None),
    ("clamped_relu", {"alpha": 0.1, "beta": 2.0}, lambda x, alpha, beta:
     np.minimum(np.maximum(x, 0), beta) + np.minimum(np.minimum(x, 0) * alpha, beta), None),
    ("softplus", {}, lambda x: np.log1p(np.exp(x)), None),
    ("softsign", {}, lambda x: x / (1 + np.abs(x)), None),
    ("linear_activation", {"alpha": 1.5, "beta": -0.25},
     lambda x, alpha, beta: alpha * x + beta, None),
    ("scaled_tanh", {"alpha": 2.0, "beta": 0.5},
     lambda x, alpha, beta: alpha * np.tanh(beta * x), None),
    ("tanh", {}, np.tanh, None),
    ("exp", {}, np.exp, None),
    ("exp2", {}, np.exp2, None),
    ("erf", {}, _erf, None),
    ("sqrt", {}, np.sqrt, np.abs),
    ("rsqrt", {"epsilon": 1e-3}, lambda x, epsilon: 1 / np.sqrt(x + epsilon), np.abs),
    ("inverse", {"epsilon": 1e-2}, lambda x, epsilon: 1 / (x + epsilon),
     lambda x: np.abs(x) + 0.1),
    ("log", {"epsilon": 1e-3}, lambda x, epsilon: np.log(x + epsilon), np.abs),
    ("abs", {}, np.abs, None),
    ("square", {}, np.square, None),
    ("sign", {}, np.sign, None),
    ("floor", {}, np.floor, None),
    ("ceil", {}, np.ceil, None),
    ("identity", {}, lambda x: x, None),
]


def _inputs(dtype, transform=None) -> np.ndarray:
    x = RNG.uniform(-4, 4, (1, 3, 4, 6))
    x.reshape(-1)[:6] = [-3.0, 0.5, 0.0, -0.5, 2.0, -1.0]  # thresholds, zero, half-integers
    if transform is not None:
        x = transform(x)
    return x.astype(dtype)


def _params(kw: dict, np_dtype) -> dict:
    return {k: (np_dtype(v) if isinstance(v, float) else v) for k, v in kw.items()}


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
@pytest.mark.parametrize("case", UNARY, ids=lambda c: f"{c[0]}-{'-'.join(map(str, c[1].values()))}"
                         if isinstance(c, tuple) else str(c))
def test_unary(case, precision):
    op, kw, formula, transform = case
    np_dtype = np.float16 if precision == "fp16" else np.float32
    x = _inputs(np_dtype, transform)
    params = _params(kw, np_dtype)
    folded = {}

    spec = mb.TensorSpec(shape=x.shape, dtype=types.string_to_builtin(precision))

    @mb.program(input_specs=[spec], opset_version=IOS17)
    def prog(inp):
        try:  # coremltools' value inference (copy: thresholded_relu's writes into its input)
            folded["v"] = getattr(mb, op)(x=x.copy(), **params).val
        except NotImplementedError:
            folded["v"] = None
        return getattr(mb, op)(x=inp, **params)

    (out,) = ReferenceModel.from_program(prog).run({"inp": x}).values()
    assert out.dtype == np_dtype and out.shape == x.shape
    stored = {k: float(v) for k, v in params.items() if not isinstance(v, str)}
    want = formula(x.astype(np.float64), **stored)
    if precision == "fp32":
        np.testing.assert_allclose(out, want, rtol=2e-6, atol=2e-6)
        if folded["v"] is not None:
            np.testing.assert_allclose(out, folded["v"], rtol=2e-6, atol=2e-6)
    else:  # the exact result rounded once to fp16, give or take the fp32 computation's ulp
        ulp = np.spacing(np.abs(want).astype(np.float16)).astype(np.float64)
        assert np.all(np.abs(out.astype(np.float64) - want) <= ulp), op
        if op in ("thresholded_relu", "abs", "sign", "floor", "ceil", "identity"):
            np.testing.assert_array_equal(out, want.astype(np.float16))


def test_prelu_and_softplus_parametric_are_per_channel():
    x = _inputs(np.float32)
    alpha = np.array([0.1, -0.5, 2.0], np.float32)
    beta = np.array([1.0, 0.5, 3.0], np.float32)
    folded = {}

    @mb.program(input_specs=[mb.TensorSpec(shape=x.shape)], opset_version=IOS17)
    def prog(inp):
        folded["p"] = mb.prelu(x=x, alpha=alpha).val
        folded["s"] = mb.softplus_parametric(x=x, alpha=alpha, beta=beta).val
        return mb.prelu(x=inp, alpha=alpha), mb.softplus_parametric(x=inp, alpha=alpha, beta=beta)

    p, s = ReferenceModel.from_program(prog).run({"inp": x}).values()
    a, b = alpha.reshape(1, 3, 1, 1), beta.reshape(1, 3, 1, 1)
    np.testing.assert_allclose(p, np.where(x > 0, x, a * x), rtol=1e-6)
    np.testing.assert_allclose(p, folded["p"], rtol=1e-6)
    np.testing.assert_allclose(s, a * np.log1p(np.exp(b * x)), rtol=1e-5)
    # coremltools' fp32 log(1 + exp(.)) loses digits where log1p does not: absolute bound
    np.testing.assert_allclose(s, folded["s"], rtol=1e-5, atol=2e-7 * np.abs(s).max())


# ---------------------------------------------------------------------------------------------
# layer_norm and reductions


def _np_layer_norm(x, axes, gamma, beta, eps):
    mean = x.mean(axis=tuple(axes), keepdims=True)
    var = ((x - mean) ** 2).mean(axis=tuple(axes), keepdims=True)
    shape = [x.shape[i] if i in axes else 1 for i in range(x.ndim)]
    out = (x - mean) / np.sqrt(var + eps)
    if gamma is not None:
        out = out * gamma.reshape(shape)
    if beta is not None:
        out = out + beta.reshape(shape)
    return out


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
@pytest.mark.parametrize(("axes", "affine", "eps"), [
    ([-1], True, 1e-6), ([2, 3], True, 1e-3), ([1, 2, 3], False, 1e-5), ([1], True, 0.5),
])
def test_layer_norm(axes, affine, eps, precision):
    np_dtype = np.float16 if precision == "fp16" else np.float32
    x = (RNG.standard_normal((1, 3, 4, 6)) * 3 + 1).astype(np_dtype)
    norm_shape = [x.shape[a] for a in sorted(a % 4 for a in axes)]
    gamma = (RNG.uniform(0.5, 2, norm_shape)).astype(np_dtype) if affine else None
    beta = (RNG.standard_normal(norm_shape)).astype(np_dtype) if affine else None
    kw = {"axes": axes, "epsilon": np_dtype(eps)}
    if affine:
        kw |= {"gamma": gamma, "beta": beta}
    folded = {}

    spec = mb.TensorSpec(shape=x.shape, dtype=types.string_to_builtin(precision))

    @mb.program(input_specs=[spec], opset_version=IOS17)
    def prog(inp):
        folded["v"] = mb.layer_norm(x=x.astype(np.float32), **{
            k: (v.astype(np.float32) if isinstance(v, np.ndarray) else np.float32(v)
                if k == "epsilon" else v) for k, v in kw.items()}).val
        return mb.layer_norm(x=inp, **kw)

    (out,) = ReferenceModel.from_program(prog).run({"inp": x}).values()
    want = _np_layer_norm(x.astype(np.float64), [a % 4 for a in axes],
                          None if gamma is None else gamma.astype(np.float64),
                          None if beta is None else beta.astype(np.float64),
                          float(np_dtype(eps)))
    if precision == "fp32":
        np.testing.assert_allclose(out, want, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(out, folded["v"], rtol=1e-5, atol=1e-5)
    else:
        ulp = np.spacing(np.abs(want).astype(np.float16)).astype(np.float64)
        assert np.all(np.abs(out.astype(np.float64) - want) <= ulp)


REDUCTIONS = {
    "reduce_max": np.max, "reduce_min": np.min, "reduce_sum": np.sum, "reduce_prod": np.prod,
    "reduce_sum_square": lambda x, axis, keepdims: np.sum(x * x, axis=axis, keepdims=keepdims),
    "reduce_l1_norm": lambda x, axis, keepdims: np.sum(np.abs(x), axis=axis, keepdims=keepdims),
    "reduce_l2_norm": lambda x, axis, keepdims: np.sqrt(np.sum(x * x, axis=axis,
                                                               keepdims=keepdims)),
    "reduce_log_sum": lambda x, axis, keepdims: np.log(np.sum(x, axis=axis, keepdims=keepdims)),
    "reduce_log_sum_exp": lambda x, axis, keepdims: np.log(np.sum(np.exp(x), axis=axis,
                                                                  keepdims=keepdims)),
}


@pytest.mark.parametrize(("axes", "keep"), [([1], False), ([-1, 2], True), (None, False)])
@pytest.mark.parametrize("op", sorted(REDUCTIONS))
def test_reductions(op, axes, keep):
    x = RNG.uniform(0.5, 1.5, (1, 3, 4, 5)).astype(np.float32)
    kw = {"keep_dims": keep} | ({"axes": axes} if axes is not None else {})
    folded = {}

    @mb.program(input_specs=[mb.TensorSpec(shape=x.shape)], opset_version=IOS17)
    def prog(inp):
        folded["v"] = getattr(mb, op)(x=x, **kw).val
        return getattr(mb, op)(x=inp, **kw)

    model = ReferenceModel.from_program(prog)
    (out,) = model.run({"inp": x}).values()
    want = REDUCTIONS[op](x.astype(np.float64), axis=None if axes is None else tuple(axes),
                          keepdims=keep)
    np.testing.assert_allclose(out, want, rtol=2e-6)
    np.testing.assert_allclose(out, folded["v"], rtol=2e-6)
    # Reducing dim 0 (axes absent) mixes samples: that op runs per sample.
    xs = RNG.uniform(0.5, 1.5, (3, 3, 4, 5)).astype(np.float32)
    if out.ndim and model.batch_plan.vectorised:
        (batched,) = model.run({"inp": xs}).values()
        singles = [next(iter(model.run({"inp": xs[i : i + 1]}).values())) for i in range(3)]
        np.testing.assert_array_equal(batched, np.concatenate(singles))


@pytest.mark.parametrize("op", ["reduce_argmax", "reduce_argmin"])
def test_arg_reductions(op):
    x = RNG.permutation(60).reshape(1, 3, 4, 5).astype(np.float32)

    @mb.program(input_specs=[mb.TensorSpec(shape=x.shape)], opset_version=IOS17)
    def prog(inp):
        return getattr(mb, op)(x=inp, axis=2, keep_dims=True)

    (out,) = ReferenceModel.from_program(prog).run({"inp": x}).values()
    fn = np.argmax if op == "reduce_argmax" else np.argmin
    np.testing.assert_array_equal(out, fn(x, axis=2)[:, :, None])
    assert out.dtype == np.int32


# ---------------------------------------------------------------------------------------------
# tensor ops


def _run(prog, **feeds):
    return list(ReferenceModel.from_program(prog).run(feeds).values())


def test_concat_split_stack_interleave():
    x = RNG.standard_normal((1, 4, 2, 3)).astype(np.float32)
    c = RNG.standard_normal((1, 4, 2, 3)).astype(np.float32)

    @mb.program(input_specs=[mb.TensorSpec(shape=x.shape)])
    def prog(inp):
        parts = mb.split(x=inp, split_sizes=[1, 3], axis=1)
        halves = mb.split(x=inp, num_splits=2, axis=-1 + 4 - 1)  # axis 2
        return (mb.concat(values=[inp, c, inp], axis=-1),
                mb.concat(values=[inp, c], axis=1, interleave=True),
                *parts, *halves, mb.stack(values=[inp, c], axis=2))

    cat, inter, p0, p1, h0, h1, st = _run(prog, inp=x)
    np.testing.assert_array_equal(cat, np.concatenate([x, c, x], axis=-1))
    want = np.empty((1, 8, 2, 3), np.float32)
    want[:, 0::2], want[:, 1::2] = x, c
    np.testing.assert_array_equal(inter, want)
    np.testing.assert_array_equal(p0, x[:, :1])
    np.testing.assert_array_equal(p1, x[:, 1:])
    np.testing.assert_array_equal(h0, x[:, :, :1])
    np.testing.assert_array_equal(h1, x[:, :, 1:])
    np.testing.assert_array_equal(st, np.stack([x, c], axis=2))


SLICES = [
    # begin, end, stride, begin_mask, end_mask, squeeze_mask, NumPy index
    ([0, 1, 0, 0], [1, 3, 4, 6], None, None, None, None, np.s_[0:1, 1:3, 0:4, 0:6]),
    ([0, 0, 1, -2], [1, 3, 4, 6], [1, 2, 2, 1], None, None, None, np.s_[0:1, 0:3:2, 1:4:2, -2:6]),
    ([0, 2, 3, 5], [1, 0, 0, 0], [1, -1, -2, -1], None, [False, True, True, True], None,
     np.s_[0:1, 2::-1, 3::-2, 5::-1]),
    ([0, 7, 0, 1], [1, 0, 9, 4], [1, 1, 1, 1], [False, True, False, False],
     [False, True, False, False], [False, False, True, False], np.s_[0:1, :, 0, 1:4]),
    ([0, -1, 0, -1], [1, 0, 4, 0], None, None, [False, True, False, False],
     [False, True, False, True], np.s_[0:1, -1, 0:4, -1]),
]


@pytest.mark.parametrize("case", SLICES, ids=range(len(SLICES)))
def test_slice_by_index(case):
    begin, end, stride, bmask, emask, smask, index = case
    x = RNG.standard_normal((1, 3, 4, 6)).astype(np.float32)
    kw = {"begin": begin, "end": end}
    for name, val in (("stride", stride), ("begin_mask", bmask), ("end_mask", emask),
                      ("squeeze_mask", smask)):
        if val is not None:
            kw[name] = val
    folded = {}

    @mb.program(input_specs=[mb.TensorSpec(shape=x.shape)])
    def prog(inp):
        folded["v"] = mb.slice_by_index(x=x, **kw).val
        return mb.slice_by_index(x=inp, **kw)

    model = ReferenceModel.from_program(prog)
    (out,) = model.run({"inp": x}).values()
    np.testing.assert_array_equal(out, x[index])
    np.testing.assert_array_equal(out, folded["v"])
    xs = RNG.standard_normal((3, 3, 4, 6)).astype(np.float32)
    (batched,) = model.run({"inp": xs}).values()
    singles = [next(iter(model.run({"inp": xs[i : i + 1]}).values())) for i in range(3)]
    np.testing.assert_array_equal(batched, np.concatenate(singles))


def test_slice_by_size_flatten2d_tile_gather():
    x = RNG.standard_normal((1, 3, 4, 6)).astype(np.float32)

    @mb.program(input_specs=[mb.TensorSpec(shape=x.shape)])
    def prog(inp):
        # (coremltools' type inference mis-sizes a negative begin with size -1: not used)
        return (mb.slice_by_size(x=inp, begin=[0, 1, 1, -4], size=[1, 2, -1, 3]),
                mb.flatten2d(x=inp), mb.flatten2d(x=inp, axis=-1), mb.flatten2d(x=inp, axis=0),
                mb.tile(x=inp, reps=[1, 2, 1, 3]),
                mb.gather(x=inp, indices=np.array([2, -1, 0], np.int32), axis=3))

    sz, f1, f_1, f0, tiled, gathered = _run(prog, inp=x)
    np.testing.assert_array_equal(sz, x[0:1, 1:3, 1:, 2:5])  # -4 of 6 is 2
    np.testing.assert_array_equal(f1, x.reshape(1, -1))
    np.testing.assert_array_equal(f_1, x.reshape(-1, 6))
    np.testing.assert_array_equal(f0, x.reshape(1, -1))
    np.testing.assert_array_equal(tiled, np.tile(x, (1, 2, 1, 3)))
    np.testing.assert_array_equal(gathered, x[..., [2, 5, 0]])


def test_upsample_nearest_neighbor_integer_factors():
    x = RNG.standard_normal((1, 2, 3, 4)).astype(np.float32)

    @mb.program(input_specs=[mb.TensorSpec(shape=x.shape)])
    def prog(inp):
        return mb.upsample_nearest_neighbor(x=inp, scale_factor_height=2, scale_factor_width=3)

    (out,) = _run(prog, inp=x)
    want = torch.nn.functional.interpolate(torch.from_numpy(x), scale_factor=(2, 3),
                                           mode="nearest").numpy()
    np.testing.assert_array_equal(out, want)


def test_upsample_fractional_factors_read_floor_of_o_in_over_out():
    """Output ``o`` reads ``floor(o * in / out)``: Core ML's expected output in coremltools'
    iOS15 ``TestUpsampleNearestNeighborFractionalScales`` (3 -> 3 columns at 1.12 read
    0, 1, 2); 4 -> 6 rows at 1.5 read 0, 0, 1, 2, 2, 3."""
    x = np.arange(12, dtype=np.float32).reshape(1, 1, 4, 3)

    @mb.program(input_specs=[mb.TensorSpec(shape=x.shape)], opset_version=IOS17)
    def prog(inp):
        return mb.upsample_nearest_neighbor(x=inp, scale_factor_height=1.5,
                                            scale_factor_width=1.12)

    (out,) = _run(prog, inp=x)
    np.testing.assert_array_equal(out, x[:, :, [0, 0, 1, 2, 2, 3]][:, :, :, [0, 1, 2]])


@pytest.mark.parametrize("rank", [3, 4])
def test_einsum(rank):
    shapes = {4: ((2, 3, 1, 5), (1, 5, 4, 6)), 3: ((3, 4, 5), (5, 1, 6))}[rank]
    x = RNG.standard_normal(shapes[0]).astype(np.float32)
    y = RNG.standard_normal(shapes[1]).astype(np.float32)
    eq = {4: "nchw,nwhu->nchu", 3: "chw,whr->chr"}[rank]

    @mb.program(input_specs=[mb.TensorSpec(shape=x.shape), mb.TensorSpec(shape=y.shape)])
    def prog(a, b):
        return mb.einsum(values=(a, b), equation=eq)

    (out,) = _run(prog, a=x, b=y)
    big = 4 if rank == 4 else 4
    xb = np.broadcast_to(x, (*x.shape[:-2], big, x.shape[-1])) if x.shape[-2] == 1 else x
    yb = np.broadcast_to(y, (*y.shape[:-2], big, y.shape[-1])) if y.shape[-2] == 1 else y
    np.testing.assert_allclose(out, np.einsum("...chw,...whu->...chu", xb, yb), rtol=1e-5,
                               atol=1e-6)


@pytest.mark.parametrize("mask", [None, "bool", "float"])
def test_scaled_dot_product_attention(mask):
    q, k, v = (RNG.standard_normal((1, 2, 5, 8)).astype(np.float32) for _ in range(3))
    m = {None: None, "bool": RNG.random((5, 5)) > 0.3, "float": RNG.standard_normal((5, 5))}[mask]
    if mask == "bool":
        m[:, 0] = True  # every row attends somewhere
    m = m.astype(np.float32) if mask == "float" else m

    @mb.program(input_specs=[mb.TensorSpec(shape=q.shape) for _ in range(3)],
                opset_version=IOS18)
    def prog(a, b, c):
        kw = {} if m is None else {"attn_mask": m}
        return mb.scaled_dot_product_attention(query=a, key=b, value=c, **kw)

    (out,) = _run(prog, a=q, b=k, c=v)
    tm = None if m is None else torch.from_numpy(m)
    want = torch.nn.functional.scaled_dot_product_attention(
        torch.from_numpy(q), torch.from_numpy(k), torch.from_numpy(v), attn_mask=tm).numpy()
    np.testing.assert_allclose(out, want, rtol=1e-5, atol=1e-6)


def test_gather_out_of_range_index_is_an_error():
    @mb.program(input_specs=[mb.TensorSpec(shape=(1, 4)), mb.TensorSpec(shape=(2,),
                                                                         dtype=types.int32)])
    def prog(x, idx):
        return mb.gather(x=x, indices=idx, axis=1)

    model = ReferenceModel.from_program(prog)
    (ok,) = model.run({"x": np.arange(4, dtype=np.float32)[None], "idx": np.array([3, -4])}
                      ).values()
    np.testing.assert_array_equal(ok, [[3.0, 0.0]])
    with pytest.raises(InterpreterError, match="out of range"):
        model.run({"x": np.zeros((1, 4), np.float32), "idx": np.array([4, 0])})


def test_supported_ops_cover_issue_16():
    from mnv1_coreml.mil import supported_ops

    required = {
        "sigmoid", "sigmoid_hard", "silu", "thresholded_relu", "gelu", "layer_norm", "concat",
        "split", "slice_by_index", "slice_by_size", "leaky_relu", "prelu", "elu", "softplus",
        "tanh", "exp", "sqrt", "rsqrt", "reduce_max", "reduce_sum", "flatten2d", "identity",
        "upsample_nearest_neighbor", "einsum", "quantize", "dequantize",
    }
    assert required <= set(supported_ops())
