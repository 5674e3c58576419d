"""``validate --layers``: the report names exactly the layer that was broken in the saved package.

Faults are injected into the package's ``weight.bin`` (no reconversion) or its description (the
input's colour space); healthy fp16 and 8-bit packages of random and fixture weights must flag
nothing. All 0.25-128, reusing the session's ``small_packages``.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from mnv1_coreml.errors import UserError
from mnv1_coreml.golden import read_golden
from mnv1_coreml.layers import (
    LAYER_NAMES,
    LAYER_THRESHOLDS,
    LayerReport,
    LayerThreshold,
    compare_layers,
    map_layers,
    scale_stored_weight,
    step_psnr,
    validate_layers,
)
from mnv1_coreml.model import MobileNetConfig

REPO = Path(__file__).resolve().parent.parent
RANDOM_GOLDEN = REPO / "golden" / "random-0_0.25_128"
KERAS_GOLDEN = REPO / "golden" / "keras_mobilenet_0.25_128"


def _report(package: Path, golden_dir: Path = RANDOM_GOLDEN) -> LayerReport:
    return validate_layers(package, read_golden(golden_dir), golden_dir=golden_dir)


@pytest.fixture(scope="module")
def more_packages(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """8-bit palettized random weights, and fp16 / 8-bit of the Keras-written fixture."""
    from mnv1_coreml.compress import Palettize
    from mnv1_coreml.pipeline import ConvertOptions, convert

    root = tmp_path_factory.mktemp("layers")
    keras = str(REPO / "tests" / "data" / "keras_mobilenet_0.25_128.h5")
    made = {}
    for name, weights, comp in (
        ("random-pal8", "random", Palettize(8)),
        ("keras-fp16", keras, None),
        ("keras-pal8", keras, Palettize(8)),
    ):
        out = root / f"{name}.mlpackage"
        convert(ConvertOptions(alpha=0.25, res=128, weights=weights, compression=comp,
                               output=out, validate=False))
        made[name] = out
    return made


def test_layers_are_found_from_the_program_structure(small_packages: dict[str, Path]) -> None:
    from mnv1_coreml.mil import ReferenceModel

    model = ReferenceModel.load(small_packages["fp16"])
    taps = map_layers(model, MobileNetConfig(alpha=0.25, res=128))
    assert [t.name for t in taps] == list(LAYER_NAMES)
    assert [t.op_type for t in taps] == ["conv"] * 27 + ["reduce_mean", "linear"]
    assert taps[0].shape == (1, 8, 64, 64)
    assert taps[3].shape == (1, 16, 32, 32)  # blocks.1.dw: stride 2
    assert taps[-3].shape == (1, 256, 4, 4)
    assert taps[-1].var == model.logits_name
    # Every conv layer's value is its activation's output (ReLU6 traces to MIL relu6).
    producers = {op.outputs[0].name: op.op_type for op in model.package.main.operations}
    assert {producers[t.var] for t in taps[:27]} == {"relu6"}


def test_wrong_width_and_foreign_programs_are_refused(small_packages: dict[str, Path]) -> None:
    from coremltools.converters.mil import Builder as mb

    from mnv1_coreml.mil import ReferenceModel

    model = ReferenceModel.load(small_packages["fp16"])
    with pytest.raises(UserError, match=r"alpha 0.5 expects \(16, 3, 3, 3\)"):
        map_layers(model, MobileNetConfig(alpha=0.5, res=128))

    @mb.program(input_specs=[mb.TensorSpec(shape=(1, 3, 8, 8))])
    def one_conv(x):  # noqa: ANN001, ANN202
        w = np.ones((4, 3, 3, 3), np.float32)
        return mb.relu(x=mb.conv(x=x, weight=w))

    with pytest.raises(UserError, match="not MobileNet V1's program structure: 1 conv ops"):
        map_layers(ReferenceModel.from_program(one_conv), MobileNetConfig(alpha=0.25, res=128))


@pytest.mark.parametrize("layer", ["blocks.1.dw", "blocks.11.pw", "classifier"])
def test_one_scaled_layer_is_named(small_packages: dict[str, Path], tmp_path: Path,
                                   layer: str) -> None:
    package = tmp_path / "edited.mlpackage"
    shutil.copytree(small_packages["fp16"], package)
    weight_bin = package / "Data" / "com.apple.CoreML" / "weights" / "weight.bin"
    before = weight_bin.read_bytes()
    scale_stored_weight(package, layer, 2.0)
    after = weight_bin.read_bytes()
    changed = np.flatnonzero(np.frombuffer(before, np.uint8) != np.frombuffer(after, np.uint8))
    assert len(before) == len(after) and changed.size > 0
    report = _report(package)
    assert report.first_divergent_layer == layer, report.verdict_line()
    index = LAYER_NAMES.index(layer)
    assert all(r.ok for r in report.rows[:index])
    row = report.rows[index]
    assert row.psnr < report.threshold.min_psnr
    assert row.step_psnr < report.threshold.min_step_psnr


@pytest.mark.parametrize("name", ["fp16", "random-pal8", "keras-fp16", "keras-pal8"])
def test_healthy_packages_flag_no_layer(small_packages: dict[str, Path],
                                        more_packages: dict[str, Path], name: str) -> None:
    package = small_packages["fp16"] if name == "fp16" else more_packages[name]
    report = _report(package, KERAS_GOLDEN if name.startswith("keras") else RANDOM_GOLDEN)
    assert report.kind == ("fp16" if name.endswith("fp16") else "palettized-8")
    assert report.first_divergent_layer is None, report.verdict_line()
    data = report.to_json()
    assert [r["name"] for r in data["layers"]] == list(LAYER_NAMES)
    assert set(data["layers"][0]) == {"name", "max_abs", "rel_err", "cosine", "psnr", "ok"}
    assert data["first_divergent_layer"] is None
    json.dumps(data)


def test_bgr_model_is_flagged_at_stem(small_packages: dict[str, Path], tmp_path: Path) -> None:
    """A model whose input says BGR feeds the RGB-trained stem swapped channels."""
    from mnv1_coreml.coreml import ct

    package = tmp_path / "bgr.mlpackage"
    shutil.copytree(small_packages["fp16"], package)
    manifest = json.loads((package / "Manifest.json").read_text())
    root = manifest["itemInfoEntries"][manifest["rootModelIdentifier"]]["path"]
    spec = ct.utils.load_spec(str(package))
    spec.description.input[0].type.imageType.colorSpace = 30  # BGR
    (package / "Data" / root).write_bytes(spec.SerializeToString())
    report = _report(package)
    assert report.first_divergent_layer == "stem", report.verdict_line()


def test_step_psnr_separates_slow_growth_from_a_jump() -> None:
    th = LayerThreshold(min_psnr=30.0, min_step_psnr=40.0)
    # A palette that becomes lossy at one layer: 80 -> 65 dB adds error at ~65 dB: fine.
    assert step_psnr(80.0, 65.0) == pytest.approx(65.1, abs=0.1)
    # 50 -> 45 dB: the added error is at ~46.7 dB, fine; 50 -> 38 dB is a jump.
    assert step_psnr(50.0, 45.0) > th.min_step_psnr > step_psnr(50.0, 38.0)
    assert step_psnr(50.0, 52.0) == float("inf")
    ref = {n: np.linspace(-1, 1, 64).reshape(2, 32) for n in LAYER_NAMES}
    pkg = {n: v + 1e-3 for n, v in ref.items()}  # 60 dB everywhere
    pkg["blocks.3.pw"] = ref["blocks.3.pw"] + 0.05  # 26 dB: below the floor and a jump
    rows = compare_layers(pkg, ref, th)
    assert [r.name for r in rows if not r.ok][0] == "blocks.3.pw"
    assert rows[0].psnr == pytest.approx(20 * np.log10(2 / 1e-3), abs=1e-3)
    assert set(LAYER_THRESHOLDS) >= {"fp32", "fp16", "int8", "palettized-8", "palettized-4"}


def test_cli_layers_table_json_and_plot(small_packages: dict[str, Path], tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    from mnv1_coreml.cli import main

    package = tmp_path / "edited.mlpackage"
    shutil.copytree(small_packages["fp16"], package)
    scale_stored_weight(package, "blocks.11.pw", 2.0)
    report, plot = tmp_path / "r.json", tmp_path / "layers.png"
    code = main(["validate", str(package), "--golden", str(RANDOM_GOLDEN), "--layers",
                 "--json", str(report), "--plot", str(plot)])
    assert code == 1
    printed = capsys.readouterr().out
    assert "first divergent layer blocks.11.pw" in printed and "DIVERGES" in printed
    data = json.loads(report.read_text())
    assert data["first_divergent_layer"] == "blocks.11.pw"
    assert [r["name"] for r in data["layers"] if not r["ok"]][0] == "blocks.11.pw"
    assert "images" in data  # the plain validation report is still there
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_plot_needs_layers_and_a_png(small_packages: dict[str, Path], tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    from mnv1_coreml.cli import main

    base = ["validate", str(small_packages["fp16"]), "--golden", str(RANDOM_GOLDEN)]
    assert main([*base, "--plot", str(tmp_path / "p.png")]) == 2
    assert "add --layers" in capsys.readouterr().err
    assert main([*base, "--layers", "--plot", str(tmp_path / "p.svg")]) == 2
    assert "ending in .png" in capsys.readouterr().err
    assert main([*base, "--layers", "--plot", str(tmp_path / "no" / "p.png")]) == 2
    assert not (tmp_path / "p.png").exists()


def test_validate_and_layers_share_one_interpreter_pass(small_packages: dict[str, Path]) -> None:
    from mnv1_coreml.layers import layer_backend
    from mnv1_coreml.validation import validate

    golden = read_golden(RANDOM_GOLDEN)
    runner = layer_backend(small_packages["fp16"], golden)
    assert validate(small_packages["fp16"], golden, backend=runner).passed

    def no_second_pass(*args: object, **kwargs: object) -> None:
        raise AssertionError("the program ran again")

    runner.model.predict = no_second_pass  # type: ignore[attr-defined, method-assign]
    report = validate_layers(small_packages["fp16"], golden, golden_dir=RANDOM_GOLDEN,
                             runner=runner)
    assert report.first_divergent_layer is None
    with pytest.raises(AssertionError, match="ran again"):  # other images are not cached
        runner.intermediates(golden.images[:2], [runner.watch[0]])  # type: ignore[attr-defined]
