"""Elementwise math, comparison, logic, sorting and index-generating kernels (ops_math), on MIL
programs built directly: every parameter, fp32 and fp16 (int32 / bool where the op takes them),
against an independent NumPy formula and against coremltools' value inference (the same op on
constants, folded at build time) wherever coremltools has one that works."""

from __future__ import annotations

import numpy as np
import pytest

from mnv1_coreml.mil import InterpreterError, ReferenceModel, UnsupportedOpError
from mnv1_coreml.mil.loader import ct

from .test_mil_ops import saved

mb = ct.converters.mil.Builder
types = ct.converters.mil.mil.types
IOS15, IOS16, IOS17 = ct.target.iOS15, ct.target.iOS16, ct.target.iOS17
RNG = np.random.default_rng(77)
INT_MIN, INT_MAX = -(2**31), 2**31 - 1
# coremltools' NumPy value inference warns on NaN / division by zero, which the tests feed
pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning:coremltools")


def _spec(arr: np.ndarray) -> mb.TensorSpec:
    dtype = {np.dtype(np.float32): types.fp32, np.dtype(np.float16): types.fp16,
             np.dtype(np.int32): types.int32, np.dtype(np.bool_): types.bool}[arr.dtype]
    return mb.TensorSpec(shape=arr.shape, dtype=dtype)


def _run(prog, **feeds) -> list:
    return list(ReferenceModel.from_program(prog).run(feeds).values())


def _same_bits(a: np.ndarray, b: np.ndarray) -> None:
    """Equal values, dtypes and shapes, signed zeros included; NaN matches NaN."""
    a, b = np.asarray(a), np.asarray(b)
    assert a.dtype == b.dtype and a.shape == b.shape, (a.dtype, b.dtype, a.shape, b.shape)
    if a.dtype.kind == "f":
        both_nan = np.isnan(a) & np.isnan(b)
        view = np.int16 if a.dtype == np.float16 else np.int32
        assert np.all(both_nan | (a.view(view) == b.view(view))), (a, b)
    else:
        np.testing.assert_array_equal(a, b)


def _ulps(out: np.ndarray, want: np.ndarray) -> np.ndarray:
    """|out - want| in units of the output dtype's spacing at ``want`` (NaN/inf must agree)."""
    out64, want = out.astype(np.float64), np.asarray(want, np.float64)
    assert np.array_equal(np.isnan(out64), np.isnan(want))
    assert np.array_equal(out64[np.isinf(want)], want[np.isinf(want)])
    ok = np.isfinite(want)
    spacing = np.spacing(np.abs(want[ok]).astype(out.dtype)).astype(np.float64)
    return np.abs(out64[ok] - want[ok]) / spacing


# ---------------------------------------------------------------------------------------------
# unary


TRIG = {
    "sin": (np.sin, 4.0), "cos": (np.cos, 4.0), "tan": (np.tan, 1.5), "asin": (np.arcsin, 1.2),
    "acos": (np.arccos, 1.2), "atan": (np.arctan, 30.0), "sinh": (np.sinh, 5.0),
    "cosh": (np.cosh, 5.0), "atanh": (np.arctanh, 1.2),
}


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
@pytest.mark.parametrize("op", sorted(TRIG))
def test_trig_and_hyperbolic(op, precision):
    fn, span = TRIG[op]
    np_dtype = np.float16 if precision == "fp16" else np.float32
    x = RNG.uniform(-span, span, (1, 3, 40))
    x.reshape(-1)[:6] = [0.0, -0.0, 1.0, -1.0, 0.5, -0.25]  # zeros, domain edges (inf, NaN)
    x = x.astype(np_dtype)
    folded = {}

    with np.errstate(all="ignore"):  # value inference outside the domain: NaN, warned

        @mb.program(input_specs=[_spec(x)], opset_version=IOS17)
        def prog(inp):
            folded["v"] = getattr(mb, op)(x=x).val
            return getattr(mb, op)(x=inp)

        want = fn(x.astype(np.float64))
    (out,) = _run(prog, inp=x)
    assert out.dtype == np_dtype
    # ATen's fp32 transcendentals: within 2 fp32 ulps of the exact value and of NumPy's (value
    # inference); fp16 (fp32 result rounded once): within one fp16 ulp of both
    bound = 1.0 if np_dtype == np.float16 else 2.0
    assert _ulps(out, want).max() <= bound
    assert _ulps(out, folded["v"].astype(np.float64)).max() <= bound
    _same_bits(out[0, 0, :2], np.asarray(fn(x[0, 0, :2]), np_dtype))  # signed zeros kept


@pytest.mark.parametrize("np_dtype", [np.float32, np.float16])
def test_round_is_half_to_even(np_dtype):
    x = np.array([[0.5, 1.5, 2.5, -0.5, -1.5, -2.5, 0.49, -0.0, 3.7, -3.7, 1024.5, np.inf,
                   np.nan, 0.0]], np_dtype)
    x = np.concatenate([x, RNG.uniform(-100, 100, (1, 14)).astype(np_dtype)])
    folded = {}

    @mb.program(input_specs=[_spec(x)], opset_version=IOS17)
    def prog(inp):
        folded["v"] = mb.round(x=x).val
        return mb.round(x=inp)

    (out,) = _run(prog, inp=x)
    _same_bits(out, np.round(x))
    _same_bits(out, folded["v"])
    assert out[0, 0] == 0 and out[0, 2] == 2 and np.signbit(out[0, 3]) and out[0, 10] == 1024


