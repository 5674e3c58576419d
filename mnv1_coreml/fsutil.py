"""Atomic outputs: a reader never sees a half-written package or golden, and a failure never
costs the user the previous one."""

from __future__ import annotations

import os
import shutil
import signal
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from .errors import OutputExistsError, UserError

#: Suffix of the temporary directories ``atomic_path`` makes beside its target.
TMP_SUFFIX = ".tmp"


def as_path(path: str | os.PathLike[str]) -> Path:
    """Every public function takes ``str | os.PathLike``; this is where it becomes a Path."""
    return path if isinstance(path, Path) else Path(os.fspath(path))


def check_output(path: str | os.PathLike[str], force: bool) -> None:
    """Refuse before any work is done: an existing output without ``force``, or an unwritable
    place."""
    path = as_path(path)
    if (path.exists() or path.is_symlink()) and not force:
        raise OutputExistsError(f"{path} already exists")
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        if parent.exists():
            raise UserError(f"cannot write {path}: {parent} is not a directory")
        raise UserError(f"cannot write {path}: directory {parent} does not exist")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UserError(f"cannot write {path}: directory {parent} is not writable")


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists() or path.is_symlink():
        path.unlink(missing_ok=True)


@contextmanager
def _sigint_deferred() -> Iterator[None]:
    """Hold Ctrl-C back (it is delivered on exit) so a rename pair cannot be split by it."""
    can_mask = hasattr(signal, "pthread_sigmask") and (
        threading.current_thread() is threading.main_thread()
    )
    if not can_mask:
        yield
        return
    old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


@contextmanager
def atomic_path(path: str | os.PathLike[str], force: bool = False) -> Iterator[Path]:
    """Yield a temporary sibling of ``path`` to write; on success it replaces ``path``.

    The new output appears in one rename. When replacing, the old output is first moved into
    the temporary directory and deleted only once the new one is in place; if anything fails
    (an exception, Ctrl-C, a failed rename) the old output is moved back, so ``path`` ends up
    either the complete new output or exactly what it was. The temporary directory is always
    removed.
    """
    path = as_path(path)
    check_output(path, force)
    parent = path.parent if str(path.parent) else Path(".")
    tmp_dir = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=TMP_SUFFIX, dir=parent))
    tmp = tmp_dir / path.name
    old = tmp_dir / (path.name + ".old")
    try:
        yield tmp
        if not tmp.exists():
            raise UserError(f"nothing was written to {tmp}")
        with _sigint_deferred():
            try:
                if path.exists() or path.is_symlink():
                    os.replace(path, old)
                os.replace(tmp, path)
            except OSError as exc:  # the finally below puts the old output back
                raise UserError(f"cannot write {path} ({exc}); it is unchanged") from None
    finally:
        with _sigint_deferred():
            # the old output is inside tmp_dir only while the new one failed to take its place
            if (old.exists() or old.is_symlink()) and not (path.exists() or path.is_symlink()):
                try:
                    os.replace(old, path)
                except OSError as exc:  # keep tmp_dir: it holds the only copy
                    raise UserError(
                        f"could not put {path} back ({exc}); the previous version is at {old}"
                    ) from None
            _remove(tmp_dir)
