"""Atomic outputs: a reader never sees a half-written package, golden or download."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from .errors import UserError


def check_output(path: Path, force: bool) -> None:
    """Refuse before any work is done: existing output without --force, or an unwritable place."""
    if path.exists() and not force:
        raise UserError(f"{path} already exists; pass --force to replace it")
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise UserError(f"cannot write {path}: directory {parent} does not exist")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UserError(f"cannot write {path}: directory {parent} is not writable")


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists() or path.is_symlink():
        path.unlink(missing_ok=True)


@contextmanager
def atomic_path(path: Path, force: bool = False) -> Iterator[Path]:
    """Yield a temporary sibling of ``path``; on success it replaces ``path`` in one rename.

    On any failure (or Ctrl-C) the temporary output is removed and ``path`` is untouched. When
    replacing a directory (an ``.mlpackage``), the old one is moved aside first and deleted
    only after the new one is in place.
    """
    check_output(path, force)
    parent = path.parent if str(path.parent) else Path(".")
    tmp_dir = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=parent))
    tmp = tmp_dir / path.name
    try:
        yield tmp
        if not tmp.exists():
            raise RuntimeError(f"nothing was written to {tmp}")
        old = None
        if path.exists() or path.is_symlink():
            old = tmp_dir / (path.name + ".old")
            os.replace(path, old)
        os.replace(tmp, path)
        if old is not None:
            _remove(old)
    finally:
        _remove(tmp_dir)