@pytest.mark.parametrize("np_dtype", [np.float32, np.float16, np.int32])
def test_threshold(np_dtype):
    if np_dtype == np.int32:
        x, alphas = RNG.integers(-5, 5, (2, 9)).astype(np.int32), [np.int32(1), np.int32(-3)]
    else:
        x = RNG.uniform(-2, 2, (2, 9)).astype(np_dtype)
        x[0, :4] = [-0.0, 0.0, np.nan, 0.5]
        alphas = [np_dtype(0.5), np_dtype(0.0), np_dtype(-0.0), np_dtype(np.nan)]
    folded = {}

    @mb.program(input_specs=[_spec(x)], opset_version=IOS17)
    def prog(inp):
        folded["v"] = [mb.threshold(x=x, alpha=al).val for al in alphas]
        return tuple(mb.threshold(x=inp, alpha=al) for al in alphas)

    for out, alpha, val in zip(_run(prog, inp=x), alphas, folded["v"], strict=True):
        want = np.where((x > alpha) | np.isnan(x), x, alpha).astype(np_dtype)  # alpha wins ties
        _same_bits(out, want)
        if np_dtype == np.float16:  # NumPy's fp16 maximum keeps x's zero on a tie, its fp32
            np.testing.assert_array_equal(out, val)  # one alpha's: signs of zero may differ
        else:
            _same_bits(out, val)


# ---------------------------------------------------------------------------------------------
# binary: comparisons, logic, floor_div, mod, select


COMPARE = {"equal": np.equal, "not_equal": np.not_equal, "greater": np.greater,
           "greater_equal": np.greater_equal, "less": np.less, "less_equal": np.less_equal}


@pytest.mark.parametrize("np_dtype", [np.float32, np.float16, np.int32])
def test_comparisons_broadcast_to_bool(np_dtype):
    x = RNG.integers(-2, 3, (1, 3, 1, 5)).astype(np_dtype)
    y = RNG.integers(-2, 3, (4, 1)).astype(np_dtype)
    if np_dtype != np.int32:
        x.reshape(-1)[:3] = [np.nan, -0.0, 0.25]
        y[:2, 0] = [0.0, np.nan]
    folded = {}

    @mb.program(input_specs=[_spec(x), _spec(y)], opset_version=IOS17)
    def prog(a, b):
        folded["v"] = [getattr(mb, op)(x=x, y=y).val for op in sorted(COMPARE)]
        outs = [getattr(mb, op)(x=a, y=b) for op in sorted(COMPARE)]
        return (*outs, mb.less(x=a, y=np_dtype(1)))  # a constant scalar operand

    *outs, scalar = _run(prog, a=x, b=y)
    for op, out, val in zip(sorted(COMPARE), outs, folded["v"], strict=True):
        assert out.dtype == np.bool_ and out.shape == (1, 3, 4, 5)
        np.testing.assert_array_equal(out, COMPARE[op](x, y), err_msg=op)
        np.testing.assert_array_equal(out, val, err_msg=op)
    np.testing.assert_array_equal(scalar, x < 1)


def test_logical_ops():
    x = RNG.random((2, 1, 4)) > 0.5
    y = RNG.random((3, 1)) > 0.5
    folded = {}

    @mb.program(input_specs=[_spec(x), _spec(y)], opset_version=IOS15)
    def prog(a, b):
        folded["v"] = [mb.logical_and(x=x, y=y).val, mb.logical_or(x=x, y=y).val,
                       mb.logical_xor(x=x, y=y).val, mb.logical_not(x=x).val]
        return (mb.logical_and(x=a, y=b), mb.logical_or(x=a, y=b), mb.logical_xor(x=a, y=b),
                mb.logical_not(x=a))

    outs = _run(prog, a=x, b=y)
    wants = [np.logical_and(x, y), np.logical_or(x, y), np.logical_xor(x, y), ~x]
    for out, want, val in zip(outs, wants, folded["v"], strict=True):
        assert out.dtype == np.bool_
        np.testing.assert_array_equal(out, want)
        np.testing.assert_array_equal(out, val)


_SPECIAL = [0.0, -0.0, 1.0, -1.0, 2.0, -2.0, 3.5, -3.5, 7.0, -7.0, 0.5, np.inf, -np.inf,
            np.nan, 1e-40, -1e-40, 1e30, -1e30]


def _divmod_operands(np_dtype):
    with np.errstate(over="ignore"):  # +-1e30 in fp16: +-inf
        sp = np.array(_SPECIAL, np_dtype)
    x = np.concatenate([np.repeat(sp, sp.size), RNG.uniform(-60, 60, 300).astype(np_dtype),
                        np.round(RNG.uniform(-20, 20, 100)).astype(np_dtype)])
    y = np.concatenate([np.tile(sp, sp.size), RNG.uniform(-8, 8, 300).astype(np_dtype),
                        np.round(RNG.uniform(-5, 5, 100)).astype(np_dtype)])
    return x[None], y[None]


