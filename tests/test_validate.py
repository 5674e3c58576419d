"""validate: passes good packages, and must fail (exit 1) on each kind of broken one."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from mnv1_coreml.cli import main
from mnv1_coreml.convert import ConvertOptions, convert
from mnv1_coreml.coreml import ct
from mnv1_coreml.golden import golden_for, read_golden, write_golden
from mnv1_coreml.images import INCEPTION
from mnv1_coreml.validate import compare_image, model_kind, validate
from mnv1_coreml.weights import load_weights, save_state_dict_file


def edit_spec(package: Path, edit) -> None:
    """Change the saved spec in place (the weights file is untouched)."""
    manifest = json.loads((package / "Manifest.json").read_text())
    root = manifest["itemInfoEntries"][manifest["rootModelIdentifier"]]["path"]
    spec = ct.utils.load_spec(str(package))
    edit(spec)
    (package / "Data" / root).write_bytes(spec.SerializeToString())


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A good fp32 package from a weights file, its golden, and a copy of the file."""
    root = tmp_path_factory.mktemp("validate")
    w = load_weights("random", 0.25, 128, seed=5)
    weights_file = root / "w.safetensors"
    save_state_dict_file(weights_file, w.state_dict, w.settings)
    golden_dir = root / "golden"
    write_golden(golden_for(0.25, 128, str(weights_file)), golden_dir)
    good = root / "good.mlpackage"
    convert(ConvertOptions(alpha=0.25, res=128, weights=str(weights_file), precision="fp32",
                           output=good, validate=False))
    return {"root": root, "weights": weights_file, "golden": golden_dir, "good": good}


def run_validate(package: Path, golden: Path, capsys, *extra: str) -> tuple[int, str]:
    code = main(["validate", str(package), "--golden", str(golden), *extra])
    return code, capsys.readouterr().out


def test_good_package_passes_with_json(setup, capsys) -> None:
    report_path = setup["root"] / "report.json"
    code, text = run_validate(setup["good"], setup["golden"], capsys, "--json", str(report_path))
    assert code == 0, text
    assert "validate PASS: reference backend, fp32" in text
    report = json.loads(report_path.read_text())
    assert report["passed"] and report["backend"] == "reference" and len(report["images"]) == 12
    assert max(i["max_abs"] for i in report["images"]) <= 1e-4
    assert report["compared_on"] == "logits"


def test_bgr_input_fails(setup, capsys, tmp_path: Path) -> None:
    bad = tmp_path / "bgr.mlpackage"
    shutil.copytree(setup["good"], bad)

    def to_bgr(spec) -> None:
        spec.description.input[0].type.imageType.colorSpace = (
            ct.proto.FeatureTypes_pb2.ImageFeatureType.ColorSpace.Value("BGR"))

    edit_spec(bad, to_bgr)
    code, text = run_validate(bad, setup["golden"], capsys)
    assert code == 1
    assert "colour space is BGR" in text
    assert "probe_red" in text and "validate FAIL" in text


def test_wrong_scale_and_bias_fails(setup, capsys, tmp_path: Path) -> None:
    bad = tmp_path / "scale.mlpackage"  # x/127.5 - 1 instead of the weights' ImageNet mean/std
    convert(ConvertOptions(alpha=0.25, res=128, weights=str(setup["weights"]), precision="fp32",
                           output=bad, validate=False, overrides={"normalization": INCEPTION}))
    code, text = run_validate(bad, setup["golden"], capsys)
    assert code == 1 and "validate FAIL" in text and "max abs error" in text


def test_one_perturbed_conv_weight_fails(setup, capsys, tmp_path: Path) -> None:
    w = load_weights(str(setup["weights"]), 0.25, 128)
    state = {k: v.clone() for k, v in w.state_dict.items()}
    state["blocks.6.pw.conv.weight"][3, 7, 0, 0] += 0.5
    perturbed = tmp_path / "perturbed.safetensors"
    save_state_dict_file(perturbed, state, w.settings)
    bad = tmp_path / "perturbed.mlpackage"
    convert(ConvertOptions(alpha=0.25, res=128, weights=str(perturbed), precision="fp32",
                           output=bad, validate=False))
    code, text = run_validate(bad, setup["golden"], capsys)
    assert code == 1 and "validate FAIL" in text


