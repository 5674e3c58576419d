"""``--weights imagenet`` downloads against a local HTTP server on 127.0.0.1 (no internet).

The server serves the real 0.25-128 Keras fixture as ``mobilenet_2_5_128_tf.h5`` and can
misbehave on purpose: drop the connection mid-file, answer 200 with an HTML page or garbage,
404, or stall. Whatever happens, the cache never holds a partial or unverified file.
"""

from __future__ import annotations

import hashlib
import http.server
import os
import socket
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import torch

from mnv1_coreml.errors import WeightsError
from mnv1_coreml.weights import KERAS_SETTINGS, build_model, load_weights
from mnv1_coreml.weights.download import (
    BASE_URL_ENV,
    CACHE_ENV,
    default_cache_dir,
    sidecar_path,
)
from tests.conftest import assert_one_line

DATA = Path(__file__).resolve().parent / "data"
FIXTURE = DATA / "keras_mobilenet_0.25_128.h5"
NAME = "mobilenet_2_5_128_tf.h5"
TIMEOUT = 5.0  # seconds: every request in these tests is bounded


@dataclass
class Server:
    """Routes: file name -> (mode, body). Modes: ok, nolength, drop, drop_nolength, 404, stall."""

    base_url: str
    routes: dict[str, tuple[str, bytes]] = field(default_factory=dict)
    requests: Counter[str] = field(default_factory=Counter)
    release: threading.Event = field(default_factory=threading.Event)


class Handler(http.server.BaseHTTPRequestHandler):
    server_state: Server  # set per server instance

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - quiet tests
        pass

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        state = self.server_state
        name = self.path.rsplit("/", 1)[-1]
        state.requests[name] += 1
        mode, body = state.routes.get(name, ("404", b""))
        if mode == "404":
            self.send_error(404, "Not Found")
            return
        self.send_response(200)
        self.send_header("Content-Type", "text/html" if body[:1] == b"<" else "application/x-hdf5")
        if mode in ("ok", "drop", "stall"):
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if mode in ("drop", "drop_nolength"):
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        if mode == "stall":
            self.wfile.write(body[:1000])
            self.wfile.flush()
            state.release.wait(TIMEOUT)
            return
        self.wfile.write(body)


@pytest.fixture
def server() -> Iterator[Server]:
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    state = Server(f"http://127.0.0.1:{httpd.server_address[1]}/keras-mirror/")
    httpd.RequestHandlerClass = type("BoundHandler", (Handler,), {"server_state": state})
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield state
    finally:
        state.release.set()
        httpd.shutdown()
        httpd.server_close()
        thread.join(TIMEOUT)


@pytest.fixture
def cache(tmp_path: Path) -> Path:
    return tmp_path / "cache"


def listing(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir()) if directory.exists() else []


def imagenet(server: Server, cache: Path, **kw: object):  # noqa: ANN201
    return load_weights(
        "imagenet", 0.25, 128, cache_dir=cache, base_url=server.base_url, timeout=TIMEOUT, **kw
    )


FIXTURE_BYTES = FIXTURE.read_bytes()
FIXTURE_SHA = hashlib.sha256(FIXTURE_BYTES).hexdigest()


def test_good_download_then_cache_hit(server: Server, cache: Path) -> None:
    server.routes[NAME] = ("ok", FIXTURE_BYTES)
    seen: list[tuple[int, int | None]] = []
    weights = imagenet(server, cache, progress=lambda done, total: seen.append((done, total)))
    assert server.requests[NAME] == 1
    assert (weights.source, weights.spec, weights.format) == ("imagenet", "imagenet", "keras-h5")
    assert weights.settings == KERAS_SETTINGS
    assert weights.sha256 == FIXTURE_SHA
    assert weights.url == server.base_url + NAME
    assert weights.path == cache / NAME and (cache / NAME).read_bytes() == FIXTURE_BYTES
    assert listing(cache) == [NAME, NAME + ".sha256"]
    assert sidecar_path(cache / NAME).read_text().split() == [FIXTURE_SHA, NAME]
    assert seen[0] == (0, len(FIXTURE_BYTES)) and seen[-1] == (len(FIXTURE_BYTES),) * 2
    assert [d for d, _ in seen] == sorted(d for d, _ in seen)
    # the downloaded weights are the ground-truth ones
    expected = np.load(DATA / "keras_mobilenet_0.25_128_expected.npz")
    model = build_model(0.25, 128, weights)
    with torch.no_grad():
        got = model(weights.settings.normalization.apply(expected["images"])).numpy()
    assert np.abs(got - expected["logits"]).max() <= 1e-4

    again = imagenet(server, cache, progress=lambda *a: pytest.fail("cache hit downloads"))
    assert server.requests[NAME] == 1  # no second request
    assert again.sha256 == FIXTURE_SHA
    for k, v in weights.state_dict.items():
        assert torch.equal(again.state_dict[k], v)


