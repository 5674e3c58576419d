"""``quantize`` / ``dequantize`` kernels against NumPy and coremltools' own value inference,
and a W8A8 graph built by coremltools' activation-quantization passes run end to end."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mnv1_coreml.mil import ReferenceModel
from mnv1_coreml.mil.loader import ct

mb = ct.converters.mil.Builder
types = ct.converters.mil.mil.types
IOS17 = ct.target.iOS17

RNG = np.random.default_rng(77)
SHAPE = (1, 3, 4, 5)


@np.errstate(over="ignore")  # fp16 quotients of the +-1e4 probes overflow to inf: clipped
def _numpy_quantize(x, scale, zp, dtype, axis):
    """The MIL spec's formula, written independently: divide in x's dtype, round half to even,
    add the zero point, clip."""
    if np.ndim(scale):
        shape = [1] * x.ndim
        shape[axis] = -1
        scale = np.reshape(scale, shape)
        zp = None if zp is None else np.reshape(zp, shape)
    q = np.rint((x / scale.astype(x.dtype)).astype(x.dtype)).astype(np.float64)
    if zp is not None:
        q = q + zp
    info = np.iinfo(dtype)
    return np.clip(q, info.min, info.max).astype(dtype)


def _case_values(dtype_np, scale):
    """Ties (k + 0.5) * scale to test half-to-even, values far out of range to test clipping."""
    x = RNG.standard_normal(SHAPE) * 40 * np.max(scale)
    flat = x.reshape(-1)
    flat[:8] = (np.arange(8) - 4 + 0.5) * np.ravel(scale)[0]
    flat[8], flat[9] = 1e4, -1e4
    return x.astype(dtype_np)


QUANT_CASES = [
    # (float dtype, output dtype, per-axis, zero point, axis)
    ("fp32", "int8", False, False, None),
    ("fp32", "uint8", False, True, None),
    ("fp16", "int8", False, True, None),
    ("fp32", "int8", True, True, 1),
    ("fp16", "uint8", True, True, -1),
    ("fp16", "int8", True, False, 2),
]


@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")  # fp16 probes: inf
@pytest.mark.parametrize("case", QUANT_CASES, ids=lambda c: "-".join(map(str, c)))
def test_quantize_dequantize_match_numpy_and_coremltools(case):
    fdtype, qdtype, per_axis, with_zp, axis = case
    fnp = np.float16 if fdtype == "fp16" else np.float32
    qnp = np.int8 if qdtype == "int8" else np.uint8
    if per_axis:
        n = SHAPE[axis]
        scale = (0.05 + 0.1 * np.arange(n)).astype(fnp)
        zp = (np.arange(n) * 3 + (0 if qdtype == "int8" else 120)).astype(qnp) if with_zp else None
    else:
        scale = np.array(0.0625, dtype=fnp)  # a power of two: ties stay exact ties in fp16
        zp = np.array(5 if qdtype == "int8" else 128, dtype=qnp) if with_zp else None
    x = _case_values(fnp, scale)
    kw = {"scale": scale, "output_dtype": qdtype}
    if zp is not None:
        kw["zero_point"] = zp
    if per_axis:
        kw["axis"] = axis
    dkw = {k: v for k, v in kw.items() if k != "output_dtype"}
    folded = {}

    @mb.program(
        input_specs=[mb.TensorSpec(shape=SHAPE, dtype=types.string_to_builtin(fdtype))],
        opset_version=IOS17,
    )
    def prog(inp):
        # coremltools computes the same ops on a constant with its own value inference.
        folded["q"] = mb.quantize(input=x, **kw).val
        # (dequantize has no value inference, only the materialisation constexprs use)
        folded["dq"] = mb.dequantize(input=folded["q"], **dkw).op.materialized_val_inference()
        q = mb.quantize(input=inp, name="q", **kw)
        return q, mb.dequantize(input=q, name="dq", **dkw)

    model = ReferenceModel.from_program(prog)
    out = model.run({"inp": x})
    want = _numpy_quantize(x, scale, zp, qnp, axis)
    assert out["q"].dtype == qnp and out["dq"].dtype == fnp
    np.testing.assert_array_equal(out["q"], want)
    np.testing.assert_array_equal(out["q"], folded["q"])
    np.testing.assert_array_equal(out["dq"], folded["dq"])
    assert (out["q"] == np.iinfo(qnp).max).any() and (out["q"] == np.iinfo(qnp).min).any()
    if not per_axis:  # ties: -3.5 -> -4, -2.5 -> -2, ..., 2.5 -> 2, 3.5 -> 4 (plus zp)
        ties = out["q"].reshape(-1)[:8].astype(int) - (int(zp) if zp is not None else 0)
        assert ties.tolist() == [-4, -2, -2, 0, 0, 2, 2, 4]
    # dequantize: scale * (q - zp), one rounding to the scale's dtype
    zp64 = 0.0 if zp is None else zp.astype(np.float64)
    shape = [1] * len(SHAPE)
    if per_axis:
        shape[axis] = -1
    ref = (want.astype(np.float64) - np.reshape(zp64, shape if np.ndim(zp64) else ())) * np.reshape(
        scale.astype(np.float64), shape if per_axis else ()
    )
    np.testing.assert_array_equal(out["dq"], ref.astype(fnp))


def test_quantize_fp16_divides_in_fp16():
    """x / scale rounded to fp16 before rounding to an integer: 2.5 + 1 ulp in fp32 would round
    up, but in fp16 the quotient is exactly 2.5, which rounds to even (2)."""
    scale = np.array(0.1, dtype=np.float16)
    x = np.array([[float(scale) * 2.5 * (1 + 2**-13)]], dtype=np.float16)
    assert np.float32(x[0, 0]) / np.float32(scale) != 2.5  # fp32 quotient is not a tie

    @mb.program(input_specs=[mb.TensorSpec(shape=(1, 1), dtype=types.fp16)], opset_version=IOS17)
    def prog(inp):
        return mb.quantize(input=inp, scale=scale, output_dtype="int8")

    (q,) = ReferenceModel.from_program(prog).run({"inp": x}).values()
    assert np.float16(x[0, 0] / scale) == 2.5  # a tie in fp16: to even
    assert q.item() == 2


class ConvNet(torch.nn.Module):
    """conv -> relu -> conv (+ residual add) -> avg pool -> linear: the patterns the W8A8
    passes quantize (conv, add, avg_pool, linear, with relu fused into the pattern)."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.c2 = torch.nn.Conv2d(8, 8, 3, padding=1)
        self.fc = torch.nn.Linear(8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.c1(x))
        y = torch.relu(self.c2(y) + y)
        y = torch.nn.functional.avg_pool2d(y, 2)
        return self.fc(y.mean(dim=(2, 3)))


