"""Gather / scatter family, slice_update, reshape_like and iOS18 states (ops_index,
ops_tensor), on MIL programs built directly, fp32 and fp16: against NumPy written from the op
definitions (scatters applied one index at a time, in order, as the module docstring
describes), and against coremltools' value inference (the op on constants) where it has one.
Core ML's own expected outputs for these ops are checked by test_coremltools_op_suite.py."""

from __future__ import annotations

import numpy as np
import pytest

from mnv1_coreml.mil import InterpreterError, ReferenceModel
from mnv1_coreml.mil.errors import PredictionError
from mnv1_coreml.mil.loader import ct

from .test_mil_ops import saved

mb = ct.converters.mil.Builder
types = ct.converters.mil.mil.types
IOS15, IOS16, IOS17, IOS18 = ct.target.iOS15, ct.target.iOS16, ct.target.iOS17, ct.target.iOS18
RNG = np.random.default_rng(99)
DTYPES = {"fp32": (np.float32, types.fp32), "fp16": (np.float16, types.fp16)}


def _run(build, arrays: dict[str, np.ndarray], target=IOS15) -> np.ndarray:
    specs = []
    for arr in arrays.values():
        dtype = {np.dtype(np.float32): types.fp32, np.dtype(np.float16): types.fp16,
                 np.dtype(np.int32): types.int32}[arr.dtype]
        specs.append(mb.TensorSpec(shape=arr.shape, dtype=dtype))
    names = list(arrays)

    def call(*inputs):
        return build(*inputs)  # in the order of ``arrays``

    # mb.program reads the parameter names: one signature per arity
    fns = {2: lambda a0, a1: call(a0, a1), 3: lambda a0, a1, a2: call(a0, a1, a2)}
    prog = mb.program(input_specs=specs, opset_version=target)(fns[len(specs)])
    model = ReferenceModel.from_program(prog)
    (out,) = model.run({f"a{i}": arrays[n] for i, n in enumerate(names)}).values()
    return out


def _folded(build, target=IOS15) -> np.ndarray:
    """coremltools' value inference of ``build()`` on constants."""
    @mb.program(input_specs=[mb.TensorSpec(shape=(1,))], opset_version=target)
    def prog(x):
        return build(), x

    return prog.functions["main"].outputs[0].val


def _rand(shape, dtype: str) -> np.ndarray:
    return RNG.standard_normal(shape).astype(DTYPES[dtype][0])


# --------------------------------------------------------------------------------------------
# gathers


@pytest.mark.parametrize("dtype", sorted(DTYPES))
@pytest.mark.parametrize("axis, batch_dims", [(0, 0), (-1, 0), (3, 1), (2, 2), (1, 1)])
def test_gather_batch_dims_matches_value_inference(dtype, axis, batch_dims):
    x = _rand((2, 3, 4, 5), dtype)
    shape = list(x.shape[:batch_dims]) + [3, 2]
    idx = RNG.integers(-x.shape[axis], x.shape[axis], size=shape).astype(np.int32)
    out = _run(lambda x_in, idx_in: mb.gather(x=x_in, indices=idx_in, axis=axis,
                                              batch_dims=batch_dims),
               {"x": x, "idx": idx}, IOS16)
    want = _folded(lambda: mb.gather(x=x, indices=idx, axis=axis, batch_dims=batch_dims), IOS16)
    assert out.dtype == x.dtype
    np.testing.assert_array_equal(out, want)


@pytest.mark.parametrize("dtype", sorted(DTYPES))
@pytest.mark.parametrize("axis", [0, 1, -1])
def test_gather_along_axis_matches_take_along_axis(dtype, axis):
    x = _rand((3, 4, 5), dtype)
    shape = list(x.shape)
    shape[axis] = 6
    idx = RNG.integers(-x.shape[axis], x.shape[axis], size=shape).astype(np.int32)
    out = _run(lambda x_in, idx_in: mb.gather_along_axis(x=x_in, indices=idx_in, axis=axis),
               {"x": x, "idx": idx})
    np.testing.assert_array_equal(out, np.take_along_axis(x, idx % x.shape[axis], axis))


@pytest.mark.parametrize("dtype", sorted(DTYPES))
@pytest.mark.parametrize("batch_dims, depth", [(0, 1), (0, 3), (1, 1), (1, 2), (2, 1)])
def test_gather_nd(dtype, batch_dims, depth):
    x = _rand((2, 3, 4, 5), dtype)
    lead = list(x.shape[:batch_dims])
    idx = np.stack([RNG.integers(0, x.shape[batch_dims + j], size=[*lead, 3])
                    for j in range(depth)], axis=-1).astype(np.int32)
    out = _run(lambda x_in, idx_in: mb.gather_nd(x=x_in, indices=idx_in, batch_dims=batch_dims),
               {"x": x, "idx": idx}, IOS16)
    want = np.empty([*lead, 3, *x.shape[batch_dims + depth :]], x.dtype)
    for pos in np.ndindex(*lead, 3):
        want[pos] = x[(*pos[:batch_dims], *idx[pos])]
    np.testing.assert_array_equal(out, want)