def test_env_vars_choose_base_url_and_cache(
    server: Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    server.routes[NAME] = ("ok", FIXTURE_BYTES)
    monkeypatch.setenv(BASE_URL_ENV, server.base_url.rstrip("/"))  # a missing '/' is added
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "env-cache"))
    weights = load_weights("imagenet", 0.25, 128, timeout=TIMEOUT)
    assert weights.path == tmp_path / "env-cache" / NAME
    assert server.requests[NAME] == 1


def test_default_cache_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv(CACHE_ENV, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == tmp_path / "xdg" / "mnv1-coreml"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_cache_dir() == tmp_path / "home" / ".cache" / "mnv1-coreml"
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "mine"))
    assert default_cache_dir() == tmp_path / "mine"


@pytest.mark.parametrize("mode", ["drop", "drop_nolength"])
def test_connection_dropped_mid_file(server: Server, cache: Path, mode: str) -> None:
    server.routes[NAME] = (mode, FIXTURE_BYTES)
    with pytest.raises(WeightsError) as exc:
        imagenet(server, cache)
    if mode == "drop":  # Content-Length says how much is missing
        half = len(FIXTURE_BYTES) // 2
        assert_one_line(exc, f"cut off after {half} of {len(FIXTURE_BYTES)} bytes",
                        "nothing was cached")
    else:  # no length: the structure check catches the truncation
        assert_one_line(exc, server.base_url + NAME, "nothing was cached", "truncated")
    assert listing(cache) == []


@pytest.mark.parametrize(
    "body",
    [b"<!DOCTYPE html><html><body>Error: quota exceeded</body></html>",
     np.random.default_rng(1).bytes(50_000), b""],
    ids=["html", "garbage", "empty"],
)
def test_wrong_bytes_with_status_200(server: Server, cache: Path, body: bytes) -> None:
    server.routes[NAME] = ("ok", body)
    with pytest.raises(WeightsError) as exc:
        imagenet(server, cache)
    msg = assert_one_line(exc, server.base_url + NAME, "did not serve the expected file",
                          "nothing was cached")
    if body.startswith(b"<"):
        assert "HTML" in msg
    assert listing(cache) == []


def test_another_variant_served_under_the_name(server: Server, cache: Path) -> None:
    """The structure check knows the alpha: a 0.25 file served as the 0.5 one is refused."""
    server.routes["mobilenet_5_0_128_tf.h5"] = ("ok", FIXTURE_BYTES)
    with pytest.raises(WeightsError) as exc:
        load_weights("imagenet", 0.5, 128, cache_dir=cache, base_url=server.base_url,
                     timeout=TIMEOUT)
    assert_one_line(exc, "alpha=0.25", "nothing was cached")
    assert listing(cache) == []


def test_404(server: Server, cache: Path) -> None:
    with pytest.raises(WeightsError) as exc:
        imagenet(server, cache)
    assert_one_line(exc, f"cannot download {server.base_url}{NAME}: HTTP 404", str(cache / NAME),
                    "--weights PATH")
    assert listing(cache) == []


def test_pinned_sha256(server: Server, cache: Path) -> None:
    server.routes[NAME] = ("ok", FIXTURE_BYTES)
    with pytest.raises(WeightsError) as exc:
        imagenet(server, cache, sha256="f" * 64)
    assert_one_line(exc, "SHA-256 mismatch", "f" * 64, FIXTURE_SHA, "nothing was cached")
    assert listing(cache) == []
    assert imagenet(server, cache, sha256=FIXTURE_SHA).sha256 == FIXTURE_SHA
    assert server.requests[NAME] == 2
    # a cached file that does not match a pin is kept, and a wrong fresh copy does not replace it
    with pytest.raises(WeightsError):
        imagenet(server, cache, sha256="e" * 64)
    assert server.requests[NAME] == 3
    assert (cache / NAME).read_bytes() == FIXTURE_BYTES