@pytest.mark.parametrize("np_dtype", [np.float32, np.float16])
def test_floor_div_and_mod_float_follow_numpy_bit_for_bit(np_dtype):
    """Python's sign conventions: floor toward -inf, remainder with the divisor's sign; signed
    zeros, inf, NaN, zero and subnormal divisors exactly as NumPy (value inference)."""
    x, y = _divmod_operands(np_dtype)
    folded = {}

    @mb.program(input_specs=[_spec(x), _spec(y)], opset_version=IOS17)
    def prog(a, b):
        folded["d"] = mb.floor_div(x=x, y=y).val
        folded["m"] = mb.mod(x=x, y=y).val
        return mb.floor_div(x=a, y=b), mb.mod(x=a, y=b)

    div, mod = _run(prog, a=x, b=y)
    with np.errstate(all="ignore"):
        _same_bits(div, np.floor_divide(x, y))
        _same_bits(mod, np.remainder(x, y))
    _same_bits(div, folded["d"])
    _same_bits(mod, folded["m"])
    # the conventions, spelled out: -7 // 2 = -4, -7 % 2 = 1, 7 % -2 = -1, -4 % 2 = +0
    xs, ys = x[0].tolist(), y[0].tolist()
    i = xs.index(-7.0) + _SPECIAL.index(2.0)
    assert ys[i] == 2.0 and div[0, i] == -4 and mod[0, i] == 1
    i = xs.index(7.0) + _SPECIAL.index(-2.0)
    assert mod[0, i] == -1 and div[0, i] == -4
    i = xs.index(-2.0) + _SPECIAL.index(2.0)
    assert mod[0, i] == 0 and not np.signbit(mod[0, i]) and div[0, i] == -1


def test_floor_div_and_mod_int32():
    x = np.array([[-7, 7, -7, 7, 0, INT_MIN, INT_MIN, INT_MAX, -1, 5]], np.int32)
    y = np.array([[2, -2, -2, 2, -3, -1, 7, -7, 3, 5]], np.int32)
    folded = {}

    @mb.program(input_specs=[_spec(x), _spec(y)], opset_version=IOS15)
    def prog(a, b):
        folded["d"] = mb.floor_div(x=x, y=y).val
        folded["m"] = mb.mod(x=x, y=y).val
        return mb.floor_div(x=a, y=b), mb.mod(x=a, y=b)

    div, mod = _run(prog, a=x, b=y)
    with np.errstate(all="ignore"):
        _same_bits(div, np.floor_divide(x, y))  # INT_MIN // -1 wraps to INT_MIN
        _same_bits(mod, np.remainder(x, y))
    _same_bits(div, folded["d"].astype(np.int32))
    _same_bits(mod, folded["m"].astype(np.int32))
    np.testing.assert_array_equal(div[0, :4], [-4, -4, 3, 3])
    np.testing.assert_array_equal(mod[0, :4], [1, -1, -1, 1])
    for op in ("floor_div", "mod"):
        with pytest.raises(InterpreterError, match=f"{op} .*integer division by zero"):
            _run(_binary_program(op, x, y), a=x, b=np.where(y == 5, 0, y).astype(np.int32))


def _binary_program(op: str, x: np.ndarray, y: np.ndarray):
    @mb.program(input_specs=[_spec(x), _spec(y)], opset_version=IOS15)
    def prog(a, b):
        return getattr(mb, op)(x=a, y=b)

    return prog


@pytest.mark.parametrize("np_dtype", [np.float32, np.float16, np.int32, np.bool_])
def test_select_broadcasts_cond_a_b(np_dtype):
    cond = RNG.random((1, 1, 5)) > 0.5
    a = RNG.integers(-9, 9, (2, 3, 1)).astype(np_dtype)
    b = RNG.integers(-9, 9, (3, 5)).astype(np_dtype)
    folded = {}

    @mb.program(input_specs=[_spec(cond), _spec(a), _spec(b)], opset_version=IOS17)
    def prog(c, x, y):
        folded["v"] = mb.select(cond=cond, a=a, b=b).val
        return mb.select(cond=c, a=x, b=y)

    (out,) = _run(prog, c=cond, x=a, y=b)
    _same_bits(out, np.where(cond, a, b))
    _same_bits(out, folded["v"].astype(np_dtype))


def test_select_with_cond_wider_than_a_and_b_is_refused_by_name():
    @mb.program(input_specs=[mb.TensorSpec(shape=(1, 4))], opset_version=IOS15)
    def prog(x):  # coremltools declares shape (1, 4); np.where would give (2, 4)
        return mb.select(cond=np.ones((2, 4), bool), a=x, b=x)

    with pytest.raises(UnsupportedOpError, match=r"select.*cond of shape \(2, 4\)"):
        ReferenceModel.from_program(prog)


# ---------------------------------------------------------------------------------------------
# cumsum


def _cumsum_loop(x: np.ndarray, axis: int, exclusive: bool, reverse: bool, acc) -> np.ndarray:
    """Sequential running sums, one element at a time in ``acc`` precision."""
    x = np.moveaxis(x, axis, 0)
    n = x.shape[0]
    out = np.empty(x.shape, acc)
    order = range(n - 1, -1, -1) if reverse else range(n)
    total = np.zeros(x.shape[1:], acc)
    for i in order:
        if exclusive:
            out[i] = total
            total = (total + x[i].astype(acc)).astype(acc)
        else:
            total = (total + x[i].astype(acc)).astype(acc)
            out[i] = total
    return np.moveaxis(out, 0, axis)