def test_gather_out_of_range_rules():
    x = np.arange(4, dtype=np.float32)[None]
    idx = np.array([[1, 4]], np.int32)

    def build(target, **kw):
        return lambda x_in, idx_in: mb.gather_along_axis(x=x_in, indices=idx_in, axis=1, **kw)

    with pytest.raises(PredictionError, match="out of range") as info:  # iOS15: always checked
        _run(build(IOS15), {"x": x, "idx": idx})
    assert isinstance(info.value, RuntimeError)  # what coremltools' predict raises
    with pytest.raises(PredictionError):
        _run(build(IOS17, validate_indices=True), {"x": x, "idx": idx}, IOS17)
    # unchecked (iOS17, validate_indices=False): "undefined but memory safe"; here 0
    out = _run(build(IOS17), {"x": x, "idx": idx}, IOS17)
    np.testing.assert_array_equal(out, [[1.0, 0.0]])


# --------------------------------------------------------------------------------------------
# scatters

MODES = {"update": lambda old, new: new, "add": np.add, "sub": np.subtract,
         "mul": np.multiply, "div": np.divide, "max": np.maximum, "min": np.minimum}


def _sequential(data: np.ndarray, targets: list, updates: list, mode: str) -> np.ndarray:
    """One update at a time, in order, each rounded to the data's dtype."""
    out = data.copy()
    for where, new in zip(targets, updates, strict=True):
        out[where] = MODES[mode](out[where].astype(np.float32),
                                 np.asarray(new, np.float32)).astype(data.dtype)
    return out


@pytest.mark.parametrize("dtype", sorted(DTYPES))
@pytest.mark.parametrize("mode", sorted(MODES))
@pytest.mark.parametrize("axis", [0, 1])
def test_scatter_with_repeated_indices(dtype, mode, axis):
    data = _rand((4, 5, 2), dtype)
    idx = np.array([1, 3, 1, 1, 0], np.int32)  # repeats: the order matters for update/div
    shape = list(data.shape)
    shape[axis] = len(idx)
    updates = (_rand(shape, dtype) + 2.0).astype(data.dtype)
    out = _run(lambda data_in, idx_in, upd_in: mb.scatter(data=data_in, indices=idx_in,
                                                          updates=upd_in, axis=axis, mode=mode),
               {"data": data, "idx": idx, "upd": updates})
    moved_upd = np.moveaxis(updates, axis, 0)
    want = np.moveaxis(_sequential(np.moveaxis(data, axis, 0), list(idx), list(moved_upd), mode),
                       0, axis)
    assert out.dtype == data.dtype
    np.testing.assert_array_equal(out, want)


@pytest.mark.parametrize("dtype", sorted(DTYPES))
@pytest.mark.parametrize("mode", ["update", "add", "mul"])
def test_scatter_along_axis(dtype, mode):
    data = _rand((3, 4), dtype)
    idx = RNG.integers(-3, 3, size=(5, 4)).astype(np.int32)
    updates = _rand((5, 4), dtype)
    out = _run(lambda d, i, u: mb.scatter_along_axis(data=d, indices=i, updates=u, axis=0,
                                                     mode=mode),
               {"data": data, "idx": idx, "upd": updates})
    targets = [(idx[r, c] % 3, c) for r in range(5) for c in range(4)]
    want = _sequential(data, targets, [updates[r, c] for r in range(5) for c in range(4)], mode)
    np.testing.assert_array_equal(out, want)
    if mode == "update":  # coremltools' value inference: np.put_along_axis
        folded = _folded(lambda: mb.scatter_along_axis(data=data, indices=idx % 3,
                                                       updates=updates, axis=0, mode=mode))
        np.testing.assert_array_equal(out, folded)


@pytest.mark.parametrize("dtype", sorted(DTYPES))
@pytest.mark.parametrize("mode", ["update", "add", "sub", "max"])
def test_scatter_nd(dtype, mode):
    data = _rand((3, 4, 2), dtype)
    idx = np.array([[[0, 1], [2, 3]], [[0, 1], [1, 0]]], np.int32)  # (0, 1) twice
    updates = _rand((2, 2, 2), dtype)
    out = _run(lambda d, i, u: mb.scatter_nd(data=d, indices=i, updates=u, mode=mode),
               {"data": data, "idx": idx, "upd": updates})
    flat = idx.reshape(-1, 2)
    want = _sequential(data, [tuple(t) for t in flat], list(updates.reshape(-1, 2)), mode)
    np.testing.assert_array_equal(out, want)


