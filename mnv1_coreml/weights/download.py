"""Downloads into a local cache that never holds a partial or unverified file.

A file is streamed to a temporary sibling in the cache directory, checked (length against
Content-Length, structure by the caller's ``verify``, SHA-256 when one is pinned), and only then
renamed into place with :func:`os.replace`. On any failure, Ctrl-C included, the temporary file
is removed. Each cache entry gets a ``<name>.sha256`` sidecar (``sha256sum -c`` format) written
at download time, so later silent corruption is caught on a cache hit, not only truncation.
Stdlib ``urllib`` only; the library prints nothing unless given a ``progress`` callback
(the CLI draws the bar).
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import http.client
import logging
import os
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Generic, TypeVar

from ..errors import WeightsError, one_line
from ..hashing import file_sha256

#: ``progress(bytes_done, bytes_total_or_None)``, called after every chunk.
ProgressCallback = Callable[[int, "int | None"], None]

CACHE_ENV = "MNV1_COREML_CACHE"
BASE_URL_ENV = "MNV1_COREML_BASE_URL"
#: Seconds for connecting and for each read; a stalled server fails instead of hanging.
DEFAULT_TIMEOUT = 30.0
CHUNK_SIZE = 1 << 16
SIDECAR_SUFFIX = ".sha256"

log = logging.getLogger(__name__)
T = TypeVar("T")


def default_cache_dir() -> Path:
    """``$MNV1_COREML_CACHE``, else ``$XDG_CACHE_HOME/mnv1-coreml``, else ``~/.cache/...``."""
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    root = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return root / "mnv1-coreml"


def resolve_cache_dir(cache_dir: str | os.PathLike[str] | None = None) -> Path:
    return Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()


def resolve_base_url(base_url: str | None, default: str) -> str:
    """``base_url``, else ``$MNV1_COREML_BASE_URL``, else ``default``; always ending in '/'."""
    url = base_url or os.environ.get(BASE_URL_ENV) or default
    return url.rstrip("/") + "/"


def sidecar_path(path: Path) -> Path:
    return path.with_name(path.name + SIDECAR_SUFFIX)


@dataclass(frozen=True)
class Fetched(Generic[T]):
    """A verified cache entry: its path, SHA-256, and what ``verify`` returned."""

    path: Path
    sha256: str
    value: T


def _user_agent() -> str:
    try:
        return f"mnv1-coreml/{version('mnv1-coreml')}"
    except PackageNotFoundError:  # a source tree that was never installed
        return "mnv1-coreml"


def _read_sidecar(path: Path) -> str | None:
    try:
        text = sidecar_path(path).read_text(encoding="ascii").split()
    except (OSError, UnicodeDecodeError):
        return None
    return text[0].lower() if text else None


def _write_sidecar(path: Path, sha256: str) -> None:
    side = sidecar_path(path)
    tmp = side.with_name(f".{side.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(f"{sha256}  {path.name}\n", encoding="ascii")
        os.replace(tmp, side)
    finally:
        tmp.unlink(missing_ok=True)


def _remove_entry(path: Path) -> None:
    sidecar_path(path).unlink(missing_ok=True)
    path.unlink(missing_ok=True)


def _check_cached(path: Path, verify: Callable[[Path, str], T]) -> tuple[str, T] | None:
    """(sha256, value) of a sound cache entry; a corrupt one is deleted and None returned."""
    try:
        actual = file_sha256(path)
        recorded = _read_sidecar(path)
        if recorded is not None and recorded != actual:
            raise WeightsError(f"SHA-256 {actual} differs from {recorded} recorded at download")
        value = verify(path, str(path))
    except (WeightsError, OSError) as exc:
        log.info("cache entry %s is unusable (%s); fetching it again", path, one_line(exc, 200))
        try:
            _remove_entry(path)
        except OSError as rm_exc:
            raise WeightsError(
                f"cache entry {path} is corrupt and cannot be removed ({one_line(rm_exc, 200)}); "
                "delete it by hand"
            ) from None
        return None
    return actual, value


def _offline_hint(dest: Path) -> str:
    return (
        f"it would be cached at {dest}. Offline? Fetch the file elsewhere and pass "
        "--weights PATH to it"
    )


def download(
    url: str,
    out: str | os.PathLike[str],
    *,
    timeout: float = DEFAULT_TIMEOUT,
    progress: ProgressCallback | None = None,
    cache_path: str | os.PathLike[str] | None = None,
) -> str:
    """Stream ``url`` into the file ``out`` (created/truncated); return the SHA-256 of its bytes.

    Raises WeightsError (one line) on connection failure, HTTP error, timeout, or a body shorter
    than its Content-Length. ``cache_path`` is only named in messages.
    """
    out = Path(out)
    dest = Path(cache_path) if cache_path is not None else out
    request = urllib.request.Request(url, headers={"User-Agent": _user_agent()})
    h = hashlib.sha256()
    done = 0
    total: int | None = None
    try:
        with urllib.request.urlopen(request, timeout=timeout) as resp, open(out, "wb") as f:
            length = resp.headers.get("Content-Length")
            if length is not None and length.strip().isdigit():
                total = int(length)
            if progress is not None:
                progress(0, total)
            while True:
                chunk = resp.read1(CHUNK_SIZE)  # what has arrived: progress and stall counts
                if not chunk:
                    break
                f.write(chunk)
                h.update(chunk)
                done += len(chunk)
                if progress is not None:
                    progress(done, total)
    except urllib.error.HTTPError as exc:
        raise WeightsError(
            f"cannot download {url}: HTTP {exc.code} {exc.reason}; check the URL "
            f"(${BASE_URL_ENV} overrides the base), or fetch the file elsewhere and pass "
            f"--weights PATH to it (it would be cached at {dest})"
        ) from None
    except urllib.error.URLError as exc:
        reason = exc.reason if isinstance(exc.reason, str) else one_line(exc.reason, 200)
        if "url type" in reason:
            raise WeightsError(
                f"cannot download {url}: not a usable URL ({reason}); check ${BASE_URL_ENV} or "
                "the base_url given"
            ) from None
        raise WeightsError(f"cannot download {url} ({reason}); {_offline_hint(dest)}") from None
    except TimeoutError:
        raise WeightsError(
            f"download of {url} stalled (no data for {timeout:g} s) after {done} bytes; "
            "nothing was cached. Try again, or fetch the file elsewhere and pass --weights PATH"
        ) from None
    except ValueError as exc:  # urllib's "unknown url type" and friends
        raise WeightsError(
            f"cannot download {url}: not a usable URL ({one_line(exc, 200)}); check "
            f"${BASE_URL_ENV} or the base_url given"
        ) from None
    except (http.client.HTTPException, ConnectionError) as exc:
        raise WeightsError(
            f"download of {url} failed after {done} bytes ({one_line(exc, 200)}); nothing was "
            "cached. Try again, or fetch the file elsewhere and pass --weights PATH"
        ) from None
    if total is not None and done != total:
        raise WeightsError(
            f"download of {url} was cut off after {done} of {total} bytes; nothing was cached. "
            "Try again, or fetch the file elsewhere and pass --weights PATH"
        )
    return h.hexdigest()


def fetch_cached(
    url: str,
    dest: str | os.PathLike[str],
    verify: Callable[[Path, str], T],
    *,
    sha256: str | None = None,
    timeout: float = DEFAULT_TIMEOUT,
    progress: ProgressCallback | None = None,
) -> Fetched[T]:
    """The verified file for ``url`` at ``dest``, downloading it only when needed.

    ``verify(path, label)`` checks a file's structure and returns what it read from it (so a
    cache hit is read once); it raises WeightsError when the file is not the expected one.
    A cache entry that fails its check is deleted and fetched again. With ``sha256`` pinned, a
    cached file with another hash is left alone and a fresh copy must match the pin to replace
    it. Nothing is renamed into ``dest`` before it passed every check.
    """
    dest = Path(dest)
    if dest.is_file():
        checked = _check_cached(dest, verify)
        if checked is not None:
            actual, value = checked
            if sha256 is None or actual == sha256:
                return Fetched(dest, actual, value)
            log.info("cached %s has SHA-256 %s, not the pinned %s; fetching", dest, actual, sha256)
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        _remove_orphans(dest, max(10 * timeout, 600.0))
        fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
        os.close(fd)
    except OSError as exc:
        raise WeightsError(
            f"cannot write to the weights cache {dest.parent} ({one_line(exc, 200)}); set "
            f"${CACHE_ENV} to a writable directory"
        ) from None
    tmp = Path(tmp_name)
    try:
        try:
            actual = download(url, tmp, timeout=timeout, progress=progress, cache_path=dest)
        except OSError as exc:  # local write errors (disk full, ...): network ones are handled
            raise WeightsError(
                f"cannot write to the weights cache {dest.parent} ({one_line(exc, 200)}); set "
                f"${CACHE_ENV} to a writable directory with space"
            ) from None
        try:
            value = verify(tmp, "the download")
        except WeightsError as exc:
            raise WeightsError(
                f"{url} did not serve the expected file{_looks_like(tmp)}: {exc}; nothing was "
                "cached. Check the URL, or fetch the file elsewhere and pass --weights PATH"
            ) from None
        if sha256 is not None and actual != sha256:
            raise WeightsError(
                f"SHA-256 mismatch for {url}: expected {sha256}, got {actual}; nothing was "
                "cached. Check the --sha256 value"
            )
        sidecar_path(dest).unlink(missing_ok=True)
        os.replace(tmp, dest)
        _write_sidecar(dest, actual)
        return Fetched(dest, actual, value)
    finally:
        tmp.unlink(missing_ok=True)


def _remove_orphans(dest: Path, older_than: float) -> None:
    """Delete temporary files that a killed process (SIGKILL, power loss) left for ``dest``.

    A live download writes at least once per timeout, so a file untouched for ``older_than``
    seconds belongs to nobody.
    """
    now = time.time()
    for orphan in dest.parent.glob(f".{glob.escape(dest.name)}.*.part"):
        with contextlib.suppress(OSError):
            if now - orphan.stat().st_mtime > older_than:
                orphan.unlink()


def _looks_like(path: Path) -> str:
    """A hint about what was served instead, for the error message."""
    try:
        with open(path, "rb") as f:
            head = f.read(512).lstrip().lower()
    except OSError:
        return ""
    if head.startswith((b"<!doctype html", b"<html", b"<?xml", b"<")):
        return " (got an HTML/XML page, probably an error page)"
    if not head:
        return " (got an empty body)"
    return ""