@pytest.mark.parametrize("np_dtype", [np.float32, np.float16, np.int32])
@pytest.mark.parametrize(("axis", "exclusive", "reverse"), [
    (0, False, False), (-1, False, True), (1, True, False), (2, True, True), (None, False, False),
])
def test_cumsum(axis, exclusive, reverse, np_dtype):
    if np_dtype == np.int32:
        x = RNG.integers(-50, 50, (2, 3, 7)).astype(np.int32)
        x[0, 0, :3] = [INT_MAX, 1, 1]  # wraps, like NumPy's int64 sum cast back to int32
    else:
        x = (RNG.standard_normal((2, 3, 7)) * 10).astype(np_dtype)
    kw = {"exclusive": exclusive, "reverse": reverse} | ({} if axis is None else {"axis": axis})
    folded = {}

    @mb.program(input_specs=[_spec(x)], opset_version=IOS17)
    def prog(inp):
        if not exclusive:  # coremltools' exclusive value inference raises (its np.zeros call)
            folded["v"] = mb.cumsum(x=x, **kw).val
        return mb.cumsum(x=inp, **kw)

    (out,) = _run(prog, inp=x)
    ax = 0 if axis is None else axis
    if np_dtype == np.int32:
        want = _cumsum_loop(x, ax, exclusive, reverse, np.int64).astype(np.int32)
        _same_bits(out, want)
    else:  # fp32 accumulation, each output rounded once to the dtype (fp16: fp32 engine)
        want = _cumsum_loop(x.astype(np.float32), ax, exclusive, reverse, np.float32)
        _same_bits(out, want.astype(np_dtype))
        exact = _cumsum_loop(x.astype(np.float64), ax, exclusive, reverse, np.float64)
        np.testing.assert_allclose(out, exact, rtol=1e-5 if np_dtype == np.float32 else 2e-3,
                                   atol=1e-4 if np_dtype == np.float32 else 0.1)
    if "v" in folded and np_dtype != np.float16:  # NumPy's fp16 cumsum accumulates in fp16
        _same_bits(out, folded["v"].astype(np_dtype))
    if exclusive:
        first = np.take(out, [-1 if reverse else 0], axis=ax)
        assert not first.any()


def test_cumsum_of_a_scalar_is_refused_by_name():
    @mb.program(input_specs=[mb.TensorSpec(shape=(1, 4))], opset_version=IOS15)
    def prog(x):
        return mb.cumsum(x=mb.reduce_max(x=x), axis=-1)

    with pytest.raises(UnsupportedOpError, match="cumsum.*rank-0"):
        ReferenceModel.from_program(prog)


# ---------------------------------------------------------------------------------------------
# fill, fill_like, shape, range_1d, one_hot, non_zero, band_part


def test_fill_fill_like_and_shape():
    x = RNG.standard_normal((1, 2, 3)).astype(np.float32)

    @mb.program(input_specs=[_spec(x)], opset_version=IOS16)
    def prog(inp):
        h = mb.cast(x=inp, dtype="fp16")
        shp = mb.shape(x=h)
        return (shp, mb.shape(x=mb.less(x=inp, y=0.0)),
                mb.fill(shape=shp, value=np.float16(0.1)), mb.fill(shape=shp),
                mb.fill(shape=np.array([2, 0, 1], np.int32), value=np.int32(-4)),
                mb.fill(shape=shp, value=True),
                mb.fill_like(ref_tensor=inp, value=np.int32(7)), mb.fill_like(ref_tensor=h),
                mb.fill_like(ref_tensor=inp, value=np.float16(2.5)),
                mb.fill_like(ref_tensor=inp, value=False))

    shp, shp_bool, f16, f0, fint, fbool, like_i, like0, like16, like_b = _run(prog, inp=x)
    _same_bits(shp, np.array([1, 2, 3], np.int32))
    _same_bits(shp_bool, np.array([1, 2, 3], np.int32))
    _same_bits(f16, np.full((1, 2, 3), np.float16(0.1)))
    _same_bits(f0, np.zeros((1, 2, 3), np.float32))
    _same_bits(fint, np.full((2, 0, 1), -4, np.int32))
    _same_bits(fbool, np.ones((1, 2, 3), bool))
    _same_bits(like_i, np.full((1, 2, 3), 7, np.int32))
    _same_bits(like0, np.zeros((1, 2, 3), np.float32))  # value's dtype (fp32), not ref's
    _same_bits(like16, np.full((1, 2, 3), 2.5, np.float16))
    _same_bits(like_b, np.zeros((1, 2, 3), bool))


def test_fill_negative_dim_is_an_error():
    @mb.program(input_specs=[mb.TensorSpec(shape=(2,), dtype=types.int32)], opset_version=IOS15)
    def prog(s):
        return mb.fill(shape=s, value=1.0)

    model = ReferenceModel.from_program(prog)
    (ok,) = model.run({"s": np.array([2, 3], np.int32)}).values()
    _same_bits(ok, np.ones((2, 3), np.float32))
    with pytest.raises(InterpreterError, match="fill .*negative dimension"):
        model.run({"s": np.array([2, -3], np.int32)})


