"""The interpreter on whole converted models: MobileNet V1 0.25-128 against PyTorch, batching,
image handling (RGB/BGR/grayscale, preprocessing), intermediates and error reporting."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mnv1_coreml.images import INCEPTION, load_image_set
from mnv1_coreml.mil import InterpreterError, ReferenceModel
from mnv1_coreml.mil.loader import ct
from mnv1_coreml.model import MobileNetConfig, MobileNetV1
from mnv1_coreml.weights import ArchSettings, build_model
from mnv1_coreml.weights.random_init import random_weights, smooth_images

mb = ct.converters.mil.Builder  # coremltools comes through the interpreter's quiet import

RES = 128
SCALE, BIAS = 1 / 127.5, (-1.0, -1.0, -1.0)
LABELS = [f"label_{i:03d}" for i in range(1000)]

#: fp16 program vs fp32 PyTorch, max abs logit error over these 8 images. Measured: 0.033
#: (0.036 for the TF-padding net), for logits with std ~2.6 in about -9.9..9.7; PyTorch's own
#: ``model.half()`` is off by as much (0.040 / 0.035).
FP16_LOGIT_BOUND = 0.25


def seeded_mobilenet(cfg: MobileNetConfig, seed: int = 0) -> MobileNetV1:
    """The project's seeded random weights (He init, calibrated BN), x/127.5 - 1 input."""
    settings = ArchSettings(padding=cfg.padding, normalization=INCEPTION)
    model = build_model(cfg.alpha, cfg.res, random_weights(cfg.alpha, cfg.res, seed, settings))
    bn = model.blocks[5].pw.bn
    assert bn.running_var.std() > 0.01 and bn.running_mean.abs().max() > 0.1  # real spread
    return model


def golden_images(res: int) -> np.ndarray:
    return load_image_set(res, with_probes=False)[1][:4]


normalise = INCEPTION.apply


class Softmax(torch.nn.Module):
    def __init__(self, net: torch.nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.net(x), dim=1)


def convert(net, path: Path, precision="fp32", shape=(1, 3, RES, RES), layout="RGB",
            scale=SCALE, bias=BIAS, labels=LABELS) -> ReferenceModel:
    traced = torch.jit.trace(Softmax(net).eval(), torch.zeros(shape))
    mlmodel = ct.convert(
        traced,
        inputs=[ct.ImageType(name="image", shape=shape, scale=scale, bias=list(bias),
                             color_layout=getattr(ct.colorlayout, layout))],
        classifier_config=ct.ClassifierConfig(labels),
        convert_to="mlprogram",
        compute_precision=ct.precision.FLOAT16 if precision == "fp16" else ct.precision.FLOAT32,
        skip_model_load=True,
    )
    mlmodel.save(str(path))
    return ReferenceModel.load(path)


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    return np.concatenate([golden_images(RES), smooth_images(4, RES, seed=7)])


@pytest.fixture(scope="module")
def nets():
    return {
        "torch": seeded_mobilenet(MobileNetConfig(alpha=0.25, res=RES)),
        "tf": seeded_mobilenet(MobileNetConfig(alpha=0.25, res=RES, padding="tf"), seed=1),
    }


