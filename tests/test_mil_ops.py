"""Each interpreter kernel against an independent reference (torch, NumPy or hand-derived).

Most tests build a tiny MIL program with ``mb.program``, convert it with ``ct.convert`` (empty
pass pipeline, so the op under test survives as written), save the ``.mlpackage``, load it back
through the interpreter's loader and run it: the whole path a real model takes.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mnv1_coreml.errors import UserError
from mnv1_coreml.mil import InterpreterError, ReferenceModel, UnsupportedOpError, supported_ops
from mnv1_coreml.mil.loader import ct
from mnv1_coreml.mil.ops import same_pads

mb = ct.converters.mil.Builder  # coremltools comes through the interpreter's quiet import
types = ct.converters.mil.mil.types

RNG = np.random.default_rng(1234)
IOS15, IOS16, IOS17, IOS18 = ct.target.iOS15, ct.target.iOS16, ct.target.iOS17, ct.target.iOS18


def rand(*shape: int, scale: float = 1.0) -> np.ndarray:
    return (RNG.standard_normal(shape) * scale).astype(np.float32)


def saved(prog, tmp_path, target=IOS15, name: str = "m") -> ReferenceModel:
    """Convert a MIL program to an ML Program package, save it and load it back."""
    mlmodel = ct.convert(
        prog,
        convert_to="mlprogram",
        pass_pipeline=ct.PassPipeline.EMPTY,
        compute_precision=ct.precision.FLOAT32,
        minimum_deployment_target=target,
        skip_model_load=True,
    )
    path = tmp_path / f"{name}.mlpackage"
    mlmodel.save(str(path))
    return ReferenceModel.load(path)


def run1(model: ReferenceModel, **feeds: np.ndarray) -> np.ndarray:
    """The single output of a one-output program."""
    (out,) = model.run(feeds).values()
    return out


def op_types(model: ReferenceModel) -> list[str]:
    return [t for t, _ in model.operations]


def program(shapes, target=IOS15, dtype=types.fp32):
    specs = [mb.TensorSpec(shape=s, dtype=dtype) for s in shapes]
    return mb.program(input_specs=specs, opset_version=target)


# ---------------------------------------------------------------------------------------------
# elementwise


BINARY = {
    "add": np.add,
    "sub": np.subtract,
    "mul": np.multiply,
    "real_div": np.divide,
    "maximum": np.maximum,
    "minimum": np.minimum,
}


@pytest.mark.parametrize("op", sorted(BINARY))
def test_binary_broadcast_with_const_and_dynamic(op, tmp_path):
    c = rand(3, 1, 1) + 3.0  # away from zero for real_div

    @program([(1, 3, 4, 5), (1, 1, 4, 5)])
    def prog(x, y):
        fn = getattr(mb, op)
        return fn(x=fn(x=x, y=c), y=y)

    x, y = rand(1, 3, 4, 5), rand(1, 1, 4, 5) + 4.0
    model = saved(prog, tmp_path)
    assert op_types(model) == [op, op]
    expected = BINARY[op](BINARY[op](x, c), y)
    np.testing.assert_allclose(run1(model, x=x, y=y), expected, rtol=1e-6, atol=1e-6)


def test_fp16_values_are_rounded_after_every_op(tmp_path):
    """An fp16 var holds fp16 values: each op computes in fp32 and rounds once to fp16."""
    c = np.float16(1.0 / 3.0)

    @program([(2, 8)])
    def prog(x):
        h = mb.cast(x=x, dtype="fp16", name="h")
        s = mb.add(x=h, y=np.full((8,), c, np.float16), name="s")
        p = mb.mul(x=s, y=np.float16(3.0), name="p")
        d = mb.real_div(x=p, y=np.float16(7.0), name="d")
        return mb.cast(x=d, dtype="fp32", name="out")

    x = rand(2, 8, scale=100.0)
    model = saved(prog, tmp_path)
    res = model.run({"x": x}, outputs=["h", "s", "p", "d", "out"])
    h = x.astype(np.float16)
    s = h + c  # NumPy float16 ufuncs compute in fp32 and round once, the documented semantics
    p = s * np.float16(3.0)
    d = p / np.float16(7.0)
    for name, want in (("h", h), ("s", s), ("p", p), ("d", d)):
        assert res[name].dtype == np.float16
        np.testing.assert_array_equal(res[name], want)
    assert res["out"].dtype == np.float32
    np.testing.assert_array_equal(res["out"], d.astype(np.float32))
    # ...and not what fp32 arithmetic without intermediate rounding gives
    unrounded = ((h.astype(np.float32) + np.float32(c)) * 3.0 / 7.0).astype(np.float16)
    assert not np.array_equal(unrounded, d)


def test_cast_to_int32_and_bool_truncates(tmp_path):
    @program([(6,)])
    def prog(x):
        return mb.cast(x=x, dtype="int32"), mb.cast(x=x, dtype="bool")

    x = np.array([-2.7, -0.5, 0.0, 0.4, 1.9, 3.0], np.float32)
    model = saved(prog, tmp_path)
    i32, b = model.run({"x": x}).values()
    np.testing.assert_array_equal(i32, np.array([-2, 0, 0, 0, 1, 3], np.int32))
    assert i32.dtype == np.int32
    np.testing.assert_array_equal(b, x != 0)


# ---------------------------------------------------------------------------------------------
# activations


def test_relu_relu6_clip(tmp_path):
    @program([(2, 3, 4)])
    def prog(x):
        return mb.relu(x=x), mb.relu6(x=x), mb.clip(x=x, alpha=-0.5, beta=0.75)

    x = rand(2, 3, 4, scale=5.0)
    model = saved(prog, tmp_path)
    r, r6, c = model.run({"x": x}).values()
    np.testing.assert_array_equal(r, np.maximum(x, 0))
    np.testing.assert_array_equal(r6, np.clip(x, 0, 6))
    np.testing.assert_array_equal(c, np.clip(x, -0.5, 0.75))
    assert sorted(op_types(model)) == ["clip", "relu", "relu6"]


@pytest.mark.parametrize("axis", [-1, 1, 0])
def test_softmax(axis, tmp_path):
    @program([(2, 5, 3)])
    def prog(x):
        return mb.softmax(x=x, axis=axis)

    x = rand(2, 5, 3, scale=3.0)
    out = run1(saved(prog, tmp_path), x=x)
    np.testing.assert_allclose(out, torch.softmax(torch.from_numpy(x), axis).numpy(), atol=1e-7)


# ---------------------------------------------------------------------------------------------
# conv


def test_same_pads_follow_tensorflow_same():
    # out = ceil(in / stride); the odd pixel goes after for "same", before for "same_lower"
    assert same_pads("same", [8], [3], [2], [1]) == [(0, 1)]
    assert same_pads("same_lower", [8], [3], [2], [1]) == [(1, 0)]
    assert same_pads("same", [7], [3], [2], [1]) == [(1, 1)]
    assert same_pads("same", [6], [4], [1], [1]) == [(1, 2)]
    assert same_pads("same_lower", [6], [4], [1], [1]) == [(2, 1)]
    assert same_pads("same", [6], [3], [1], [2]) == [(2, 2)]  # dilated kernel spans 5
    assert same_pads("same", [5], [1], [2], [1]) == [(0, 0)]


# (pad_type, custom pad, kernel, stride, dilation, groups, size, F.pad (l, r, t, b), bias)
CONV_CASES = [
    ("valid", None, 3, 1, 1, 1, 8, (0, 0, 0, 0), True),
    ("valid", None, 3, 2, 1, 1, 9, (0, 0, 0, 0), False),
    ("custom", [1, 1, 1, 1], 3, 1, 1, 1, 8, (1, 1, 1, 1), True),
    ("custom", [1, 2, 0, 1], 3, 2, 1, 1, 8, (0, 1, 1, 2), False),  # asymmetric, H != W pads
    ("same", None, 3, 2, 1, 1, 8, (0, 1, 0, 1), True),  # TF SAME, stride 2, even input
    ("same", None, 3, 2, 1, 1, 7, (1, 1, 1, 1), False),
    ("same", None, 4, 1, 1, 1, 6, (1, 2, 1, 2), True),  # even kernel
    ("same", None, 3, 1, 2, 1, 6, (2, 2, 2, 2), False),  # dilation
    ("same_lower", None, 3, 2, 1, 1, 8, (1, 0, 1, 0), True),
    ("same_lower", None, 4, 1, 1, 1, 6, (2, 1, 2, 1), False),
    ("custom", [1, 1, 1, 1], 3, 2, 1, 4, 8, (1, 1, 1, 1), True),  # depthwise (groups = C)
    ("same", None, 3, 1, 1, 2, 6, (1, 1, 1, 1), False),  # grouped
]


@pytest.mark.parametrize("case", CONV_CASES, ids=lambda c: f"{c[0]}-k{c[2]}s{c[3]}d{c[4]}g{c[5]}")
def test_conv_pad_types(case, tmp_path):
    pad_type, pad, k, stride, dil, groups, size, torch_pad, with_bias = case
    cin, cout = 4, 8
    w = rand(cout, cin // groups, k, k)
    b = rand(cout) if with_bias else None
    kwargs = dict(weight=w, strides=[stride] * 2, dilations=[dil] * 2, groups=groups,
                  pad_type=pad_type)
    if pad is not None:
        kwargs["pad"] = pad
    if b is not None:
        kwargs["bias"] = b

    @program([(2, cin, size, size)], target=IOS16)
    def prog(x):
        return mb.conv(x=x, **kwargs)

    x = rand(2, cin, size, size)
    out = run1(saved(prog, tmp_path, IOS16), x=x)
    xt = F.pad(torch.from_numpy(x), torch_pad)
    want = F.conv2d(xt, torch.from_numpy(w), None if b is None else torch.from_numpy(b),
                    stride=stride, dilation=dil, groups=groups).numpy()
    assert out.shape == want.shape
    np.testing.assert_allclose(out, want, rtol=1e-5, atol=1e-5)


def test_conv1d_same_and_conv3d_valid(tmp_path):
    w1, w3 = rand(3, 2, 3), rand(2, 2, 2, 2, 2)

    @program([(1, 2, 9), (1, 2, 4, 5, 5)])
    def prog(x, y):
        return (mb.conv(x=x, weight=w1, strides=[2], pad_type="same"),
                mb.conv(x=y, weight=w3, pad_type="valid"))

    x, y = rand(1, 2, 9), rand(1, 2, 4, 5, 5)
    a, b = saved(prog, tmp_path).run({"x": x, "y": y}).values()
    want_a = F.conv1d(F.pad(torch.from_numpy(x), (1, 1)), torch.from_numpy(w1), stride=2)
    want_b = F.conv3d(torch.from_numpy(y), torch.from_numpy(w3))
    np.testing.assert_allclose(a, want_a.numpy(), atol=1e-5)
    np.testing.assert_allclose(b, want_b.numpy(), atol=1e-5)


def test_fp16_conv_rounds_its_fp32_result(tmp_path):
    w = rand(4, 3, 3, 3).astype(np.float16)

    @program([(1, 3, 6, 6)])
    def prog(x):
        h = mb.cast(x=x, dtype="fp16")
        return mb.cast(x=mb.conv(x=h, weight=w, pad_type="same", name="y"), dtype="fp32")

    x = rand(1, 3, 6, 6)
    out = saved(prog, tmp_path).run({"x": x}, outputs=["y"])["y"]
    x16 = torch.from_numpy(x).half().float()
    want = F.conv2d(x16, torch.from_numpy(w).float(), padding=1).half().numpy()
    assert out.dtype == np.float16
    np.testing.assert_array_equal(out, want)


# ---------------------------------------------------------------------------------------------
# pad


@pytest.mark.parametrize(
    ("mode", "pad", "value"),
    [
        ("constant", [0, 1, 0, 1], 0.0),  # TF SAME as emitted for MobileNet: last two dims
        ("constant", [0, 0, 1, 0, 2, 1, 0, 3], -1.5),  # every dim, first dims too
        ("reflect", [1, 2, 2, 1], 0.0),
        ("replicate", [2, 0, 1, 3], 0.0),
    ],
)
def test_pad(mode, pad, value, tmp_path):
    @program([(1, 2, 4, 5)])
    def prog(x):
        return mb.pad(x=x, pad=np.array(pad, np.int32), mode=mode, constant_val=value)

    x = rand(1, 2, 4, 5)
    out = run1(saved(prog, tmp_path), x=x)
    pairs = [(pad[i], pad[i + 1]) for i in range(0, len(pad), 2)]
    pairs = [(0, 0)] * (4 - len(pairs)) + pairs
    np_mode = {"constant": "constant", "reflect": "reflect", "replicate": "edge"}[mode]
    kw = {"constant_values": value} if mode == "constant" else {}
    np.testing.assert_array_equal(out, np.pad(x, pairs, mode=np_mode, **kw))


# ---------------------------------------------------------------------------------------------
# pooling


def naive_pool(x, k, s, pads, out_hw, kind, exclude):
    """Window by window: count includes zero padding unless ``exclude``; max ignores padding."""
    n, c, h, w = x.shape
    (pt, pb), (pl, pr) = pads
    out = np.zeros((n, c, *out_hw), np.float64)
    for i in range(out_hw[0]):
        for j in range(out_hw[1]):
            h0, w0 = i * s - pt, j * s - pl
            rows = [r for r in range(h0, h0 + k) if 0 <= r < h]
            cols = [q for q in range(w0, w0 + k) if 0 <= q < w]
            win = x[:, :, rows][:, :, :, cols]
            if kind == "max":
                out[:, :, i, j] = win.max(axis=(2, 3))
                continue
            if exclude:
                count = len(rows) * len(cols)
            else:
                prow = [r for r in range(h0, h0 + k) if -pt <= r < h + pb]
                pcol = [q for q in range(w0, w0 + k) if -pl <= q < w + pr]
                count = len(prow) * len(pcol)
            out[:, :, i, j] = win.sum(axis=(2, 3)) / count
    return out.astype(np.float32)


# (pad_type, custom pad, kernel, stride, size, (before, after) pads per dim, output size)
POOL_CASES = [
    ("valid", None, 2, 2, 6, ((0, 0), (0, 0)), 3),
    ("valid", None, 3, 2, 7, ((0, 0), (0, 0)), 3),
    ("custom", [1, 1, 1, 1], 3, 2, 6, ((1, 1), (1, 1)), 3),
    ("custom", [0, 2, 1, 0], 3, 1, 5, ((0, 2), (1, 0)), (5, 4)),
    ("same", None, 3, 2, 6, ((0, 1), (0, 1)), 3),
    ("same", None, 2, 1, 5, ((0, 1), (0, 1)), 5),
    ("same_lower", None, 2, 1, 5, ((1, 0), (1, 0)), 5),
    ("same_lower", None, 3, 2, 6, ((1, 0), (1, 0)), 3),
]


@pytest.mark.parametrize(("kind", "exclude"), [("avg", False), ("avg", True), ("max", False)])
@pytest.mark.parametrize("case", POOL_CASES, ids=lambda c: f"{c[0]}-k{c[2]}s{c[3]}n{c[4]}")
def test_pool_pad_types(case, kind, exclude, tmp_path):
    pad_type, pad, k, s, size, pads, out_size = case
    kwargs = dict(kernel_sizes=[k, k], strides=[s, s], pad_type=pad_type)
    if pad is not None:
        kwargs["pad"] = pad
    if kind == "avg":
        kwargs["exclude_padding_from_average"] = exclude

    @program([(2, 3, size, size)], target=IOS16)
    def prog(x):
        return getattr(mb, f"{kind}_pool")(x=x, **kwargs)

    x = rand(2, 3, size, size) + 0.5
    out = run1(saved(prog, tmp_path, IOS16), x=x)
    out_hw = out_size if isinstance(out_size, tuple) else (out_size, out_size)
    assert out.shape == (2, 3, *out_hw)
    want = naive_pool(x.astype(np.float64), k, s, pads, out_hw, kind, exclude)
    np.testing.assert_allclose(out, want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("exclude", [False, True])
@pytest.mark.parametrize(("pad", "size"), [(0, 6), (1, 6), (1, 7), (0, 8)])
def test_pool_ceil_mode_matches_torch(pad, size, exclude, tmp_path):
    @program([(1, 2, size, size)], target=IOS16)
    def prog(x):
        common = dict(kernel_sizes=[3, 3], strides=[2, 2], pad_type="custom",
                      pad=[pad] * 4, ceil_mode=True)
        return (mb.avg_pool(x=x, exclude_padding_from_average=exclude, **common),
                mb.max_pool(x=x, **common))

    x = rand(1, 2, size, size)
    avg, mx = saved(prog, tmp_path, IOS16).run({"x": x}).values()
    xt = torch.from_numpy(x)
    want_avg = F.avg_pool2d(xt, 3, 2, pad, ceil_mode=True, count_include_pad=not exclude)
    want_max = F.max_pool2d(xt, 3, 2, pad, ceil_mode=True)
    np.testing.assert_allclose(avg, want_avg.numpy(), rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(mx, want_max.numpy())


def test_pool_1d(tmp_path):
    @program([(1, 3, 10)])
    def prog(x):
        return (mb.avg_pool(x=x, kernel_sizes=[3], strides=[2], pad_type="custom", pad=[1, 1]),
                mb.max_pool(x=x, kernel_sizes=[2], strides=[2], pad_type="valid"))

    x = rand(1, 3, 10)
    avg, mx = saved(prog, tmp_path).run({"x": x}).values()
    xt = torch.from_numpy(x)
    np.testing.assert_allclose(avg, F.avg_pool1d(xt, 3, 2, 1).numpy(), atol=1e-6)
    np.testing.assert_array_equal(mx, F.max_pool1d(xt, 2, 2).numpy())


# ---------------------------------------------------------------------------------------------
# normalisation, reductions


def test_batch_norm(tmp_path):
    mean, var, gamma, beta = rand(4), np.abs(rand(4)) + 0.1, rand(4), rand(4)

    @program([(2, 4, 3, 3)])
    def prog(x):
        return (mb.batch_norm(x=x, mean=mean, variance=var, gamma=gamma, beta=beta, epsilon=1e-3),
                mb.batch_norm(x=x, mean=mean, variance=var))

    x = rand(2, 4, 3, 3)
    a, b = saved(prog, tmp_path).run({"x": x}).values()
    c = (slice(None), None, None)
    want_a = gamma[c] * (x - mean[c]) / np.sqrt(var[c] + 1e-3) + beta[c]
    want_b = (x - mean[c]) / np.sqrt(var[c] + 1e-5)
    np.testing.assert_allclose(a, want_a, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(b, want_b, rtol=1e-5, atol=1e-5)


def test_reduce_mean(tmp_path):
    @program([(2, 3, 4, 5)])
    def prog(x):
        return (mb.reduce_mean(x=x, axes=[-2, -1], keep_dims=True),
                mb.reduce_mean(x=x, axes=[1], keep_dims=False),
                mb.reduce_mean(x=x))

    x = rand(2, 3, 4, 5)
    a, b, c = saved(prog, tmp_path).run({"x": x}).values()
    np.testing.assert_allclose(a, x.mean(axis=(2, 3), keepdims=True), atol=1e-6)
    np.testing.assert_allclose(b, x.mean(axis=1), atol=1e-6)
    np.testing.assert_allclose(c, x.mean(), atol=1e-6)
    assert a.shape == (2, 3, 1, 1) and b.shape == (2, 4, 5) and np.ndim(c) == 0


# ---------------------------------------------------------------------------------------------
# linear algebra


def test_linear(tmp_path):
    w, b = rand(6, 5), rand(6)

    @program([(3, 5), (2, 3, 5)])
    def prog(x, y):
        return mb.linear(x=x, weight=w, bias=b), mb.linear(x=y, weight=w)

    x, y = rand(3, 5), rand(2, 3, 5)
    a, c = saved(prog, tmp_path).run({"x": x, "y": y}).values()
    np.testing.assert_allclose(a, x @ w.T + b, atol=1e-5)
    np.testing.assert_allclose(c, y @ w.T, atol=1e-5)


@pytest.mark.parametrize(("tx", "ty"), [(False, False), (True, False), (False, True), (True, True)])
def test_matmul_transposes_and_broadcast(tx, ty, tmp_path):
    xs = (2, 5, 3) if tx else (2, 3, 5)
    ys = (4, 5) if ty else (5, 4)

    @program([xs, ys])
    def prog(x, y):
        return mb.matmul(x=x, y=y, transpose_x=tx, transpose_y=ty)

    x, y = rand(*xs), rand(*ys)
    out = run1(saved(prog, tmp_path), x=x, y=y)
    want = np.matmul(np.swapaxes(x, -1, -2) if tx else x, y.T if ty else y)
    np.testing.assert_allclose(out, want, atol=1e-5)


def test_matmul_vector_left_operand(tmp_path):
    # (coremltools' type inference drops the wrong dim for a vector times a batched y, so the
    # interpreter's shape check rejects that case instead of guessing)
    @program([(5,), (5, 3)])
    def prog(x, y):
        return mb.matmul(x=x, y=y)

    x, y = rand(5), rand(5, 3)
    np.testing.assert_allclose(run1(saved(prog, tmp_path), x=x, y=y), np.matmul(x, y), atol=1e-5)


# ---------------------------------------------------------------------------------------------
# shape ops


def test_reshape_squeeze_expand_dims_transpose(tmp_path):
    @program([(1, 6, 1, 4)])
    def prog(x):
        return (
            mb.reshape(x=x, shape=[1, -1]),
            mb.reshape(x=x, shape=[0, 3, 0, 8]),  # 0 copies the input dim
            mb.squeeze(x=x, axes=[-2]),
            mb.squeeze(x=x),
            mb.expand_dims(x=mb.reshape(x=x, shape=[6, 4]), axes=[-1, 1]),
            mb.transpose(x=x, perm=[3, 1, 0, 2]),
        )

    x = rand(1, 6, 1, 4)
    outs = list(saved(prog, tmp_path).run({"x": x}).values())
    wants = [
        x.reshape(1, 24),
        x.reshape(1, 3, 1, 8),
        x.reshape(1, 6, 4),
        x.reshape(6, 4),
        x.reshape(6, 1, 4, 1),
        x.transpose(3, 1, 0, 2),
    ]
    for out, want in zip(outs, wants, strict=True):
        assert out.shape == want.shape
        np.testing.assert_array_equal(out, want)


# ---------------------------------------------------------------------------------------------
# classify (from a converted torch classifier; mb.program cannot declare classifier outputs)


def test_classify_labels_and_probabilities(tmp_path):
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Softmax(dim=1)).eval()
    traced = torch.jit.trace(net, torch.zeros(1, 4))
    labels = ["cat", "dog", "emu"]
    mlmodel = ct.convert(
        traced, inputs=[ct.TensorType(name="x", shape=(1, 4))],
        classifier_config=ct.ClassifierConfig(labels), convert_to="mlprogram",
        compute_precision=ct.precision.FLOAT32, skip_model_load=True,
    )
    mlmodel.save(str(tmp_path / "c.mlpackage"))
    model = ReferenceModel.load(tmp_path / "c.mlpackage")
    assert "classify" in op_types(model)
    assert model.class_labels == labels
    x = rand(5, 4, scale=3.0)  # five samples through the batch-1 program
    res = model.run({"x": x})
    assert set(res) == {"classLabel", "classLabel_probs"}
    with torch.no_grad():
        want = net(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(res["classLabel_probs"], want, atol=1e-6)
    assert res["classLabel"] == [labels[i] for i in want.argmax(1)]
    logits = model.run({"x": x}, outputs=[model.logits_name])[model.logits_name]
    np.testing.assert_allclose(logits, net[0](torch.from_numpy(x)).detach().numpy(), atol=1e-5)


# ---------------------------------------------------------------------------------------------
# const and constexpr (weights compressed by coremltools.optimize)


def compressed_pair(tmp_path, target, compress):
    """A conv + linear fp16 program, compressed by ``compress``; returns (uncompressed,
    compressed, coremltools-decompressed) reference models."""
    import coremltools.optimize.coreml as cto

    w, lw = rand(16, 8, 3, 3), rand(10, 16)

    @program([(1, 8, 6, 6)], target=target)
    def prog(x):
        y = mb.conv(x=x, weight=w, pad_type="same")
        return mb.linear(x=mb.reduce_mean(x=y, axes=[2, 3]), weight=lw)

    mlmodel = ct.convert(prog, convert_to="mlprogram", compute_precision=ct.precision.FLOAT16,
                         minimum_deployment_target=target, skip_model_load=True)
    small = compress(mlmodel, cto)
    dense = cto.decompress_weights(small)
    paths = []
    for name, m in (("plain", mlmodel), ("small", small), ("dense", dense)):
        m.save(str(tmp_path / f"{name}.mlpackage"))
        paths.append(tmp_path / f"{name}.mlpackage")
    return [ReferenceModel.load(p) for p in paths]


def _palettize(nbits, **kw):
    def f(m, cto):
        cfg = cto.OpPalettizerConfig(nbits=nbits, weight_threshold=10, **kw)
        return cto.palettize_weights(m, cto.OptimizationConfig(global_config=cfg))
    return f


def _quantize(**kw):
    def f(m, cto):
        cfg = cto.OpLinearQuantizerConfig(weight_threshold=10, **kw)
        return cto.linear_quantize_weights(m, cto.OptimizationConfig(global_config=cfg))
    return f


def _prune(m, cto):
    cfg = cto.OpMagnitudePrunerConfig(target_sparsity=0.5, weight_threshold=10)
    return cto.prune_weights(m, cto.OptimizationConfig(global_config=cfg))


def _joint(m, cto):
    pal = _palettize(4, mode="uniform")(m, cto)
    cfg = cto.OpLinearQuantizerConfig(mode="linear_symmetric", dtype="int8",
                                      granularity="per_tensor", weight_threshold=10)
    return cto.linear_quantize_weights(pal, cto.OptimizationConfig(global_config=cfg),
                                       joint_compression=True)


# (id, target, compress, constexpr ops expected, max distinct values of the conv weight)
COMPRESSIONS = [
    ("lut-iOS16", IOS16, _palettize(4, mode="uniform"), {"constexpr_lut_to_dense"}, 16),
    ("affine-iOS16", IOS16, _quantize(mode="linear", dtype="int8"),
     {"constexpr_affine_dequantize"}, None),
    ("lut-grouped-iOS18", IOS18,
     _palettize(4, mode="kmeans", granularity="per_grouped_channel", group_size=4),
     {"constexpr_lut_to_dense"}, 4 * 16),  # 16 output channels in groups of 4
    ("blockwise-int4-iOS18", IOS18,
     _quantize(mode="linear_symmetric", dtype="int4", granularity="per_block", block_size=4),
     {"constexpr_blockwise_shift_scale"}, None),
    ("joint-lut-of-int8-iOS18", IOS18, _joint,
     {"constexpr_lut_to_dense", "constexpr_blockwise_shift_scale"}, 16),
    ("sparse-iOS16", IOS16, _prune, {"constexpr_sparse_to_dense"}, None),
]


@pytest.mark.parametrize("case", COMPRESSIONS, ids=lambda c: c[0])
def test_constexpr_decompression(case, tmp_path):
    _, target, compress, expected_ops, max_distinct = case
    plain, small, dense = compressed_pair(tmp_path, target, compress)
    ops_used = [op for op in small.package.main.operations if op.op_type.startswith("constexpr_")]
    assert {op.op_type for op in ops_used} == expected_ops
    assert not any(op.op_type.startswith("constexpr_") for op in dense.package.main.operations)
    x = rand(3, 8, 6, 6)
    got, via_ct = (m.run({"x": x})[m.output_names[0]] for m in (small, dense))
    # the same result as coremltools' own decompression (decompress_weights), bit for bit
    np.testing.assert_array_equal(got, via_ct)
    # the decompressed conv weight is the original one, coarsely (4-bit / int4 / int8)
    conv = next(s.op for s in small._steps if s.op.op_type == "conv")
    weight = small.run({"x": x}, outputs=[conv.inputs["weight"].name])[conv.inputs["weight"].name]
    orig_conv = next(s.op for s in plain._steps if s.op.op_type == "conv")
    orig = plain.run({"x": x}, outputs=[orig_conv.inputs["weight"].name])
    orig = orig[orig_conv.inputs["weight"].name].astype(np.float32)
    assert conv.inputs["weight"].op.op_type.startswith("constexpr_")
    if "constexpr_sparse_to_dense" in expected_ops:  # pruned: kept weights exact, half zeros
        kept = weight != 0
        assert 0.45 < 1 - kept.mean() < 0.55
        np.testing.assert_array_equal(weight[kept], orig[kept].astype(np.float16))
        return
    rel = np.abs(weight.astype(np.float32) - orig).max() / np.abs(orig).max()
    assert 0 < rel < 0.2
    if max_distinct is not None:
        assert len(np.unique(weight)) <= max_distinct


def test_constexpr_cast(tmp_path):
    w16 = rand(3, 4).astype(np.float16)

    @program([(2, 4)], target=IOS16)
    def prog(x):
        return mb.linear(x=x, weight=mb.constexpr_cast(source_val=w16, output_dtype="fp32"))

    model = saved(prog, tmp_path, IOS16)
    assert "constexpr_cast" in {op.op_type for op in model.package.main.operations}
    assert not any(t.startswith("constexpr") for t in op_types(model))  # decompressed at load
    x = rand(2, 4)
    np.testing.assert_allclose(run1(model, x=x), x @ w16.astype(np.float32).T, atol=1e-5)


# ---------------------------------------------------------------------------------------------
# errors


def test_unknown_op_is_an_error_naming_type_and_name(tmp_path):
    @program([(2, 3)])
    def prog(x):
        # random ops cannot match Core ML bit for bit: refused, never approximated
        noise = mb.random_uniform(shape=np.array([2, 3], np.int32), name="my_noise")
        return mb.add(x=mb.relu(x=x), y=noise)

    with pytest.raises(UnsupportedOpError, match=r"'random_uniform'.*'my_noise'") as info:
        saved(prog, tmp_path)
    assert info.value.op_type == "random_uniform" and info.value.op_name == "my_noise"
    assert isinstance(info.value, UserError)  # the CLI prints it as one line


def test_kernel_shape_disagreeing_with_program_is_caught(tmp_path, monkeypatch):
    """Output shapes are checked against the program's declared types on every run."""
    from mnv1_coreml.mil import ops

    @program([(1, 4)])
    def prog(x):
        return mb.relu(x=x)

    model = saved(prog, tmp_path)
    monkeypatch.setitem(ops.OPS, "relu", ops.KernelSpec(lambda a: a.tensor("x").reshape(2, 2)))
    model._steps[0].spec = ops.OPS["relu"]
    with pytest.raises(InterpreterError, match="declares"):
        model.run({"x": rand(1, 4)})


def test_supported_ops_cover_the_issue_list():
    required = {
        "const", "constexpr_lut_to_dense", "constexpr_affine_dequantize",
        "constexpr_blockwise_shift_scale", "cast", "add", "sub", "mul", "real_div", "maximum",
        "minimum", "conv", "pad", "batch_norm", "relu", "relu6", "clip", "reduce_mean",
        "avg_pool", "max_pool", "linear", "matmul", "reshape", "squeeze", "expand_dims",
        "transpose", "softmax", "classify",
    }
    assert required <= set(supported_ops())