RANGES = [(0.0, 5.0, 1.0), (-4.586964, 12.902583, 7.1132183), (0.1, 1.0, 0.3),
          (26.454409, 35.21716, 0.6728358), (5.0, -3.0, -0.7), (3.0, 1.0, 0.5), (1.0, 1.0, 0.5),
          (-3.2026012, 35.106827, 16.885696), (1e-3, 2e-3, 1.7e-5)]


@pytest.mark.parametrize("np_dtype", [np.float32, np.float16])
def test_range_1d_float_is_numpys_arange(np_dtype):
    """Computed start/end/step (the op's inputs need not be constants): NumPy's arange, whose
    elements come from float64 arithmetic on the dtype's start + step (so not simply
    ``start + i * step`` in the dtype), and whose length is computed in the dtype."""
    spec = mb.TensorSpec(shape=(3,), dtype=types.fp32)

    @mb.program(input_specs=[spec], opset_version=IOS15)
    def prog(p):
        if np_dtype == np.float16:
            p = mb.cast(x=p, dtype="fp16")
        s, e, d = (mb.squeeze(x=mb.slice_by_size(x=p, begin=[i], size=[1])) for i in range(3))
        return mb.range_1d(start=s, end=e, step=d)

    model = ReferenceModel.from_program(prog)
    for start, end, step in RANGES:
        s, e, d = np_dtype(start), np_dtype(end), np_dtype(step)
        (out,) = model.run({"p": np.array([s, e, d], np.float32)}).values()
        _same_bits(out, np.arange(s, e, d).astype(np_dtype))
        _same_bits(out, _folded_range(s, e, d).astype(np_dtype))
        assert out.size == max(int(np.ceil(np_dtype(np_dtype(e - s) / d))), 0)


def _folded_range(s, e, d) -> np.ndarray:
    """coremltools' value inference of range_1d on constants."""
    folded = {}

    @mb.program(input_specs=[mb.TensorSpec(shape=(1,))], opset_version=IOS15)
    def prog(x):
        folded["v"] = mb.range_1d(start=s, end=e, step=d).val
        return x

    return np.asarray(folded["v"])


def test_range_1d_int32_and_zero_step():
    @mb.program(input_specs=[mb.TensorSpec(shape=(3,), dtype=types.int32)], opset_version=IOS15)
    def prog(p):
        s, e, d = (mb.squeeze(x=mb.slice_by_size(x=p, begin=[i], size=[1])) for i in range(3))
        return mb.range_1d(start=s, end=e, step=d)

    model = ReferenceModel.from_program(prog)
    for s, e, d in [(2, 11, 3), (2, -11, -3), (0, 10, 1), (5, 5, 1), (5, 0, 2), (-7, 7, 5)]:
        (out,) = model.run({"p": np.array([s, e, d], np.int32)}).values()
        _same_bits(out, np.arange(s, e, d, dtype=np.int32))
    with pytest.raises(InterpreterError, match="range_1d .*step is 0"):
        model.run({"p": np.array([0, 4, 0], np.int32)})


def _one_hot_ref(indices, size, axis, on, off):
    hit = indices[..., None] == np.arange(size)
    out = np.where(hit, on, off)
    return np.moveaxis(out, -1, axis % (indices.ndim + 1))


@pytest.mark.parametrize(("axis", "on", "off"), [
    (-1, None, None), (0, np.float32(2.5), np.float32(-1.0)), (1, np.float16(0.1), np.float16(3)),
    (-2, np.int32(9), np.int32(-9)), (2, True, False),
])
def test_one_hot(axis, on, off):
    indices = np.array([[0, 3, -1, 4], [5, 2, 2, -5]], np.int32)  # 4, 5, -1, -5: out of range
    kw = {"axis": axis} | ({} if on is None else {"on_value": on, "off_value": off})

    @mb.program(input_specs=[_spec(indices), mb.TensorSpec(shape=(1,), dtype=types.int32)],
                opset_version=IOS15)
    def prog(idx, size):
        return (mb.one_hot(indices=idx, one_hot_vector_size=4, **kw),
                mb.one_hot(indices=idx, one_hot_vector_size=mb.squeeze(x=size), **kw))

    static, dynamic = _run(prog, idx=indices, size=np.array([6], np.int32))
    on_, off_ = (np.int32(1), np.int32(0)) if on is None else (on, off)
    _same_bits(static, _one_hot_ref(indices, 4, axis, on_, off_))
    _same_bits(dynamic, _one_hot_ref(indices, 6, axis, on_, off_))
    # an out-of-range or negative index: all off_value along the one-hot axis
    assert not np.any(np.moveaxis(static, axis % 3, -1)[0, 2] == on_)


@pytest.mark.parametrize("np_dtype", [np.float32, np.float16, np.int32, np.bool_])
def test_non_zero(np_dtype):
    x = RNG.integers(-1, 2, (2, 3, 4)).astype(np_dtype)
    if np_dtype in (np.float32, np.float16):
        x[0, 0, :3] = [np.nan, -0.0, 0.0]
    folded = {}

    @mb.program(input_specs=[_spec(x)], opset_version=IOS17)
    def prog(inp):
        folded["v"] = mb.non_zero(x=x).val
        return mb.non_zero(x=inp)

    model = ReferenceModel.from_program(prog)
    (out,) = model.run({"inp": x}).values()
    _same_bits(out, np.argwhere(x).astype(np.int32))
    _same_bits(out, folded["v"].astype(np.int32))
    (none,) = model.run({"inp": np.zeros_like(x)}).values()
    assert none.shape == (0, 3) and none.dtype == np.int32