@pytest.fixture(scope="module")
def models(nets, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("mnv1")
    return {
        (pad, prec): convert(nets[pad], tmp / f"{pad}_{prec}.mlpackage", prec)
        for pad, prec in (("torch", "fp32"), ("torch", "fp16"), ("tf", "fp32"))
    }


def torch_logits(net, images: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return net(normalise(images)).numpy()


# ---------------------------------------------------------------------------------------------
# MobileNet V1 0.25-128 against PyTorch


@pytest.mark.parametrize("padding", ["torch", "tf"])
def test_fp32_logits_match_pytorch(padding, models, nets, images):
    model = models[(padding, "fp32")]
    res = model.predict(images, outputs=[model.logits_name, "classLabel", "classLabel_probs"])
    want = torch_logits(nets[padding], images)
    logits = res[model.logits_name]
    assert logits.dtype == np.float32 and logits.shape == (len(images), 1000)
    err = np.abs(logits - want).max(axis=1)
    assert err.max() <= 1e-4, err  # every image
    assert want.std() > 0.3  # logits that mean something, not a collapsed net
    probs = res["classLabel_probs"]  # softmax + classify, exact on the logits they receive
    np.testing.assert_allclose(probs, torch.softmax(torch.from_numpy(logits), 1).numpy(), atol=1e-6)
    assert res["classLabel"] == [LABELS[i] for i in want.argmax(1)]


def test_fp16_logits_close_to_pytorch(models, nets, images):
    model = models[("torch", "fp16")]
    assert any(t == "cast" for t, _ in model.operations)  # fp16 compute between casts
    logits = model.predict(images, outputs=[model.logits_name])[model.logits_name]
    assert logits.dtype == np.float16
    want = torch_logits(nets["torch"], images)
    err = np.abs(logits.astype(np.float32) - want).max()
    assert 1e-4 < err <= FP16_LOGIT_BOUND  # rounding is really reproduced, and stays small
    assert (logits.argmax(1) == want.argmax(1)).mean() >= 0.75


@pytest.mark.slow
def test_fp32_logits_match_pytorch_1_0_224(tmp_path, images):
    net = seeded_mobilenet(MobileNetConfig(alpha=1.0, res=224), seed=2)
    model = convert(net, tmp_path / "big.mlpackage", shape=(1, 3, 224, 224))
    imgs = np.concatenate([golden_images(224)[:2], smooth_images(2, 224, seed=11)])
    logits = model.predict(imgs, outputs=[model.logits_name])[model.logits_name]
    err = np.abs(logits - torch_logits(net, imgs)).max(axis=1)
    assert err.max() <= 1e-4, err


def test_tf_padding_converts_to_explicit_pad_ops(models):
    """F.pad before a stride-2 conv stays a pad op (0 before, 1 after on H and W)."""
    model = models[("tf", "fp32")]
    pads = [s.op for s in model._steps if s.op.op_type == "pad"]
    assert len(pads) == 5  # the stem and the four stride-2 depthwise convs
    for op in pads:
        assert op.inputs["pad"].val.tolist() == [0, 0, 0, 0, 0, 1, 0, 1]
        assert op.inputs["mode"].val == "constant"
        conv = op.outputs[0].child_ops[0]
        assert conv.op_type == "conv" and conv.inputs["pad_type"].val == "valid"
    assert not any(s.op.op_type == "pad" for s in models[("torch", "fp32")]._steps)


def test_intermediate_matches_pytorch_stem(models, nets, images):
    model = models[("torch", "fp32")]
    first_act = next(name for t, name in model.operations if t == "relu6")
    var = next(s.outputs[0].name for s in model._steps if s.op.name == first_act)
    assert var in model.variable_names
    got = model.predict(images[:2], outputs=[var])[var]
    with torch.no_grad():
        want = nets["torch"].stem(normalise(images[:2])).numpy()
    np.testing.assert_allclose(got, want, atol=1e-5)


# ---------------------------------------------------------------------------------------------
# batching


@pytest.mark.parametrize("key", [("tf", "fp32"), ("torch", "fp16")])
def test_batch_equals_one_at_a_time(key, models, images):
    model = models[key]
    assert model.batch_plan.vectorised  # the reshape to (1, C) before the classifier is fine
    names = [model.logits_name, "classLabel", "classLabel_probs"]
    batched = model.predict(images, outputs=names)
    single = [model.predict(img, outputs=names) for img in images]
    assert batched["classLabel"] == [s["classLabel"][0] for s in single]
    for name in (model.logits_name, "classLabel_probs"):
        stacked = np.concatenate([s[name] for s in single])
        assert batched[name].shape == stacked.shape and batched[name].dtype == stacked.dtype
        np.testing.assert_array_equal(batched[name], stacked)  # bit for bit (convs per sample)


@pytest.mark.parametrize("key", [("tf", "fp32"), ("torch", "fp16")])
def test_fast_batch_runs_convs_once_and_stays_close(key, models, images):
    """``exact_batch=False`` (evaluate's accuracy runs): convs, FC and means take the whole
    batch; results differ from single runs only by summation order."""
    exact = models[key]
    fast = ReferenceModel.load(exact.path, exact_batch=False)
    kinds = {s.op.op_type for s in fast._steps if s.vectorised}
    assert {"conv", "linear", "reduce_mean"} <= kinds
    assert "conv" not in {s.op.op_type for s in exact._steps if s.vectorised}
    names = [exact.logits_name, "classLabel"]
    got, want = fast.predict(images, outputs=names), exact.predict(images, outputs=names)
    assert got["classLabel"] == want["classLabel"]
    tol = 1e-4 if key[1] == "fp32" else 0.05  # fp16: a last-bit change may round on
    np.testing.assert_allclose(got[exact.logits_name].astype(np.float32),
                               want[exact.logits_name].astype(np.float32), atol=tol)


def test_batched_reshape_keeps_samples_apart(tmp_path):
    w = np.random.default_rng(0).standard_normal((5, 24)).astype(np.float32)

    @mb.program(input_specs=[mb.TensorSpec(shape=(1, 2, 3, 4))])
    def prog(x):
        return mb.linear(x=mb.reshape(x=mb.relu(x=x), shape=[1, 24]), weight=w)

    model = ReferenceModel.from_program(prog)
    assert model.batch_plan.vectorised and model.logits_name is None
    x = np.random.default_rng(1).standard_normal((3, 2, 3, 4)).astype(np.float32)
    (out,) = model.run({"x": x}).values()
    assert out.shape == (3, 5)
    np.testing.assert_allclose(out, np.maximum(x, 0).reshape(3, 24) @ w.T, atol=1e-5)


def test_batched_matmul_slices_only_the_batch_operand():
    """N equal to a constant's leading dim must not make the constant look batched."""
    y = np.random.default_rng(3).standard_normal((5, 5)).astype(np.float32)

    @mb.program(input_specs=[mb.TensorSpec(shape=(1, 5)), mb.TensorSpec(shape=(1, 5, 5))])
    def prog(x, z):
        return mb.matmul(x=x, y=y), mb.matmul(x=y, y=z)

    model = ReferenceModel.from_program(prog)
    assert model.batch_plan.vectorised
    rng = np.random.default_rng(4)
    x = rng.standard_normal((5, 5)).astype(np.float32)  # 5 samples of (1, 5)
    z = rng.standard_normal((5, 5, 5)).astype(np.float32)  # 5 samples of (1, 5, 5)
    a, b = model.run({"x": x, "z": z}).values()
    np.testing.assert_allclose(a, x @ y, atol=1e-5)
    np.testing.assert_allclose(b, np.matmul(y, z), atol=1e-5)


@pytest.mark.parametrize("kind", ["flatten", "transpose"])
def test_batch_moving_program_runs_one_sample_at_a_time(kind):
    @mb.program(input_specs=[mb.TensorSpec(shape=(1, 6))])
    def prog(x):
        if kind == "flatten":
            return mb.reshape(x=x, shape=[6])
        return mb.transpose(x=x, perm=[1, 0])

    model = ReferenceModel.from_program(prog)
    assert not model.batch_plan.vectorised and model.batch_plan.reason
    x = np.random.default_rng(2).standard_normal((4, 6)).astype(np.float32)
    (out,) = model.run({"x": x}).values()
    singles = [next(iter(model.run({"x": x[i : i + 1]}).values())) for i in range(4)]
    assert out.shape == (4, *singles[0].shape)  # no batch dim left: samples are stacked
    np.testing.assert_array_equal(out, np.stack(singles))


def test_batch_mixing_op_runs_per_sample_inside_a_batched_run():
    """A softmax over dim 0 (its batch rule refuses) runs sample by sample on slices while
    the ops around it take all samples at once."""

    @mb.program(input_specs=[mb.TensorSpec(shape=(1, 6))])
    def prog(x):
        y = mb.softmax(x=mb.expand_dims(x=mb.relu(x=x), axes=[1]), axis=0)  # (1, 1, 6)
        return mb.softmax(x=mb.add(x=y, y=mb.expand_dims(x=x, axes=[1])), axis=-1)

    model = ReferenceModel.from_program(prog)
    assert model.batch_plan.vectorised
    per_step = [(s.op.op_type, s.vectorised) for s in model._steps]
    assert per_step == [("relu", True), ("expand_dims", True), ("softmax", False),
                        ("expand_dims", True), ("add", True), ("softmax", True)]
    x = np.random.default_rng(2).standard_normal((4, 6)).astype(np.float32)
    (out,) = model.run({"x": x}).values()
    singles = [next(iter(model.run({"x": x[i : i + 1]}).values())) for i in range(4)]
    assert out.shape == (4, 1, 6)  # the leading 1 carries the samples
    np.testing.assert_array_equal(out, np.concatenate(singles))
    # softmax over a size-1 dim is 1 everywhere; mixing the samples would have made it 1/4
    y = model.run({"x": x}, outputs=[model._steps[2].outputs[0].name])
    np.testing.assert_array_equal(next(iter(y.values())), np.ones((4, 1, 6), np.float32))


def test_every_op_declares_its_batch_rule_and_the_default_is_per_sample():
    from mnv1_coreml.mil import ops

    assert ops.KernelSpec(lambda a: None).batch is None  # no rule: per sample
    with pytest.raises(TypeError):  # registering without stating the batch rule
        ops.register("my_op")
    vectorised = {name for name, spec in ops.OPS.items() if spec.batch is not None}
    # GEMM-based ops stay per sample (batch-size-dependent summation order in oneDNN)
    assert not vectorised & {"conv", "linear", "matmul", "einsum", "gather"}
    assert {"add", "relu", "clip", "reshape", "softmax", "concat", "quantize"} <= vectorised


# ---------------------------------------------------------------------------------------------
# image input handling


class TinyNet(torch.nn.Module):
    def __init__(self, channels: int = 3) -> None:
        super().__init__()
        torch.manual_seed(3)
        self.conv = torch.nn.Conv2d(channels, 8, 3, stride=2, padding=1)
        self.fc = torch.nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.conv(x)).mean((2, 3)))


