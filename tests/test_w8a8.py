"""W8A8: calibration with the reference interpreter, coremltools' activation passes, and what
the packages do (coverage, validation, size, wrong scales failing)."""

from __future__ import annotations

import inspect
import json
from collections import Counter

import numpy as np
import pytest

from mnv1_coreml.compress import w8a8
from mnv1_coreml.coreml import ct, cto, load_program, quiet_coremltools, shared_constants

ALPHA, RES = 0.25, 128


@pytest.fixture(scope="module")
def fp16_ios17() -> ct.models.MLModel:
    """The fp16 iOS17 0.25-128 random-weight classifier, as ``convert`` hands it to compress."""
    from mnv1_coreml.export import export
    from mnv1_coreml.weights import build_model, load_weights

    weights = load_weights("random", ALPHA, RES, seed=0)
    model = build_model(ALPHA, RES, weights)
    return export(model, weights.settings.normalization, target="iOS17")


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    return w8a8.calibration_images(RES)[0]


@pytest.fixture(scope="module")
def calibration(fp16_ios17, images) -> w8a8.Calibration:
    return w8a8.calibrate(fp16_ios17, images, source="test")


@pytest.fixture(scope="module")
def a8(fp16_ios17, calibration) -> ct.models.MLModel:
    """fp16 weights, int8 activations: our stats through coremltools' passes."""
    return w8a8.apply_activation_passes(fp16_ios17, calibration.stats)


def _quantize_scales(program) -> dict[str, float]:
    """Scale of each ``quantize`` op, keyed by the name of the activation it quantizes."""
    fn = program.functions["main"]
    return {
        op.inputs["input"].name: float(op.inputs["scale"].val)
        for op in fn.operations
        if op.op_type == "quantize"
    }


# --- what we rely on in coremltools (a change there must fail here, not for a user) ---------


def test_coremltools_private_api_is_where_we_pin_it() -> None:
    from coremltools.converters.mil.mil.passes.pass_registry import PASS_REGISTRY
    from coremltools.models import utils as model_utils
    from coremltools.optimize.coreml import _post_training_quantization as ptq
    from coremltools.optimize.coreml.experimental import _post_training_quantization as exp

    major = int(ct.__version__.split(".")[0])
    assert major == 9, f"pyproject pins coremltools>=9.0,<10; found {ct.__version__}"
    for name in w8a8.COREMLTOOLS_PASSES:
        assert name in PASS_REGISTRY, name
    for name in w8a8.COREMLTOOLS_PASSES[:2]:
        graph_pass = PASS_REGISTRY[name]
        assert hasattr(graph_pass, "config") and hasattr(graph_pass, "activation_stats"), name
    params = list(inspect.signature(model_utils._apply_graph_pass).parameters)
    assert params[:5] == [
        "mlmodel",
        "graph_pass",
        "spec_version",
        "skip_model_load",
        "pymil_load_func",
    ]
    # the one step that needs the runtime, and the one we replace
    assert list(inspect.signature(ptq._get_activation_calibration_stats).parameters) == [
        "fpmodel",
        "sample_data",
        "calibration_op_group_size",
    ]
    assert callable(exp._adjust_concat_surrounding_activation_stats)
    # what makes conv -> relu6 one quantized unit (our model traces ReLU6 to relu6 for it)
    assert {"relu", "relu6"} <= w8a8.fused_activations()
    # its pass list, in its order: if coremltools adds a pass, we must add it too
    source = inspect.getsource(ptq.linear_quantize_activations)
    found = [name for name in w8a8.COREMLTOOLS_PASSES if f'"{name}"' in source]
    assert found == list(w8a8.COREMLTOOLS_PASSES)
    assert source.count("PASS_REGISTRY[") == len(w8a8.COREMLTOOLS_PASSES)


