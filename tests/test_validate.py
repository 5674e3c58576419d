"""validate: passes good packages, and must fail (exit 1) on each kind of broken one."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from mnv1_coreml.cli import main
from mnv1_coreml.coreml import ct
from mnv1_coreml.errors import UserError
from mnv1_coreml.golden import golden_for, read_golden, write_golden
from mnv1_coreml.images import INCEPTION
from mnv1_coreml.metadata import model_kind
from mnv1_coreml.pipeline import ConvertOptions, convert
from mnv1_coreml.validation import compare_image, validate
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
    from mnv1_coreml.validation import TOLERANCES

    labels = [f"c{i}" for i in range(5)]
    golden = np.array([1.0, 0.99, 0.0, -1.0, -2.0])
    pred = np.array([0.99, 1.0, 0.0, -1.0, -2.0])
    r = compare_image("tie", golden, pred, False, 1, labels, TOLERANCES["fp16"])
    assert r.status == "ambiguous" and not r.top1_agree
    far = np.array([0.0, 1.0, 0.0, -1.0, -2.0])
    r = compare_image("flip", golden * 10, far * 10, False, 1, labels, TOLERANCES["fp16"])
    assert r.status == "FAIL"


def test_probabilities_with_fp16_underflow() -> None:
    from mnv1_coreml.validation import TOLERANCES

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
    assert model_kind({"mnv1.precision": "fp16", "mnv1.compression": '{"mode":"none"}'}) == "fp16"
    pal6 = '{"mode":"palettize","bits":6,"granularity":"per-tensor","group_size":null}'
    assert model_kind({"mnv1.compression": pal6}) == "palettized-6"
    assert model_kind({"mnv1.compression": '{"mode":"int8","bits":8}'}) == "int8"
    pal2 = '{"mode":"palettize","bits":2,"granularity":"per-grouped-channel","group_size":4}'
    assert model_kind({"mnv1.compression": pal2}) == "palettized-low"
    # prose is never parsed: the human-readable key alone says nothing about the kind
    assert model_kind({"mnv1.palettization": "6-bit per-tensor kmeans-optimal"}) == "fp16"


@pytest.mark.parametrize(
    "metadata",
    [
        {"mnv1.compression": "6-bit"},
        {"mnv1.compression": '{"mode":"w4a4"}'},
        {"mnv1.compression": '{"mode":"palettize","bits":7,"granularity":"per-tensor"}'},
        {"mnv1.precision": "bf16"},
    ],
)
def test_model_kind_rejects_unknown_metadata(metadata: dict) -> None:
    with pytest.raises(UserError, match="mnv1"):
        model_kind(metadata)


def test_validate_api_reports_backend(setup) -> None:
    report = validate(setup["good"], read_golden(setup["golden"]), backend="reference")
    assert report.backend == "reference" and report.passed


def test_golden_with_other_architecture_settings_is_named(setup, capsys, tmp_path: Path) -> None:
    # same weights, same alpha/res, but made with TF padding and another BN eps
    other = tmp_path / "golden_tf"
    write_golden(golden_for(0.25, 128, str(setup["weights"]),
                            overrides={"padding": "tf", "bn_eps": 1e-3}), other)
    code, text = run_validate(setup["good"], other, capsys)
    assert code == 1
    assert "architecture setting differs from the golden's: padding: model has torch, golden " \
           "has tf" in text
    assert "bn_eps: model has 1e-05, golden has 0.001" in text


def test_golden_lookup_matches_architecture_settings(setup, tmp_path: Path, monkeypatch) -> None:
    from mnv1_coreml.golden import find_golden
    from mnv1_coreml.metadata import settings_of
    from mnv1_coreml.modelspec import read_contract

    root = tmp_path / "goldens"
    root.mkdir()
    # sorted first, so a lookup that ignores the settings picks it
    write_golden(golden_for(0.25, 128, str(setup["weights"]), overrides={"padding": "tf"}),
                 root / "a_tf")
    write_golden(read_golden(setup["golden"]), root / "b_plain")
    monkeypatch.setenv("MNV1_COREML_GOLDEN", str(root))
    meta = read_contract(setup["good"]).metadata
    sha = meta["mnv1.weights_sha256"]
    assert find_golden(0.25, 128, sha, settings_of(meta)) == root / "b_plain"
    tf_meta = {**meta, "mnv1.padding": "tf"}
    assert find_golden(0.25, 128, sha, settings_of(tf_meta)) == root / "a_tf"
    relu = {**meta, "mnv1.activation": "relu"}
    assert find_golden(0.25, 128, sha, settings_of(relu)) is None
    report = validate(str(setup["good"]), backend="reference")  # str path, golden found
    assert report.passed and report.golden == str(root / "b_plain")


def test_golden_command_keeps_overrides_and_quotes_paths(
    setup, tmp_path: Path, monkeypatch, capsys
) -> None:
    import shlex

    from mnv1_coreml.modelspec import read_contract
    from mnv1_coreml.validation import golden_command

    meta = {**read_contract(setup["good"]).metadata, "mnv1.weights": "/my weights/w's.pt",
            "mnv1.padding": "tf", "mnv1.bn_eps": "0.001"}
    args = shlex.split(golden_command(meta))
    assert args[:2] == ["mnv1-coreml", "golden"]
    assert args[args.index("--weights") + 1] == "/my weights/w's.pt"
    assert args[args.index("--padding") + 1] == "tf"
    assert args[args.index("--activation") + 1] == "relu6"
    assert float(args[args.index("--bn-eps") + 1]) == 1e-3
    mean = [float(v) for v in args[args.index("--mean") + 1].split(",")]
    std = [float(v) for v in args[args.index("--std") + 1].split(",")]
    assert mean == [0.485, 0.456, 0.406] and std == [0.229, 0.224, 0.225]
    # the command's options are the CLI's own: it parses, and stops at the missing file
    monkeypatch.chdir(tmp_path)
    (tmp_path / "golden").mkdir()
    assert main(args[1:]) == 2
    assert "w's.pt" in capsys.readouterr().err
    assert list((tmp_path / "golden").iterdir()) == []


def test_unknown_compression_metadata_is_a_one_line_error(setup, capsys, tmp_path: Path) -> None:
    bad = tmp_path / "unknown.mlpackage"
    shutil.copytree(setup["good"], bad)

    def future_mode(spec) -> None:
        spec.description.metadata.userDefined["mnv1.compression"] = '{"mode": "w4a4"}'

    edit_spec(bad, future_mode)
    code = main(["validate", str(bad), "--golden", str(setup["golden"])])
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert code == 2 and len(err) == 1, err
    assert "mnv1.compression mode 'w4a4' is unknown" in err[0]