def test_preprocessing_and_description(models):
    model = models[("torch", "fp16")]
    assert model.input_name == "image" and model.image_size == (RES, RES)
    assert model.color_layout == "RGB" and model.class_labels == LABELS
    pre = model.preprocessing
    assert pre.scale == pytest.approx(SCALE, rel=1e-7) and pre.bias == BIAS
    assert (pre.scale_op, pre.bias_op, pre.channel_scale) == (
        "image__scaled__", "image__biased__", None)
    assert model.output_names == ["classLabel", "classLabel_probs"]
    names = model.variable_names
    assert names[:2] == ["image__scaled__", "image__biased__"]
    assert model.logits_name in names and len(names) == len(set(names))


def test_bgr_model_gets_reversed_channels_and_per_channel_bias(tmp_path):
    net = TinyNet().eval()
    bias = (-0.4, -0.5, -0.6)  # per channel in the program's order: B, G, R
    model = convert(net, tmp_path / "bgr.mlpackage", shape=(1, 3, 16, 16), layout="BGR",
                    scale=1 / 255, bias=bias, labels=["a", "b", "c", "d"])
    assert model.color_layout == "BGR" and model.preprocessing.bias == pytest.approx(bias)
    rgb = smooth_images(3, 16, seed=5)
    logits = model.predict(rgb, outputs=[model.logits_name])[model.logits_name]
    x = torch.from_numpy(rgb[..., ::-1].copy()).permute(0, 3, 1, 2).float() / 255
    with torch.no_grad():
        want = net(x + torch.tensor(bias).view(1, 3, 1, 1)).numpy()
    np.testing.assert_allclose(logits, want, atol=1e-5)