def test_same_vars_as_coremltools_model_debugger(fp16_ios17, calibration) -> None:
    """The vars we calibrate are exactly those coremltools' ModelDebugger would record."""
    from coremltools.optimize.coreml.experimental._model_debugger import ModelDebugger

    debugger = ModelDebugger(fp16_ios17)
    names = debugger.get_intermediate_output_names(lambda op: op.spec.type != "const")
    outputs = {o.name for o in fp16_ios17.get_spec().description.output}
    ops = debugger.block_info.operations
    theirs = {
        n
        for n in names
        if n not in outputs and ModelDebugger.get_output_feature_type(n, ops) is not None
    }
    ours = set(w8a8.calibration_var_names(load_program(fp16_ios17), outputs))
    assert ours == theirs
    assert len(ours) > 60  # every conv, relu6, ... of the 0.25-128 network
    # plus the input's range, as coremltools records it
    assert set(calibration.stats) == ours | {"image"}


def test_same_program_as_coremltools_linear_quantize_activations(
    fp16_ios17, calibration, a8, monkeypatch
) -> None:
    """coremltools' own function, with only its runtime step replaced by our statistics,
    builds the same program as ours: same ops in the same order, same scales."""
    from coremltools.optimize.coreml import _post_training_quantization as ptq

    monkeypatch.setattr(ptq, "_get_activation_calibration_stats", lambda *a, **k: calibration.stats)
    with quiet_coremltools():
        theirs = cto.linear_quantize_activations(
            fp16_ios17, w8a8.activation_config(), [{"image": None}]
        )
    p_ours, p_theirs = load_program(a8), load_program(theirs)
    types = [[op.op_type for op in p.functions["main"].operations] for p in (p_ours, p_theirs)]
    assert types[0] == types[1]
    assert _quantize_scales(p_ours) == _quantize_scales(p_theirs)
    counts = Counter(types[0])
    assert counts["quantize"] == counts["dequantize"] == 30


def test_coremltools_9_0_keeps_only_the_last_samples_range() -> None:
    """Why ``accumulate=False`` exists (apple/coremltools#2704): 9.0 overwrites the range."""
    if ct.__version__ == "9.0":
        assert not w8a8.coremltools_accumulates()


# --- calibration -------------------------------------------------------------------------


def test_ranges_span_every_image_or_only_the_last(fp16_ios17, images) -> None:
    from mnv1_coreml.mil import ReferenceModel
    from mnv1_coreml.mil.loader import LoadedPackage, _image_inputs

    spec = fp16_ios17.get_spec()
    outputs = [o.name for o in spec.description.output]
    model = ReferenceModel(
        LoadedPackage(None, load_program(fp16_ios17), spec, _image_inputs(spec), outputs)
    )
    names = w8a8.calibration_var_names(load_program(fp16_ios17), outputs)
    subset = images[[0, 5, 11]]  # a photo, another, the checkerboard probe
    per_image = [model.predict(subset[i : i + 1], outputs=names) for i in range(len(subset))]
    every = w8a8.calibrate(fp16_ios17, subset)
    last = w8a8.calibrate(fp16_ios17, subset, accumulate=False)
    assert (every.images, last.images) == (3, 1)
    for name in names:
        lo = min(float(v[name].min()) for v in per_image)
        hi = max(float(v[name].max()) for v in per_image)
        assert every.stats[name] == {"rmin": lo, "rmax": hi}, name
        assert last.stats[name]["rmax"] == float(per_image[-1][name].max()), name
    assert every.stats["image"] == {"rmin": 0.0, "rmax": 255.0}
    # the checkerboard alone does not reach the photos' ranges everywhere
    assert any(last.stats[n]["rmax"] < every.stats[n]["rmax"] for n in names)


def test_calibration_directory(tmp_path) -> None:
    from PIL import Image

    from mnv1_coreml.errors import UserError

    rng = np.random.default_rng(0)
    for i, size in enumerate(((200, 150), (64, 64))):
        arr = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
        Image.fromarray(arr).save(tmp_path / f"p{i}.png")
    imgs, source = w8a8.calibration_images(RES, tmp_path)
    assert imgs.shape == (2, RES, RES, 3) and imgs.dtype == np.uint8
    assert source == str(tmp_path)
    with pytest.raises(UserError, match="not a directory"):
        w8a8.calibration_images(RES, tmp_path / "missing")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(UserError, match="no images"):
        w8a8.calibration_images(RES, empty)