def test_ios17_scatter_out_of_range_rules():
    """iOS17: negative indices are out of bound; unchecked ones are dropped, checked ones
    fail the prediction; iOS15 wraps negatives."""
    data = np.array([[1, 2, 3], [4, 5, 6]], np.float32)
    updates = np.array([[5, 6, 7], [8, 9, 10]], np.float32)
    idx = np.array([-1, 0], np.int32)

    def build(**kw):
        return lambda d, i, u: mb.scatter(data=d, indices=i, updates=u, mode="add", **kw)

    feeds = {"data": data, "idx": idx, "upd": updates}
    np.testing.assert_array_equal(_run(build(), feeds, IOS17), [[9, 11, 13], [4, 5, 6]])
    with pytest.raises(PredictionError):
        _run(build(validate_indices=True), feeds, IOS17)
    np.testing.assert_array_equal(_run(build(), feeds, IOS15), [[9, 11, 13], [9, 11, 13]])


# --------------------------------------------------------------------------------------------
# slice_update, reshape_like


@pytest.mark.parametrize("dtype", sorted(DTYPES))
@pytest.mark.parametrize("begin, end, stride, squeeze", [
    ([0, 1, 0], [2, 4, 5], [1, 2, 1], [False] * 3),
    ([1, 3, 4], [0, 0, 0], [-1, -1, -2], [False] * 3),
    ([1, 2, 0], [2, 3, 5], [1, 1, 1], [True, False, False]),
])
def test_slice_update_matches_value_inference(dtype, begin, end, stride, squeeze):
    x = _rand((2, 4, 5), dtype)
    sliced = _folded(lambda: mb.slice_by_index(x=x, begin=begin, end=end, stride=stride,
                                               squeeze_mask=squeeze), IOS18)
    update = _rand(sliced.shape, dtype)

    def build(x_in, upd_in):
        return mb.slice_update(x=x_in, update=upd_in, begin=np.array(begin, np.int32),
                               end=np.array(end, np.int32), stride=np.array(stride, np.int32),
                               squeeze_mask=squeeze)

    out = _run(build, {"x": x, "upd": update}, IOS18)
    want = _folded(lambda: mb.slice_update(x=x, update=update, begin=np.array(begin, np.int32),
                                           end=np.array(end, np.int32),
                                           stride=np.array(stride, np.int32),
                                           squeeze_mask=squeeze), IOS18)
    np.testing.assert_array_equal(out, want)
    assert not np.array_equal(out, x)


def test_reshape_like():
    x = np.arange(24, dtype=np.float32).reshape(4, 6)
    r0, r1 = np.zeros((2, 3, 9), np.float32), np.zeros((7, 4), np.float32)

    def build(x_in, r0_in, r1_in):
        return mb.reshape_like(x=x_in, ref_tensors=(r0_in, r1_in), begins=(0, 1), ends=(2, 0),
                               end_masks=(False, True))

    out = _run(build, {"x": x, "r0": r0, "r1": r1}, IOS16)
    np.testing.assert_array_equal(out, x.reshape(2, 3, 4))


# --------------------------------------------------------------------------------------------
# states


def test_states_persist_between_predictions(tmp_path):
    @mb.program(input_specs=[mb.StateTensorSpec((2, 3), dtype=types.fp16),
                             mb.TensorSpec((2, 3), dtype=types.fp16)], opset_version=IOS18)
    def prog(acc, x):
        total = mb.add(x=mb.read_state(input=acc), y=x)
        mb.coreml_update_state(state=acc, value=total)
        return mb.mul(x=total, y=np.float16(2))

    model = saved(prog, tmp_path, IOS18)
    state = model.make_state()
    assert state["acc"].dtype == np.float16 and not state["acc"].any()
    x = np.full((2, 3), 1.5, np.float16)
    outs = [next(iter(model.predict({"x": x}, state=state).values())) for _ in range(3)]
    for i, out in enumerate(outs, start=1):
        np.testing.assert_array_equal(out, np.full((2, 3), 3.0 * i, np.float16))
    np.testing.assert_array_equal(state["acc"], np.full((2, 3), 4.5, np.float16))
    with pytest.raises(InterpreterError, match="make_state"):
        model.predict({"x": x})
    fresh = model.make_state()  # a new state starts from zeros again
    np.testing.assert_array_equal(next(iter(model.predict({"x": x}, state=fresh).values())),
                                  np.full((2, 3), 3.0, np.float16))