def test_labels_in_wrong_order_fail(setup, capsys, tmp_path: Path) -> None:
    bad = tmp_path / "labels.mlpackage"
    shutil.copytree(setup["good"], bad)
    golden = read_golden(setup["golden"])
    top = int(golden.logits[0].argmax())
    other = (top + 1) % 1000

    def swap(spec) -> None:
        fn = spec.mlProgram.functions["main"]
        block = fn.block_specializations[fn.opset]
        for op in block.operations:
            if op.type == "classify":
                arg = op.inputs["classes"].arguments[0]
                values = arg.value.immediateValue.list.values
                a = values[top].immediateValue.tensor.strings.values
                b = values[other].immediateValue.tensor.strings.values
                a[0], b[0] = b[0], a[0]

    edit_spec(bad, swap)
    code, text = run_validate(bad, setup["golden"], capsys)
    assert code == 1
    assert "class labels differ from the golden's in order" in text
    assert "top-1 differs" in text


def test_golden_found_by_metadata_or_command_given(setup, capsys, tmp_path: Path) -> None:
    assert main(["validate", str(setup["good"])]) == 2
    err = capsys.readouterr().err
    assert "mnv1-coreml golden --alpha 0.25 --res 128 --weights" in err


def test_committed_golden_is_found(small_packages: dict[str, Path], capsys) -> None:
    code = main(["validate", str(small_packages["fp16"])])
    text = capsys.readouterr().out
    assert code == 0, text
    assert "golden/random-0_0.25_128" in text and "fp16" in text


def test_coreml_backend_refused_off_macos(setup, capsys) -> None:
    import platform

    if platform.system() == "Darwin":
        pytest.skip("on macOS the Core ML backend is available")
    code = main(["validate", str(setup["good"]), "--golden", str(setup["golden"]),
                 "--backend", "coreml"])
    assert code == 2
    assert "needs macOS" in capsys.readouterr().err


def test_ambiguous_top1_is_not_a_failure() -> None:
    from mnv1_coreml.validate import TOLERANCES

    labels = [f"c{i}" for i in range(5)]
    golden = np.array([1.0, 0.99, 0.0, -1.0, -2.0])
    pred = np.array([0.99, 1.0, 0.0, -1.0, -2.0])
    r = compare_image("tie", golden, pred, False, 1, labels, TOLERANCES["fp16"])
    assert r.status == "ambiguous" and not r.top1_agree
    far = np.array([0.0, 1.0, 0.0, -1.0, -2.0])
    r = compare_image("flip", golden * 10, far * 10, False, 1, labels, TOLERANCES["fp16"])
    assert r.status == "FAIL"


def test_probabilities_with_fp16_underflow() -> None:
    from mnv1_coreml.validate import TOLERANCES

    labels = [f"c{i}" for i in range(4)]
    golden = np.array([10.0, 5.0, 0.0, -30.0])  # class 3: e^-40, below fp16's 2^-24
    probs = torch.softmax(torch.tensor(golden), 0).numpy()
    probs16 = probs.astype(np.float16).astype(np.float64)
    assert probs16[3] == 0
    r = compare_image("p", golden, probs16, True, 0, labels, TOLERANCES["fp16"])
    assert r.status == "pass" and r.underflow == 1
    wrong = probs16.copy()
    wrong[1] = 0.0  # a class that should have a real probability
    r = compare_image("p", golden, wrong, True, 0, labels, TOLERANCES["fp16"])
    assert r.status == "FAIL" and any("probability 0" in x for x in r.reasons)


def test_model_kind_from_metadata() -> None:
    assert model_kind({"mnv1.precision": "fp32"}) == "fp32"
    assert model_kind({"mnv1.precision": "fp16"}) == "fp16"
    assert model_kind({"mnv1.palettization": "6-bit per-tensor kmeans-optimal"}) == "palettized-6"
    assert model_kind({"mnv1.quantization": "int8 linear-symmetric per-channel"}) == "int8"
    assert model_kind({"mnv1.palettization": "2-bit per-tensor kmeans-optimal"}) == "palettized-low"


def test_validate_api_reports_backend(setup) -> None:
    report = validate(setup["good"], read_golden(setup["golden"]), backend="reference")
    assert report.backend == "reference" and report.passed