def test_report_names_every_fp16_activation_with_a_reason(fp16_ios17, calibration, a8):
    report = w8a8.describe_activations(load_program(fp16_ios17), load_program(a8), calibration)
    assert report.conv_inputs == (27, 27)
    assert len(report.quantized) + len(report.fp16) == len(calibration.stats) - 1
    left = dict(report.fp16)
    assert "add with a constant operand" in left["image__scaled__"]
    assert sum("fused with its activation" in why for why in left.values()) == 27
    assert all(reason for reason in left.values())
    text = "\n".join(report.summary_lines())
    assert "12 images" in text and "more representative images give better scales" in text
    assert f"{len(report.quantized)}/{len(calibration.stats) - 1} quantized" in text
    assert "and 25 more: conv -> relu6: fused with its activation" in text  # grouped by reason


# --- the packages convert makes ------------------------------------------------------------

@pytest.fixture(scope="module")
def packages(tmp_path_factory) -> dict:
    """A W8A8 0.25-128 package from ``convert``, validated at birth; and int8 (weights only)
    and W8A8 packages made from the same fp16 model without metadata, to compare sizes."""
    from mnv1_coreml.compress.config import QuantizeW8A8
    from mnv1_coreml.pipeline import ConvertOptions, convert

    root = tmp_path_factory.mktemp("w8a8")
    return {"w8a8": convert(ConvertOptions(
        alpha=ALPHA, res=RES, weights="random", compression=QuantizeW8A8(),
        output=root / "w8a8.mlpackage",
    ))}


def test_w8a8_package_covers_convs_and_validates(packages) -> None:
    from mnv1_coreml.metadata import COMPRESSION_KEY
    from mnv1_coreml.mil import ReferenceModel

    result = packages["w8a8"]
    assert result.target == "iOS17"
    assert result.validation.passed and result.validation.kind == "w8a8", (
        result.validation.verdict_line()
    )
    program = ReferenceModel.load(result.path).package.program
    fed, convs = w8a8.conv_input_coverage(program)
    assert convs == 27 and fed / convs >= 0.9
    report = result.compression_report
    assert len(report.compressed) == 28 and not report.uncompressed  # int8 weights
    assert report.activations.conv_inputs == (fed, convs)
    assert report.to_json()["activations"]["calibration_images"] == 12
    assert json.loads(result.metadata[COMPRESSION_KEY])["mode"] == "w8a8"


def test_w8a8_is_the_int8_package_plus_the_pairs(fp16_ios17, a8, packages, tmp_path) -> None:
    """The same int8 weight blob as ``--quantize int8``; what W8A8 adds is the quantize and
    dequantize ops in the spec (~520 bytes a pair, their scale shared by the two ops: 0.35% of a
    1.0-224 package, 2.9% of 0.25-128)."""
    from mnv1_coreml.compress.palettize import find_weight_sites
    from mnv1_coreml.compress.quantize import quantizer_config
    from mnv1_coreml.sizes import package_bytes

    sites, _ = find_weight_sites(load_program(fp16_ios17))
    paths = {}
    with quiet_coremltools(), shared_constants():  # as compress() runs every pass
        for name, model in (("int8", fp16_ios17), ("w8a8", a8)):
            paths[name] = tmp_path / f"{name}.mlpackage"
            cto.linear_quantize_weights(model, quantizer_config(sites)).save(str(paths[name]))
    blob = "Data/com.apple.CoreML/weights/weight.bin"
    int8_blob = (paths["int8"] / blob).read_bytes()
    assert (paths["w8a8"] / blob).read_bytes() == int8_blob
    assert (packages["w8a8"].path / blob).read_bytes() == int8_blob  # what convert writes
    operations = list(load_program(a8).functions["main"].operations)
    pairs = Counter(op.op_type for op in operations)
    extra = package_bytes(paths["w8a8"]) - package_bytes(paths["int8"])
    # one pair per activation: the image, each relu6 output, the classifier's input and output
    assert pairs["quantize"] == pairs["dequantize"] == 1 + 27 + 2
    assert 0 < extra < 600 * pairs["quantize"]  # 700 with a scale const per op