@pytest.mark.parametrize("damage", ["truncate", "flip", "empty"])
def test_corrupt_cache_entry_is_fetched_again(server: Server, cache: Path, damage: str) -> None:
    server.routes[NAME] = ("ok", FIXTURE_BYTES)
    imagenet(server, cache)
    entry = cache / NAME
    if damage == "truncate":
        entry.write_bytes(FIXTURE_BYTES[: len(FIXTURE_BYTES) // 3])
    elif damage == "flip":  # same size, HDF5 still opens: the recorded SHA-256 catches it
        data = bytearray(FIXTURE_BYTES)
        data[len(data) // 2] ^= 0xFF
        entry.write_bytes(bytes(data))
    else:
        entry.write_bytes(b"")
    weights = imagenet(server, cache)
    assert server.requests[NAME] == 2
    assert weights.sha256 == FIXTURE_SHA and entry.read_bytes() == FIXTURE_BYTES
    assert listing(cache) == [NAME, NAME + ".sha256"]


def test_corrupt_cache_entry_while_offline(server: Server, cache: Path) -> None:
    """The broken entry is removed even when the fresh fetch fails, so it cannot linger."""
    server.routes[NAME] = ("ok", FIXTURE_BYTES)
    imagenet(server, cache)
    (cache / NAME).write_bytes(FIXTURE_BYTES[:1000])
    del server.routes[NAME]
    with pytest.raises(WeightsError):
        imagenet(server, cache)
    assert listing(cache) == []


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_offline(cache: Path) -> None:
    url = f"http://127.0.0.1:{closed_port()}/keras/"
    with pytest.raises(WeightsError) as exc:
        load_weights("imagenet", 0.25, 128, cache_dir=cache, base_url=url, timeout=TIMEOUT)
    assert_one_line(exc, url + NAME, str(cache / NAME), "--weights PATH")
    assert listing(cache) == []


def test_stalled_server_times_out(server: Server, cache: Path) -> None:
    server.routes[NAME] = ("stall", FIXTURE_BYTES)
    with pytest.raises(WeightsError) as exc:
        load_weights("imagenet", 0.25, 128, cache_dir=cache, base_url=server.base_url,
                     timeout=0.3)
    assert_one_line(exc, "stalled", "0.3 s", "nothing was cached")
    assert listing(cache) == []


def test_ctrl_c_mid_download_leaves_nothing(server: Server, cache: Path) -> None:
    server.routes[NAME] = ("ok", FIXTURE_BYTES)

    def interrupt(done: int, total: int | None) -> None:
        if done > 100_000:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        imagenet(server, cache, progress=interrupt)
    assert listing(cache) == []


def test_unwritable_cache(server: Server, tmp_path: Path) -> None:
    server.routes[NAME] = ("ok", FIXTURE_BYTES)
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    with pytest.raises(WeightsError) as exc:
        imagenet(server, blocker / "cache")
    assert_one_line(exc, "cannot write to the weights cache", CACHE_ENV)
    assert server.requests[NAME] == 0


def test_orphans_of_killed_downloads_are_cleaned(server: Server, cache: Path) -> None:
    """A SIGKILLed download cannot clean up; the next fetch removes its stale temporary file."""
    server.routes[NAME] = ("ok", FIXTURE_BYTES)
    cache.mkdir()
    stale, live = cache / f".{NAME}.dead.part", cache / f".{NAME}.live.part"
    stale.write_bytes(b"partial")
    live.write_bytes(b"another process is downloading")
    os.utime(stale, (time.time() - 3600, time.time() - 3600))
    imagenet(server, cache)
    assert listing(cache) == sorted([NAME, NAME + ".sha256", live.name])


def test_bad_base_url(cache: Path) -> None:
    with pytest.raises(WeightsError) as exc:
        load_weights("imagenet", 0.25, 128, cache_dir=cache, base_url="nosuchscheme://host/x")
    assert_one_line(exc, "nosuchscheme://host/x/" + NAME, BASE_URL_ENV)
    assert listing(cache) == []
