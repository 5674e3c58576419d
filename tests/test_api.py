"""The Python API: README's example runs as written; paths may be str; library errors do not
talk about CLI flags; ``import mnv1_coreml`` stays cheap."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def readme_python_example() -> str:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    section = text.split("## Python API", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    assert len(blocks) == 1, "README's Python API section must hold exactly one example"
    return blocks[0]


def test_readme_example_runs_as_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MNV1_COREML_GOLDEN", raising=False)
    exec(compile(readme_python_example(), "README.md", "exec"), {})
    out, err = capfd.readouterr()
    lines = out.splitlines()
    assert lines[0].startswith("validate PASS: reference backend, palettized-8"), out
    assert lines[-1] == "small.mlpackage already exists", out  # no "--force" in library text
    assert "Running compression pass" not in err and "ops/s]" not in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["small.mlpackage"]


def test_import_is_cheap_and_exports_the_api() -> None:
    code = (
        "import sys, mnv1_coreml as mc\n"
        "heavy = [m for m in ('torch', 'coremltools', 'numba') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
        "assert {'convert', 'validate', 'load_weights', 'build_model', 'ReferenceModel',"
        " 'Palettize', 'QuantizeInt8', 'UserError', '__version__'} <= set(mc.__all__)\n"
        "assert mc.Palettize(4).bits == 4 and callable(mc.convert) and callable(mc.validate)\n"
        "import mnv1_coreml.validation, mnv1_coreml.pipeline\n"
        "assert callable(mc.validate) and callable(mc.convert), 'shadowed by a submodule'\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    subprocess.run([sys.executable, "-c", code], check=True, env=env, cwd=REPO, timeout=300)


@pytest.mark.parametrize("as_type", [str, Path])
def test_paths_may_be_str_or_pathlike(as_type, small_packages: dict[str, Path]) -> None:
    import mnv1_coreml as mc
    from mnv1_coreml.golden import read_golden
    from mnv1_coreml.modelspec import read_contract
    from mnv1_coreml.sizes import package_bytes

    pkg, golden = small_packages["fp32"], REPO / "golden" / "random-0_0.25_128"
    opts = mc.ConvertOptions(alpha=0.25, res=128, output=as_type(pkg.parent / "x.mlpackage"))
    assert opts.output == pkg.parent / "x.mlpackage"
    assert read_contract(as_type(pkg)).width == 128
    assert package_bytes(as_type(pkg)) > 0
    assert read_golden(as_type(golden)).res == 128
    if as_type is str:  # Path arguments run through validate in every other test
        report = mc.validate(as_type(pkg), as_type(golden), backend="reference")
        assert report.passed, report.verdict_line()


def test_bad_options_are_user_errors() -> None:
    import mnv1_coreml as mc

    for kwargs, needle in [
        ({"alpha": 0}, "alpha must be a number > 0"),
        ({"res": 100}, "multiple of 32"),
        ({"precision": "int4"}, "precision must be fp16 or fp32"),
        ({"target": "iOS9"}, "target must be one of"),
        ({"output": "x.zip"}, "must end in .mlpackage"),
        ({"compression": 8}, "compression must be a config"),
    ]:
        with pytest.raises(mc.UserError, match=needle):
            mc.ConvertOptions(**kwargs)
    with pytest.raises(mc.UserError, match="too low"):
        mc.convert(alpha=0.25, res=128, weights="random", output="never.mlpackage",
                   compression=mc.Palettize(8), target="iOS15")
    assert not Path("never.mlpackage").exists()