def test_per_channel_scale_after_the_image_type(tmp_path):
    """ImageNet mean/std: the ImageType does p/255 - mean, a graph mul does the 1/std."""
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)

    class Scaled(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = TinyNet().eval()
            self.register_buffer("inv_std", 1 / torch.tensor(std).view(1, 3, 1, 1))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.net(x * self.inv_std)

    net = Scaled().eval()
    model = convert(net, tmp_path / "imagenet.mlpackage", shape=(1, 3, 16, 16), scale=1 / 255,
                    bias=tuple(-m for m in mean), labels=["a", "b", "c", "d"])
    pre = model.preprocessing
    assert pre.bias == pytest.approx([-m for m in mean])
    assert pre.channel_scale == pytest.approx([1 / s for s in std], rel=1e-6)
    assert pre.channel_scale_op is not None
    rgb = smooth_images(2, 16, seed=8)
    x = torch.from_numpy(rgb).permute(0, 3, 1, 2).float() / 255
    with torch.no_grad():
        want = net(x - torch.tensor(mean).view(1, 3, 1, 1)).numpy()
    got = model.predict(rgb, outputs=[model.logits_name])[model.logits_name]
    np.testing.assert_allclose(got, want, atol=1e-5)


def test_renamed_probabilities_output(tmp_path):
    """convert.py renames ``classLabel_probs`` to ``classLabelProbs`` in the spec and program."""
    net = TinyNet().eval()
    convert(net, tmp_path / "a.mlpackage", shape=(1, 3, 16, 16), labels=["a", "b", "c", "d"])
    mlmodel = ct.models.MLModel(str(tmp_path / "a.mlpackage"), skip_model_load=True)
    spec = mlmodel.get_spec()
    ct.utils.rename_feature(spec, "classLabel_probs", "classLabelProbs")
    renamed = ct.models.MLModel(spec, weights_dir=mlmodel.weights_dir, skip_model_load=True)
    renamed.save(str(tmp_path / "b.mlpackage"))
    model = ReferenceModel.load(tmp_path / "b.mlpackage")
    assert model.output_names == ["classLabel", "classLabelProbs"]
    res = model.predict(smooth_images(3, 16, seed=9))
    assert set(res) == {"classLabel", "classLabelProbs"} and res["classLabelProbs"].shape == (3, 4)
    np.testing.assert_allclose(res["classLabelProbs"].sum(1), 1.0, rtol=1e-6)


def test_grayscale_model_takes_gray_or_rgb_images(tmp_path):
    net = TinyNet(channels=1).eval()
    model = convert(net, tmp_path / "gray.mlpackage", shape=(1, 1, 16, 16), layout="GRAYSCALE",
                    scale=1 / 255, bias=(0.0,), labels=["a", "b", "c", "d"])
    assert model.color_layout == "GRAYSCALE" and model.preprocessing.bias == (0.0,)
    rgb = smooth_images(2, 16, seed=6)
    gray = np.stack([np.asarray(Image.fromarray(im).convert("L")) for im in rgb])
    from_rgb = model.predict(rgb, outputs=[model.logits_name])[model.logits_name]
    from_gray = model.predict(gray, outputs=[model.logits_name])[model.logits_name]
    np.testing.assert_array_equal(from_rgb, from_gray)  # PIL's luma, exactly
    with torch.no_grad():
        want = net(torch.from_numpy(gray).float()[:, None] / 255).numpy()
    np.testing.assert_allclose(from_gray, want, atol=1e-5)


def test_input_errors(models, images):
    model = models[("torch", "fp32")]
    with pytest.raises(InterpreterError, match="do not fit"):
        model.predict(np.zeros((2, 64, 64, 3), np.uint8))
    with pytest.raises(InterpreterError, match="uint8"):
        model.predict(images.astype(np.float32))
    with pytest.raises(InterpreterError, match="no variable named"):
        model.predict(images[:1], outputs=["nope"])
    with pytest.raises(InterpreterError, match="not an .mlpackage|no such"):
        ReferenceModel.load(Path("/nonexistent/model.mlpackage"))


def test_import_is_quiet():
    """coremltools' import-time warnings must not reach CLI output."""
    proc = subprocess.run([sys.executable, "-c", "import torch, mnv1_coreml.mil"],
                          capture_output=True, text=True, check=True,
                          cwd=Path(__file__).resolve().parents[1])
    assert proc.stdout == "" and proc.stderr == ""