def _band_ref(x, lower, upper):
    m, n = np.indices(x.shape[-2:])
    band = ((lower < 0) | (m - n <= lower)) & ((upper < 0) | (n - m <= upper))
    return band.astype(x.dtype) * x


@pytest.mark.parametrize(("lower", "upper"), [(0, -1), (-1, 0), (0, 0), (1, 2), (-1, -1), (2, 0)])
@pytest.mark.parametrize("np_dtype", [np.float32, np.float16, np.int32, np.bool_])
def test_band_part(lower, upper, np_dtype):
    x = RNG.integers(-5, 6, (2, 4, 5)).astype(np_dtype)
    if np_dtype == np.float32:
        x[0, 3, 0], x[0, 0, 4] = np.inf, np.nan  # outside most bands: 0 * inf is NaN
    folded = {}

    @mb.program(input_specs=[_spec(x)], opset_version=IOS17)
    def prog(inp):
        folded["v"] = mb.band_part(x=x, lower=lower, upper=upper).val
        return mb.band_part(x=inp, lower=lower, upper=upper)

    (out,) = _run(prog, inp=x)
    with np.errstate(invalid="ignore"):
        want = _band_ref(x, lower, upper)
    _same_bits(out, want)  # a multiplication: -0.0 for negatives outside the band
    _same_bits(out, folded["v"].astype(np_dtype))


def test_band_part_of_a_vector_is_refused_by_name():
    @mb.program(input_specs=[mb.TensorSpec(shape=(4,))], opset_version=IOS15)
    def prog(x):
        return mb.band_part(x=x, lower=0, upper=0)

    with pytest.raises(UnsupportedOpError, match="band_part.*rank 1"):
        ReferenceModel.from_program(prog)


# ---------------------------------------------------------------------------------------------
# argsort and topk


def _stable_order(x, axis, ascending):
    """Ties in index order and NaN last, both directions (a stable sort of x or of -x)."""
    if ascending:
        return np.argsort(x, axis=axis, kind="stable")
    key = -x.astype(np.float64) if x.dtype.kind in "iu" else -x
    return np.argsort(key, axis=axis, kind="stable")


def _sortable(np_dtype, shape, ties):
    if ties:
        x = RNG.integers(-2, 3, shape).astype(np_dtype)
        if np_dtype == np.int32:
            x.reshape(-1)[:3] = [INT_MIN, INT_MAX, INT_MIN]
        else:
            x.reshape(-1)[:4] = [np.nan, -0.0, 0.0, np.nan]
        return x
    return RNG.permutation(np.prod(shape)).reshape(shape).astype(np_dtype) - 7


@pytest.mark.parametrize("np_dtype", [np.float32, np.float16, np.int32])
@pytest.mark.parametrize(("axis", "ascending"), [(-1, False), (1, True), (0, False), (2, True)])
def test_argsort(axis, ascending, np_dtype):
    distinct = _sortable(np_dtype, (2, 3, 9), ties=False)
    ties = _sortable(np_dtype, (2, 3, 9), ties=True)
    folded = {}

    @mb.program(input_specs=[_spec(distinct)], opset_version=IOS15)
    def prog(inp):
        folded["v"] = mb.argsort(x=distinct, axis=axis, ascending=ascending).val
        return mb.argsort(x=inp, axis=axis, ascending=ascending)

    model = ReferenceModel.from_program(prog)
    (out,) = model.run({"inp": distinct}).values()
    _same_bits(out, _stable_order(distinct, axis, ascending).astype(np.int32))
    _same_bits(out, folded["v"].astype(np.int32))  # no ties: NumPy's sort order is defined
    (out,) = model.run({"inp": ties}).values()
    _same_bits(out, _stable_order(ties, axis, ascending).astype(np.int32))


@pytest.mark.parametrize("np_dtype", [np.float32, np.float16, np.int32])
@pytest.mark.parametrize(("k", "axis", "ascending"), [(1, -1, False), (3, 1, True), (9, 2, False),
                                                      (2, 0, True), (0, -1, False)])
def test_topk_ios15(k, axis, ascending, np_dtype):
    distinct = _sortable(np_dtype, (2, 3, 9), ties=False)
    ties = _sortable(np_dtype, (2, 3, 9), ties=True)
    kw = {"k": k, "axis": axis, "ascending": ascending}
    folded = {}

    @mb.program(input_specs=[_spec(distinct)], opset_version=IOS15)
    def prog(inp):
        folded["v"] = [v.val for v in mb.topk(x=distinct, **kw)]
        return mb.topk(x=inp, **kw)

    model = ReferenceModel.from_program(prog)
    for x in (distinct, ties):
        values, indices = model.run({"inp": x}).values()
        want = np.take(_stable_order(x, axis, ascending), np.arange(k), axis=axis)
        _same_bits(indices, want.astype(np.int32))
        _same_bits(values, np.take_along_axis(x, want, axis=axis))
    values, indices = model.run({"inp": distinct}).values()
    _same_bits(values, folded["v"][0].astype(np_dtype))
    _same_bits(indices, folded["v"][1].astype(np.int32))


