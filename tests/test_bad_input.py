"""Bad input: one clear line on stderr, exit code 2, and nothing written."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from mnv1_coreml.cli import main
from mnv1_coreml.model import MobileNetConfig, MobileNetV1, weight_keys


def run(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = main(args)
    stderr = capsys.readouterr().err
    return code, stderr


def assert_one_line_error(code: int, stderr: str, *needles: str) -> None:
    assert code == 2
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    assert lines[0].startswith("mnv1-coreml: error: ")
    assert "Traceback" not in stderr
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


def assert_nothing_written(directory: Path) -> None:
    assert list(directory.iterdir()) == [] or all(
        p.name.startswith("input") for p in directory.iterdir()
    ), sorted(p.name for p in directory.iterdir())


def convert_args(out: Path, *extra: str) -> list[str]:
    return ["convert", "--alpha", "0.25", "--res", "128", "--weights", "random", "--no-validate",
            "-o", str(out), *extra]


@pytest.fixture
def out_dir(tmp_path: Path) -> Path:
    d = tmp_path / "out"
    d.mkdir()
    return d


@pytest.mark.parametrize("alpha", ["0", "-0.5"])
def test_alpha_not_positive(alpha: str, out_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = out_dir / "m.mlpackage"
    code, err = run(["convert", "--alpha", alpha, "-o", str(out)], capsys)
    assert_one_line_error(code, err, "alpha must be a number > 0")
    assert_nothing_written(out_dir)


def test_alpha_not_a_number(out_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, err = run(["convert", "--alpha", "wide", "-o", str(out_dir / "m.mlpackage")], capsys)
    assert_one_line_error(code, err, "--alpha")
    assert_nothing_written(out_dir)


def test_alpha_nan(out_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, err = run(["convert", "--alpha", "nan", "-o", str(out_dir / "m.mlpackage")], capsys)
    assert_one_line_error(code, err, "alpha must be a number > 0")
    assert_nothing_written(out_dir)


@pytest.mark.parametrize("res", ["100", "230"])
def test_res_not_multiple_of_32(res: str, out_dir: Path, capsys) -> None:
    code, err = run(["convert", "--res", res, "-o", str(out_dir / "m.mlpackage")], capsys)
    assert_one_line_error(code, err, "multiple of 32", res)
    assert_nothing_written(out_dir)


@pytest.mark.parametrize("res", ["0", "1056", "2048"])
def test_res_out_of_range(res: str, out_dir: Path, capsys) -> None:
    code, err = run(["convert", "--res", res, "-o", str(out_dir / "m.mlpackage")], capsys)
    assert_one_line_error(code, err, "from 32 to 1024")
    assert_nothing_written(out_dir)


def test_missing_weights_file(out_dir: Path, capsys) -> None:
    missing = out_dir.parent / "nope.safetensors"
    code, err = run(convert_args(out_dir / "m.mlpackage", "--weights", str(missing)), capsys)
    assert_one_line_error(code, err, str(missing), "does not exist")
    assert_nothing_written(out_dir)


@pytest.mark.parametrize("suffix", [".safetensors", ".pt", ".pth"])
def test_corrupt_weights_file(suffix: str, out_dir: Path, tmp_path: Path, capsys) -> None:
    bad = tmp_path / f"input_corrupt{suffix}"
    bad.write_bytes(b"\x00garbage, not a weights file\xff" * 50)
    code, err = run(convert_args(out_dir / "m.mlpackage", "--weights", str(bad)), capsys)
    assert_one_line_error(code, err, str(bad))
    assert_nothing_written(out_dir)


def test_state_dict_key_and_shape_errors_are_all_named(out_dir: Path, tmp_path: Path, capsys):
    model = MobileNetV1(MobileNetConfig(alpha=0.25, res=128))
    state = {k: v for k, v in model.state_dict().items() if k in weight_keys(model)}
    del state["blocks.3.dw.bn.running_mean"]
    state["head.extra.weight"] = torch.zeros(3)
    state["classifier.bias"] = torch.zeros(10)
    path = tmp_path / "input_bad_keys.safetensors"
    save_file(state, str(path))
    code, err = run(convert_args(out_dir / "m.mlpackage", "--weights", str(path)), capsys)
    assert_one_line_error(
        code, err, "missing blocks.3.dw.bn.running_mean", "unexpected head.extra.weight",
        "wrong shape classifier.bias (10,) (expected (1000,))",
    )
    assert_nothing_written(out_dir)


def test_weights_of_another_width(out_dir: Path, tmp_path: Path, capsys) -> None:
    model = MobileNetV1(MobileNetConfig(alpha=0.5, res=128))
    path = tmp_path / "input_alpha05.pt"
    torch.save({k: v for k, v in model.state_dict().items() if k in weight_keys(model)}, path)
    code, err = run(convert_args(out_dir / "m.mlpackage", "--weights", str(path)), capsys)
    assert_one_line_error(code, err, "wrong shape", "stem.conv.weight")
    assert_nothing_written(out_dir)


def test_unwritable_output_parent_is_a_file(out_dir: Path, capsys) -> None:
    blocker = out_dir / "input_file"
    blocker.write_text("x")
    code, err = run(convert_args(blocker / "m.mlpackage"), capsys)
    assert_one_line_error(code, err, "cannot write")
    assert blocker.read_text() == "x"


def test_unwritable_output_missing_directory(out_dir: Path, capsys) -> None:
    code, err = run(convert_args(out_dir / "no" / "such" / "m.mlpackage"), capsys)
    assert_one_line_error(code, err, "does not exist")
    assert_nothing_written(out_dir)


def test_existing_output_needs_force(out_dir: Path, capsys) -> None:
    existing = out_dir / "m.mlpackage"
    existing.mkdir()
    (existing / "keep").write_text("mine")
    code, err = run(convert_args(existing), capsys)
    assert_one_line_error(code, err, "already exists", "--force")
    assert (existing / "keep").read_text() == "mine"


def test_output_suffix(out_dir: Path, capsys) -> None:
    code, err = run(convert_args(out_dir / "model.zip"), capsys)
    assert_one_line_error(code, err, ".mlpackage")
    assert_nothing_written(out_dir)