def test_pairs_sit_after_the_activation_not_between_conv_and_relu6(a8) -> None:
    """coremltools' suffix pass fuses conv -> relu6 and quantizes the activation's output, the
    pattern the Neural Engine runs; ``nn.ReLU6`` traced to ``clip`` instead, which got a pair on
    the raw conv output too (56 pairs, half of each conv's int8 range spent on negatives)."""
    operations = list(load_program(a8).functions["main"].operations)
    convs = [op for op in operations if op.op_type == "conv"]
    assert not any(op.op_type == "clip" for op in operations)
    for conv in convs:
        (act,) = conv.outputs[0].child_ops
        assert act.op_type == "relu6"
        assert {child.op_type for child in act.outputs[0].child_ops} <= {"quantize"}


def _scale_quantize(package, factor: float) -> str:
    """Multiply the scale of the middle ``quantize`` op (a conv input) in the saved spec. Its
    dequantize shares the scale const, so the quantize gets a scaled copy of its own."""
    manifest = json.loads((package / "Manifest.json").read_text())
    root = manifest["itemInfoEntries"][manifest["rootModelIdentifier"]]["path"]
    spec = ct.utils.load_spec(str(package))
    (block,) = spec.mlProgram.functions["main"].block_specializations.values()
    ops = list(block.operations)
    consts = {op.outputs[0].name: op for op in ops if op.type == "const"}
    quantizes = [op for op in ops if op.type == "quantize"]
    op = quantizes[len(quantizes) // 2]
    arg = op.inputs["scale"].arguments[0]
    scaled = type(consts[arg.name])()
    scaled.CopyFrom(consts[arg.name])
    scaled.outputs[0].name = arg.name = f"{arg.name}_x{factor:g}"
    scaled.attributes["name"].immediateValue.tensor.strings.values[0] = arg.name
    tensor = scaled.attributes["val"].immediateValue.tensor
    scale = np.frombuffer(tensor.bytes.values, np.float16)
    tensor.bytes.values = (scale * np.float16(factor)).astype(np.float16).tobytes()
    block.operations.insert(ops.index(op), scaled)
    (package / "Data" / root).write_bytes(spec.SerializeToString())
    return op.inputs["input"].arguments[0].name


def test_wrong_activation_scale_fails_validation(packages, tmp_path) -> None:
    import shutil

    from mnv1_coreml.validation import validate

    bad = tmp_path / "bad.mlpackage"
    shutil.copytree(packages["w8a8"].path, bad)
    name = _scale_quantize(bad, 4.0)
    assert name.startswith("input_")
    report = validate(bad, backend="reference")
    assert not report.passed, report.verdict_line()
    assert report.kind == "w8a8"
    assert any("max abs error" in reason for r in report.images for reason in r.reasons)


def test_cli_calibration_errors(tmp_path, capsys) -> None:
    from mnv1_coreml.cli import main

    base = ["convert", "--alpha", "0.25", "--res", "128", "--weights", "random",
            "-o", str(tmp_path / "m.mlpackage")]
    cases = [
        (["--quantize", "w8a8", "--calibration", str(tmp_path / "nope")], "not a directory"),
        (["--quantize", "int8", "--calibration", str(tmp_path)], "needs --quantize w8a8"),
        (["--quantize", "w8a8", "--calibration", str(tmp_path)], "no images"),
        (["--quantize", "w8a8", "--target", "iOS16"], "iOS17"),
        (["--quantize", "w8a8", "--precision", "fp32"], "w8a8 needs precision fp16"),
    ]
    for extra, needle in cases:
        assert main(base + extra) == 2
        err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
        assert len(err) == 1 and err[0].startswith("mnv1-coreml: error: ") and needle in err[0]
    assert list(tmp_path.iterdir()) == []


def test_config_metadata_round_trip_keeps_only_the_directory_name(tmp_path) -> None:
    from mnv1_coreml.compress.config import QuantizeW8A8, from_metadata, to_metadata
    from mnv1_coreml.errors import UserError

    for config in (QuantizeW8A8(), QuantizeW8A8("photos")):
        assert from_metadata(to_metadata(config)) == config
        assert config.kind() == "w8a8" and config.required_target() == "iOS17"
    recorded = json.loads(to_metadata(QuantizeW8A8(tmp_path / "shots")))
    assert recorded["mode"] == "w8a8" and recorded["calibration"] == "shots"
    assert str(tmp_path) not in json.dumps(recorded)
    with pytest.raises(UserError, match="w8a8 with bits 4"):
        from_metadata('{"mode": "w8a8", "bits": 4}')