@pytest.fixture(scope="module")
def w8a8(tmp_path_factory):
    """An fp16 iOS17 conv net through coremltools' own activation-quantization passes, with
    calibration statistics from the interpreter, saved and reloaded."""
    import coremltools.optimize as cto
    from coremltools.converters.mil.mil.passes.graph_pass import PassOption
    from coremltools.converters.mil.mil.passes.pass_registry import PASS_REGISTRY

    torch.manual_seed(0)
    net = ConvNet().eval()
    example = torch.rand(1, 3, 8, 8)
    traced = torch.jit.trace(net, example)
    fp = ct.convert(
        traced,
        inputs=[ct.TensorType(name="x", shape=(1, 3, 8, 8))],
        convert_to="mlprogram",
        minimum_deployment_target=IOS17,
        compute_precision=ct.precision.FLOAT16,
        skip_model_load=True,
    )
    root = tmp_path_factory.mktemp("w8a8")
    fp.save(str(root / "fp.mlpackage"))
    ref = ReferenceModel.load(root / "fp.mlpackage")
    calib = torch.rand(6, 3, 8, 8).numpy()
    values = ref.run({"x": calib}, outputs=ref.variable_names)
    stats = {"x": {"rmin": float(calib.min()), "rmax": float(calib.max())}}
    for name, v in values.items():
        if isinstance(v, np.ndarray) and v.dtype.kind == "f":
            stats[name] = {"rmin": float(v.min()), "rmax": float(v.max())}
    config = cto.coreml.OptimizationConfig(
        global_config=cto.coreml.OpLinearQuantizerConfig(mode="linear_symmetric")
    )
    prog = fp._mil_program
    for name in (
        "compression::insert_prefix_quantize_dequantize_pair",
        "compression::insert_suffix_quantize_dequantize_pair",
    ):
        graph_pass = PASS_REGISTRY[name]
        graph_pass.set_options([PassOption("config", config)])
        graph_pass.set_options([PassOption("activation_stats", stats)])
        graph_pass(prog)
    PASS_REGISTRY["common::dequantize_quantize_pair_elimination"](prog)
    q = ct.convert(
        prog,
        convert_to="mlprogram",
        minimum_deployment_target=IOS17,
        pass_pipeline=ct.PassPipeline.EMPTY,
        skip_model_load=True,
    )
    q.save(str(root / "w8a8.mlpackage"))
    return net, ReferenceModel.load(root / "w8a8.mlpackage"), calib


def test_w8a8_graph_runs_and_every_quantize_is_exact(w8a8):
    net, model, calib = w8a8
    kinds = [t for t, _ in model.operations]
    assert kinds.count("quantize") >= 3 and kinds.count("dequantize") >= 3
    # Every (de)quantize in the real graph agrees with coremltools' numpy implementation.
    from coremltools.optimize import _utils as opt_utils

    steps = [s for s in model._steps if s.op.op_type in ("quantize", "dequantize")]
    names = [s.op.inputs["input"].name for s in steps] + [s.outputs[0].name for s in steps]
    values = model.run({"x": calib}, outputs=names)
    for step in steps:
        op = step.op
        x = values[op.inputs["input"].name]
        zp = op.inputs["zero_point"].val if op.inputs.get("zero_point") is not None else None
        scale = op.inputs["scale"].val
        if op.op_type == "quantize":
            want = opt_utils.quantize_by_scale_and_zp(x, scale, zp, op.inputs["output_dtype"].val)
        else:
            want = opt_utils.dequantize_by_scale_and_zp(x, scale, zp)
        np.testing.assert_array_equal(values[step.outputs[0].name], want)
    # And the quantized network still computes the float network's function.
    (out,) = model.run({"x": calib}).values()
    with torch.no_grad():
        want = net(torch.from_numpy(calib)).numpy()
    err = np.abs(out.astype(np.float32) - want).max()
    assert 0 < err < 0.05 * np.abs(want).max()


def test_w8a8_batch_equals_one_at_a_time(w8a8):
    _, model, calib = w8a8
    assert model.batch_plan.vectorised
    (batched,) = model.run({"x": calib}).values()
    singles = [next(iter(model.run({"x": calib[i : i + 1]}).values())) for i in range(3)]
    np.testing.assert_array_equal(batched[:3], np.concatenate(singles))