def test_topk_ios16_sort_and_return_indices_and_ios17_dtypes():
    x = _sortable(np.float32, (1, 4, 6), ties=True)

    @mb.program(input_specs=[_spec(x)], opset_version=IOS16)
    def prog16(inp):
        only_values = mb.topk(x=inp, k=3, return_indices=False)
        values, indices = mb.topk(x=inp, k=2, axis=1, ascending=True, sort=False)
        return only_values, values, indices

    only_values, values, indices = _run(prog16, inp=x)
    want3 = np.take(_stable_order(x, -1, False), np.arange(3), axis=-1)
    _same_bits(only_values, np.take_along_axis(x, want3, axis=-1))
    want2 = np.take(_stable_order(x, 1, True), np.arange(2), axis=1)
    _same_bits(indices, want2.astype(np.int32))  # sort=False: sorted order all the same
    _same_bits(values, np.take_along_axis(x, want2, axis=1))

    q = RNG.integers(0, 6, (1, 4, 6)).astype(np.float32)
    q[0, 0, :2] = [255, 0]

    @mb.program(input_specs=[_spec(q)], opset_version=IOS17)
    def prog17(inp):
        u8 = mb.cast(x=inp, dtype="uint8")
        i8 = mb.cast(x=mb.sub(x=inp, y=3.0), dtype="int8")
        return (*mb.topk(x=u8, k=np.int8(3), output_indices_dtype="uint16"),
                *mb.topk(x=i8, k=np.int16(2), axis=1, ascending=True))

    u_val, u_idx, i_val, i_idx = _run(prog17, inp=q)
    u8 = q.astype(np.uint8)
    want = np.take(_stable_order(u8, -1, False), np.arange(3), axis=-1)
    assert u_val.dtype == np.uint8 and u_idx.dtype == np.uint16
    np.testing.assert_array_equal(u_idx, want)  # 255 first: descending without -x wrapping
    np.testing.assert_array_equal(u_val, np.take_along_axis(u8, want, axis=-1))
    i8 = (q - 3).astype(np.int8)
    want = np.take(_stable_order(i8, 1, True), np.arange(2), axis=1)
    assert i_val.dtype == np.int8 and i_idx.dtype == np.int32
    np.testing.assert_array_equal(i_idx, want)
    np.testing.assert_array_equal(i_val, np.take_along_axis(i8, want, axis=1))


def test_topk_negative_k_is_refused_by_name():
    @mb.program(input_specs=[mb.TensorSpec(shape=(1, 4))], opset_version=IOS17)
    def prog(x):  # "all elements" in the iOS17 docs, but coremltools declares a dim of -1
        return mb.topk(x=x, k=-1)

    with pytest.raises(UnsupportedOpError, match="topk.*k -1"):
        ReferenceModel.from_program(prog)


# ---------------------------------------------------------------------------------------------
# reverse and reverse_sequence


@pytest.mark.parametrize("axes", [None, [-1], [0, 2], [1, 1, 2], [-3, 1, 2]])
@pytest.mark.parametrize("np_dtype", [np.float16, np.int32, np.bool_])
def test_reverse(axes, np_dtype):
    x = RNG.integers(-9, 9, (2, 3, 4)).astype(np_dtype)
    kw = {} if axes is None else {"axes": np.array(axes, np.int32)}
    folded = {}

    @mb.program(input_specs=[_spec(x)], opset_version=IOS17)
    def prog(inp):
        folded["v"] = mb.reverse(x=x, **kw).val
        return mb.reverse(x=inp, **kw)

    (out,) = _run(prog, inp=x)
    want = x
    for ax in range(3) if axes is None else axes:  # np.flip per listed axis: twice is none
        want = np.flip(want, ax)
    _same_bits(out, want)
    _same_bits(out, folded["v"].astype(np_dtype))


def test_reverse_uint8_ios17():
    x = RNG.integers(0, 255, (1, 3, 4)).astype(np.float32)

    @mb.program(input_specs=[_spec(x)], opset_version=IOS17)
    def prog(inp):
        return mb.reverse(x=mb.cast(x=inp, dtype="uint8"), axes=[-1])

    (out,) = _run(prog, inp=x)
    _same_bits(out, x.astype(np.uint8)[..., ::-1])


def _reverse_sequence_ref(x, lengths, seq_axis, batch_axis):
    out = x.copy()
    for b, n in enumerate(lengths):
        idx = [slice(None)] * x.ndim
        idx[batch_axis] = b
        idx[seq_axis] = slice(0, n)
        part = out[tuple(idx)]
        out[tuple(idx)] = np.flip(part, axis=seq_axis - (seq_axis > batch_axis))
    return out


