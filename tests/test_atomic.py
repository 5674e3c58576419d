"""Defect 1: replacing an output must never lose the previous one.

``atomic_path`` moves the old output aside, renames the new one in, then deletes the old. Every
way that can fail -- the body raising, either rename failing, Ctrl-C between the renames, Ctrl-C
during any step of a real ``convert`` -- must leave the old output byte-identical and no
temporary directory beside it.
"""

from __future__ import annotations

import hashlib
import os
import select
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from mnv1_coreml import fsutil
from mnv1_coreml.choices import STEPS
from mnv1_coreml.errors import OutputExistsError, UserError
from mnv1_coreml.fsutil import atomic_path

REPO = Path(__file__).resolve().parent.parent


def tree_digest(path: Path) -> str:
    """SHA-256 over every file's relative name and bytes."""
    h = hashlib.sha256()
    for p in sorted(path.rglob("*")):
        if p.is_file():
            h.update(str(p.relative_to(path)).encode() + b"\0" + p.read_bytes())
    return h.hexdigest()


@pytest.fixture
def old(tmp_path: Path) -> Path:
    """An existing output directory (stands in for a package)."""
    pkg = tmp_path / "M.mlpackage"
    (pkg / "Data").mkdir(parents=True)
    (pkg / "Manifest.json").write_text('{"old": true}')
    (pkg / "Data" / "weight.bin").write_bytes(os.urandom(1000))
    return pkg


def write_new(tmp: Path) -> None:
    tmp.mkdir()
    (tmp / "Manifest.json").write_text('{"new": true}')


def assert_untouched(pkg: Path, digest: str) -> None:
    assert tree_digest(pkg) == digest
    assert sorted(p.name for p in pkg.parent.iterdir()) == [pkg.name]  # no temporary left


def failing_replace(fail_on: int, error: BaseException):
    """os.replace that raises ``error`` on its ``fail_on``-th call (1-based)."""
    real, calls = os.replace, []

    def replace(src, dst):
        calls.append((src, dst))
        if len(calls) == fail_on:
            raise error
        return real(src, dst)

    return replace


@pytest.mark.parametrize("fail_on", [1, 2])
def test_failed_rename_keeps_the_old_output(old: Path, monkeypatch, fail_on: int) -> None:
    digest = tree_digest(old)
    monkeypatch.setattr(fsutil.os, "replace", failing_replace(fail_on, OSError("disk on fire")))
    raises = pytest.raises(UserError, match="disk on fire")
    with raises as info, atomic_path(old, force=True) as tmp:
        write_new(tmp)
    assert "unchanged" in str(info.value)
    monkeypatch.undo()
    assert_untouched(old, digest)


def test_ctrl_c_between_the_renames_keeps_the_old_output(old: Path, monkeypatch) -> None:
    # as if SIGINT arrived right after the old output was moved aside
    digest = tree_digest(old)
    monkeypatch.setattr(fsutil.os, "replace", failing_replace(2, KeyboardInterrupt()))
    with pytest.raises(KeyboardInterrupt), atomic_path(old, force=True) as tmp:
        write_new(tmp)
    monkeypatch.undo()
    assert_untouched(old, digest)


def test_failure_while_writing_keeps_the_old_output(old: Path) -> None:
    digest = tree_digest(old)
    with pytest.raises(RuntimeError), atomic_path(old, force=True) as tmp:
        write_new(tmp)
        raise RuntimeError("validation crashed")
    assert_untouched(old, digest)


def test_success_replaces_and_cleans_up(old: Path) -> None:
    with atomic_path(str(old), force=True) as tmp:  # str paths are accepted
        write_new(tmp)
    assert (old / "Manifest.json").read_text() == '{"new": true}'
    assert not (old / "Data").exists()
    assert sorted(p.name for p in old.parent.iterdir()) == [old.name]


def test_existing_output_needs_force_and_library_text_has_no_cli_flag(old: Path) -> None:
    with pytest.raises(OutputExistsError) as info, atomic_path(old) as tmp:
        write_new(tmp)
    assert "already exists" in str(info.value) and "--force" not in str(info.value)


#: Runs the real CLI in a child; before each run it reads which step to stop at, and at the
#: start of that step it says so and blocks on stdin, where the parent's SIGINT lands.
CHILD = textwrap.dedent("""
    import contextlib, sys
    from mnv1_coreml import cli

    real_steps, target = cli._steps, None

    @contextlib.contextmanager
    def steps(names, title):
        with real_steps(names, title) as (on_step, on_download):
            def hooked(name):
                on_step(name)
                if name == target:
                    print("AT", name, flush=True)
                    sys.stdin.readline()
            yield hooked, on_download

    cli._steps = steps
    code = 0
    for line in sys.stdin:
        target = line.strip()
        if not target:
            break
        code = cli.main(sys.argv[1:])
        print("EXIT", code, flush=True)
    sys.exit(code)
""")


def read_line(proc: subprocess.Popen, timeout: float = 300) -> str:
    """The child's next stdout line; fails instead of hanging if none comes."""
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    assert ready, f"no output from the child in {timeout} s"
    line = proc.stdout.readline()
    assert line, f"child ended early (exit {proc.poll()})"
    return line.strip()


def test_ctrl_c_at_every_convert_step_keeps_the_old_package(
    small_packages: dict[str, Path], tmp_path: Path
) -> None:
    pkg = tmp_path / "MobileNetV1.mlpackage"
    shutil.copytree(small_packages["fp16"], pkg)
    digest = tree_digest(pkg)
    args = ["convert", "--alpha", "0.25", "--res", "128", "--weights", "random", "--seed", "7",
            "--force", "-o", str(pkg)]
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD, *args], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL, text=True, cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    try:
        assert STEPS == ("build", "trace", "convert", "compress", "save", "validate")
        for step in STEPS:
            proc.stdin.write(step + "\n")
            proc.stdin.flush()
            assert read_line(proc) == f"AT {step}"
            proc.send_signal(signal.SIGINT)
            assert read_line(proc) == "EXIT 130", step
            assert_untouched(pkg, digest)
        proc.stdin.write("\n")
        proc.stdin.flush()
        assert proc.wait(timeout=60) == 130
    finally:
        if proc.poll() is None:
            proc.kill()
