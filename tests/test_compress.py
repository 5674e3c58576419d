"""compress() on a real converted MobileNet V1 (alpha 0.25, res 128, fp16): every conv and
linear weight ends up behind the right constexpr op, and nothing else is touched."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from mnv1_coreml.compress import Palettize, QuantizeInt8, compress, required_target
from mnv1_coreml.compress.config import CONFIGS, from_metadata, to_metadata
from mnv1_coreml.compress.palettize import find_weight_sites, iter_ops, readback_sse
from mnv1_coreml.coreml import ct, load_program
from mnv1_coreml.errors import UserError
from mnv1_coreml.model import MobileNetConfig, MobileNetV1

ALPHA, RES = 0.25, 128
#: 1 stem conv + 13 depthwise + 13 pointwise convs + the classifier
N_WEIGHTS = 28


def convert(target: object) -> ct.models.MLModel:
    torch.manual_seed(0)
    model = MobileNetV1(MobileNetConfig(alpha=ALPHA, res=RES)).eval()
    example = torch.rand(1, 3, RES, RES)
    return ct.convert(
        torch.jit.trace(model, example),
        inputs=[ct.TensorType(name="image", shape=example.shape)],
        outputs=[ct.TensorType(name="logits")],
        convert_to="mlprogram",
        compute_precision=ct.precision.FLOAT16,
        minimum_deployment_target=target,
    )


@pytest.fixture(scope="module")
def ios16() -> ct.models.MLModel:
    return convert(ct.target.iOS16)


@pytest.fixture(scope="module")
def ios18() -> ct.models.MLModel:
    return convert(ct.target.iOS18)


@pytest.fixture(scope="module")
def sites(ios16: ct.models.MLModel) -> list:
    found, skipped = find_weight_sites(load_program(ios16))
    assert len(found) == N_WEIGHTS and not skipped
    return found


def weight_producers(mlmodel: ct.models.MLModel) -> dict[str, object]:
    """conv/linear op name -> the op producing its weight input."""
    prog = load_program(mlmodel)
    return {
        op.name: op.inputs["weight"].op
        for f in prog.functions.values()
        for op in iter_ops(f)
        if op.op_type in ("conv", "linear")
    }


def bias_producers(mlmodel: ct.models.MLModel) -> list[str]:
    prog = load_program(mlmodel)
    return [
        op.inputs["bias"].op.op_type
        for f in prog.functions.values()
        for op in iter_ops(f)
        if op.op_type in ("conv", "linear") and op.inputs.get("bias") is not None
    ]


def test_smallest_weights_are_tiny(sites: list) -> None:
    # The point of weight_threshold=0: coremltools' default 2048 would skip these.
    assert min(int(np.prod(s.shape)) for s in sites) == 72  # 3x3 depthwise, 8 channels
    assert sum(int(np.prod(s.shape)) <= 2048 for s in sites) >= 5


@pytest.mark.parametrize("nbits", [8, 6, 4])
def test_per_tensor_palettization_covers_every_weight(
    ios16: ct.models.MLModel, sites: list, nbits: int
) -> None:
    spec = Palettize(nbits)
    assert required_target(spec) == ct.target.iOS16
    new, report = compress(ios16, spec)
    assert report.uncompressed == [] and report.lut_cache_misses == 0
    assert len(report.compressed) == N_WEIGHTS
    producers = weight_producers(new)
    assert len(producers) == N_WEIGHTS
    for site in sites:
        op = producers[site.op_name]
        assert op.op_type == "constexpr_lut_to_dense", site.weight_name
        lut = op.lut.val
        assert lut.dtype == np.float16 and lut.shape == (1 << nbits,)
        assert tuple(op.outputs[0].shape) == site.shape
    # Biases and everything else stay plain consts.
    assert bias_producers(new) and set(bias_producers(new)) == {"const"}
    # The reported SSE is what the model really holds, and it shrinks with more bits.
    by_name = {w.name: w for w in report.compressed}
    for site in sites:
        entry = by_name[site.weight_name]
        assert entry.nbits == nbits and entry.method == "optimal"
        assert entry.op_type in ("conv", "linear") and entry.shape == site.shape
        assert np.isclose(entry.sse, readback_sse(site.value, producers[site.op_name]), rtol=1e-9)
    # The input model is left alone.
    assert {p.op_type for p in weight_producers(ios16).values()} == {"const"}
    assert json.loads(json.dumps(report.to_json()))["compressed"][0]["nbits"] == nbits


def test_more_bits_less_error_and_small_tensors_exact(ios16: ct.models.MLModel) -> None:
    totals = {}
    for nbits in (4, 8):
        _, report = compress(ios16, Palettize(nbits))
        totals[nbits] = {w.name: w.sse for w in report.compressed}
        if nbits == 8:
            # An 8-channel 3x3 depthwise conv has 72 weights: 256 entries hold them exactly.
            exact = [w for w in report.compressed if np.prod(w.shape) <= 256]
            assert exact and all(w.sse == 0.0 for w in exact)
    assert all(totals[8][name] <= totals[4][name] for name in totals[4])


def test_not_worse_than_coremltools_kmeans(ios16: ct.models.MLModel) -> None:
    _, ours = compress(ios16, Palettize(4))
    _, theirs = compress(ios16, Palettize(4, method="coremltools"))
    assert theirs.uncompressed == [] and len(theirs.compressed) == N_WEIGHTS
    theirs_sse = {w.name: w.sse for w in theirs.compressed}
    for w in ours.compressed:
        assert w.sse <= theirs_sse[w.name] * (1 + 1e-9), w.name


def test_int8_quantization_covers_every_weight(ios16: ct.models.MLModel, sites: list) -> None:
    spec = QuantizeInt8()
    assert required_target(spec) == ct.target.iOS16
    new, report = compress(ios16, spec)
    assert report.uncompressed == [] and len(report.compressed) == N_WEIGHTS
    producers = weight_producers(new)
    for site in sites:
        op = producers[site.op_name]
        # iOS16/17 form; an iOS18 model gets constexpr_blockwise_shift_scale instead.
        assert op.op_type == "constexpr_affine_dequantize", site.weight_name
        assert op.quantized_data.val.dtype == np.int8
    assert set(bias_producers(new)) == {"const"}
    # Symmetric per-channel int8: error far below a 4-bit palette, but not zero.
    assert all(w.sse is not None and w.sse > 0 for w in report.compressed)


def test_int8_on_ios18_uses_blockwise_shift_scale(ios18: ct.models.MLModel) -> None:
    new, report = compress(ios18, QuantizeInt8())
    assert report.uncompressed == [] and len(report.compressed) == N_WEIGHTS
    assert {op.op_type for op in weight_producers(new).values()} == {
        "constexpr_blockwise_shift_scale"
    }


def test_model_loaded_from_disk(ios16: ct.models.MLModel, tmp_path) -> None:
    # A saved package has no in-memory MIL program: weights are read from its weight file.
    path = tmp_path / "m.mlpackage"
    ios16.save(str(path))
    loaded = ct.models.MLModel(str(path), skip_model_load=True)
    new, report = compress(loaded, Palettize(6))
    assert report.uncompressed == [] and len(report.compressed) == N_WEIGHTS
    assert {op.op_type for op in weight_producers(new).values()} == {"constexpr_lut_to_dense"}


def test_grouped_palettes_need_ios18(ios16: ct.models.MLModel) -> None:
    spec = Palettize(4, granularity="per-grouped-channel", group_size=16)
    assert required_target(spec) == ct.target.iOS18
    with pytest.raises(UserError, match="iOS18"):
        compress(ios16, spec)


def test_grouped_palettes_cover_every_weight(ios18: ct.models.MLModel) -> None:
    spec = Palettize(4, granularity="per-grouped-channel", group_size=16)
    new, report = compress(ios18, spec)
    assert report.uncompressed == [] and len(report.compressed) == N_WEIGHTS
    # Precomputed palettes matched coremltools' grouping exactly: nothing computed late.
    assert report.lut_cache_misses == 0
    sites, _ = find_weight_sites(load_program(ios18))
    producers = weight_producers(new)
    for site in sites:
        op = producers[site.op_name]
        assert op.op_type == "constexpr_lut_to_dense"
        lut = op.lut.val
        channels = site.shape[0]
        group = report.group_sizes[site.weight_name]
        assert channels % group == 0 and group <= 16
        assert lut.dtype == np.float16
        assert lut.shape[0] == channels // group and lut.shape[-2:] == (16, 1)
    # 1000 classes are not a multiple of 16: the classifier gets groups of 10, not skipped.
    assert report.group_sizes["classifier_weight_to_fp16"] == 10
    assert any("classifier_weight_to_fp16" in line for line in report.summary_lines())
    by_name = {w.name: w.sse for w in report.compressed}
    _, per_tensor = compress(ios18, Palettize(4))
    # More palettes can only fit better.
    for w in per_tensor.compressed:
        assert by_name[w.name] <= w.sse * (1 + 1e-9)


def test_three_bits_needs_ios18_and_works_there(ios16, ios18) -> None:
    spec = Palettize(3)
    assert required_target(spec) == ct.target.iOS18
    with pytest.raises(UserError, match="iOS18"):
        compress(ios16, spec)
    new, report = compress(ios18, spec)
    assert report.uncompressed == [] and len(report.compressed) == N_WEIGHTS
    assert {op.lut.val.shape[-2] for op in weight_producers(new).values()} == {8}


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"bits": 5}, "takes 8, 6, 4"),
        ({"bits": True}, "takes 8, 6, 4"),
        ({"bits": 8, "granularity": "per-channel"}, "granularity must be"),
        ({"bits": 8, "group_size": 0}, "group size must be"),
        ({"bits": 8, "method": "lloyd"}, "method must be"),
    ],
)
def test_config_validation(kwargs: dict, message: str) -> None:
    with pytest.raises(UserError, match=message) as info:
        Palettize(**kwargs)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    "config",
    [
        None,
        Palettize(8),
        Palettize(6),
        Palettize(4),
        Palettize(3),
        Palettize(1),
        Palettize(4, granularity="per-grouped-channel", group_size=8),
        Palettize(8, method="coremltools"),
        QuantizeInt8(),
    ],
)
def test_metadata_round_trip(config) -> None:
    text = to_metadata(config)
    assert json.loads(text)["mode"] == ("none" if config is None else config.mode)
    assert from_metadata(text) == config


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("palettized, 8 bits", "not JSON"),
        ('{"bits": 8}', "no mode"),
        ('{"mode": "sparse"}', "mode 'sparse' is unknown"),
        ('{"mode": "palettize", "bits": 5, "granularity": "per-tensor"}', "takes 8, 6, 4"),
        ('{"mode": "palettize", "bits": "8", "granularity": "per-tensor"}', "integer"),
        ('{"mode": "int8", "bits": 4}', "int8 with bits 4"),
    ],
)
def test_metadata_garbage_is_a_user_error(text: str, message: str) -> None:
    with pytest.raises(UserError, match=message):
        from_metadata(text)


def test_every_config_has_a_pass_and_a_target() -> None:
    from mnv1_coreml.compress.api import _PASSES

    for mode, cls in CONFIGS.items():
        assert cls in _PASSES, mode