@pytest.mark.parametrize(("seq_axis", "batch_axis"), [(1, 0), (0, 1), (-1, 1), (2, -3), (1, 2)])
def test_reverse_sequence(seq_axis, batch_axis):
    x = RNG.standard_normal((3, 4, 5)).astype(np.float32)
    nb, ns = x.shape[batch_axis], x.shape[seq_axis]
    lengths = RNG.integers(0, ns + 1, nb).astype(np.int32)
    lengths[0], lengths[-1] = ns, 0

    @mb.program(input_specs=[_spec(x), _spec(lengths)], opset_version=IOS15)
    def prog(inp, lens):
        return mb.reverse_sequence(x=inp, lengths=lens, seq_axis=seq_axis, batch_axis=batch_axis)

    model = ReferenceModel.from_program(prog)
    (out,) = model.run({"inp": x, "lens": lengths}).values()
    _same_bits(out, _reverse_sequence_ref(x, lengths.tolist(), seq_axis % 3, batch_axis % 3))
    bad = lengths.copy()
    bad[0] = ns + 1
    with pytest.raises(InterpreterError, match="reverse_sequence .*lengths.*outside"):
        model.run({"inp": x, "lens": bad})


def test_reverse_sequence_int16_lengths_ios17():
    x = RNG.integers(-9, 9, (2, 5)).astype(np.int32)

    @mb.program(input_specs=[_spec(x)], opset_version=IOS17)
    def prog(inp):
        return mb.reverse_sequence(x=inp, lengths=np.array([3, 5], np.int16), seq_axis=1,
                                   batch_axis=0)

    (out,) = _run(prog, inp=x)
    _same_bits(out, _reverse_sequence_ref(x, [3, 5], 1, 0))


def test_reverse_sequence_with_equal_axes_is_refused_by_name():
    @mb.program(input_specs=[mb.TensorSpec(shape=(3, 4))], opset_version=IOS15)
    def prog(x):
        return mb.reverse_sequence(x=x, lengths=np.array([1, 2, 3], np.int32), seq_axis=-2,
                                   batch_axis=0)

    with pytest.raises(UnsupportedOpError, match="reverse_sequence.*seq_axis and batch_axis"):
        ReferenceModel.from_program(prog)


# ---------------------------------------------------------------------------------------------
# batches and a saved package


def test_batched_runs_equal_single_runs():
    """N samples through a batch-1 program: ops with batch rules take them in one call, the
    rest per sample; either way the bits of N single runs."""
    x = RNG.standard_normal((4, 3, 6)).astype(np.float32)
    x[0, 0, :2] = [-0.0, 0.0]

    @mb.program(input_specs=[mb.TensorSpec(shape=(1, 3, 6))], opset_version=IOS16)
    def prog(inp):
        gt = mb.greater(x=inp, y=0.1)
        sel = mb.select(cond=gt, a=inp, b=mb.sin(x=inp))
        cs = mb.cumsum(x=sel, axis=2, reverse=True)
        band = mb.band_part(x=cs, lower=1, upper=0)
        thr = mb.threshold(x=band, alpha=np.float32(-0.0))
        hot = mb.one_hot(indices=mb.cast(x=mb.abs(x=inp), dtype="int32"),
                         one_hot_vector_size=3, axis=-1)
        rev = mb.reverse_sequence(x=thr, lengths=np.array([6, 2, 0], np.int32), seq_axis=2,
                                  batch_axis=1)
        return (mb.topk(x=rev, k=2, axis=-1, return_indices=False), mb.argsort(x=thr, axis=1),
                mb.floor_div(x=inp, y=0.3), mb.mod(x=inp, y=-0.3), hot,
                mb.fill_like(ref_tensor=inp, value=np.int32(2)),
                mb.logical_not(x=mb.equal(x=mb.round(x=inp), y=0.0)))

    model = ReferenceModel.from_program(prog)
    assert model.batch_plan.vectorised
    batched = model.run({"inp": x})
    for i in range(4):
        single = model.run({"inp": x[i : i + 1]})
        for name, value in batched.items():
            _same_bits(value[i : i + 1], single[name])


def test_saved_package_runs_math_ops(tmp_path):
    x = RNG.standard_normal((1, 3, 5)).astype(np.float32)

    @mb.program(input_specs=[mb.TensorSpec(shape=x.shape)], opset_version=IOS16)
    def prog(inp):
        cond = mb.greater_equal(x=inp, y=0.0)
        sel = mb.select(cond=cond, a=mb.cos(x=inp), b=mb.mod(x=inp, y=0.5))
        cs = mb.cumsum(x=sel, axis=-1, exclusive=True)
        values, indices = mb.topk(x=cs, k=2, axis=-1)
        return mb.add(x=values, y=0.0, name="values"), mb.cast(x=indices, dtype="int32",
                                                                name="indices")

    model = saved(prog, tmp_path, target=IOS16)
    assert [t for t, _ in model.operations][:5] == ["greater_equal", "cos", "mod", "select",
                                                    "cumsum"]
    values, indices = model.run({"inp": x}).values()
    sel = np.where(x >= 0, np.cos(x.astype(np.float64)), np.remainder(x, np.float32(0.5)))
    cs = np.concatenate([np.zeros((1, 3, 1)), np.cumsum(sel, axis=-1)[..., :-1]], axis=-1)
    order = np.argsort(-cs, axis=-1, kind="stable")[..., :2]
    np.testing.assert_array_equal(indices, order)
    np.testing.assert_allclose(values, np.take_along_axis(cs, order, axis=-1), rtol=1e-5,
                               atol=1e-6)
