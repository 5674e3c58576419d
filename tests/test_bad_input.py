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
    assert_one_line_error(code, err, "alpha=0.5 weights, not alpha=0.25")
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


# Defect 7: every file the tool reads, damaged the way a new user would damage it.
REPO = Path(__file__).resolve().parent.parent
GOLDEN = REPO / "golden" / "random-0_0.25_128"


def test_truncated_weight_file_is_a_corrupt_package(
    small_packages: dict[str, Path], tmp_path: Path, capsys
) -> None:
    import shutil

    pkg = tmp_path / "input_truncated.mlpackage"
    shutil.copytree(small_packages["fp16"], pkg)
    (weights,) = pkg.rglob("weight.bin")
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    code, err = run(["validate", str(pkg), "--golden", str(GOLDEN)], capsys)
    assert_one_line_error(code, err, str(pkg), "is corrupt", "index out of bounds")


def test_package_with_a_garbage_spec(small_packages: dict[str, Path], tmp_path: Path, capsys):
    import shutil

    pkg = tmp_path / "input_spec.mlpackage"
    shutil.copytree(small_packages["fp16"], pkg)
    (spec,) = pkg.rglob("model.mlmodel")
    spec.write_bytes(b"\x07not a protobuf" * 10)
    code, err = run(["validate", str(pkg), "--golden", str(GOLDEN)], capsys)
    assert_one_line_error(code, err, str(pkg), "not a readable Core ML model")


@pytest.mark.parametrize(
    ("damage", "needle"),
    [
        (lambda d: (d / "logits.npz").write_bytes((d / "logits.npz").read_bytes()[:300]),
         "logits.npz is unreadable"),
        (lambda d: (d / "logits.npz").write_bytes(b"PK\x03\x04" + b"\x00" * 50),
         "logits.npz is unreadable"),
        (lambda d: (d / "manifest.json").write_text("{not json"), "manifest.json is unreadable"),
        (lambda d: (d / "manifest.json").write_text("[1, 2]"), "is not a JSON object"),
        (lambda d: (d / "manifest.json").write_text('{"alpha": 0.25}'), "is malformed"),
        (lambda d: (d / "manifest.json").write_bytes(b"\xff\xfe\x00garbage"), "unreadable"),
    ],
)
def test_damaged_golden(
    small_packages: dict[str, Path], tmp_path: Path, capsys, damage, needle: str
) -> None:
    import shutil

    golden = tmp_path / "input_golden"
    shutil.copytree(GOLDEN, golden)
    damage(golden)
    code, err = run(["validate", str(small_packages["fp16"]), "--golden", str(golden)], capsys)
    assert_one_line_error(code, err, str(golden), needle)


@pytest.mark.parametrize(
    ("name", "data"),
    [("bad.jpg", b"\xff\xd8\xff\xe0 this is not a JPEG" * 4), ("notes.png", b"hello"),
     ("cut.png", None)],
)
def test_golden_images_with_an_unreadable_file(
    out_dir: Path, tmp_path: Path, capsys, name: str, data: bytes | None
) -> None:
    from mnv1_coreml.images import packaged_image_dir

    images = tmp_path / "input_images"
    images.mkdir()
    good = packaged_image_dir() / "chelsea.png"
    (images / "chelsea.png").write_bytes(good.read_bytes())
    # None: a real PNG cut short, which PIL only notices while decoding
    (images / name).write_bytes(good.read_bytes()[:2000] if data is None else data)
    code, err = run(["golden", "-o", str(out_dir / "g"), "--alpha", "0.25", "--res", "128",
                     "--weights", "random", "--images", str(images)], capsys)
    assert_one_line_error(code, err, "cannot read image", str(images / name))
    assert_nothing_written(out_dir)


def test_typer_floor_provides_what_the_cli_catches() -> None:
    # cli.main catches typer.TyperException, which typer added in 0.28 (0.26-0.27 vendor click
    # without it; older ones re-export click's). Below that floor every usage error such as
    # `--alpha wide` would end in an AttributeError traceback. Checked by hand: the usage-error
    # tests above pass with typer 0.28.0 on the path.
    import re

    import typer

    pyproject = (REPO / "pyproject.toml").read_text(encoding="utf-8")
    floor = re.search(r'"typer>=([0-9.]+)', pyproject)
    assert floor, "pyproject.toml must declare a typer floor"
    assert tuple(int(x) for x in floor.group(1).split(".")) >= (0, 28)
    assert issubclass(typer.TyperException, Exception)
