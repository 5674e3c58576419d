"""zoo: variants in worker processes, validated, sized against the floor, tabulated."""

from __future__ import annotations

import json
import os
from pathlib import Path

from mnv1_coreml import zoo
from mnv1_coreml.pipeline import ConvertOptions
from mnv1_coreml.zoo import run_zoo, write_tables


def test_zoo_two_variants_in_parallel(tmp_path: Path, monkeypatch) -> None:
    pools = []

    def recording_pool(*args, **kwargs):
        pools.append(kwargs)
        return real_pool(*args, **kwargs)

    real_pool = zoo.ProcessPoolExecutor
    monkeypatch.setattr(zoo, "ProcessPoolExecutor", recording_pool)
    threads_before = os.environ.get("OMP_NUM_THREADS")
    seen_during = []
    base = ConvertOptions(weights="random", output=str(tmp_path / "x.mlpackage"))
    entries = run_zoo(base, str(tmp_path), jobs=2, variants=[(0.25, 128), (0.25, 160)],
                      on_done=lambda _e: seen_during.append(os.environ.get("OMP_NUM_THREADS")))
    # spawned workers (no fork after torch/numba started threads), set up by an initializer;
    # the parent's environment is never touched, not even while the workers run
    assert [p["mp_context"].get_start_method() for p in pools] == ["spawn"]
    assert pools[0]["initializer"] is zoo._init_worker
    assert seen_during == [threads_before] * 2
    assert [(e.alpha, e.res) for e in entries] == [(0.25, 128), (0.25, 160)]
    for e in entries:
        assert e.verdict == "PASS", e.verdict
        assert Path(e.path).is_dir() and e.size_bytes > e.floor_bytes
        assert e.size_bytes / e.floor_bytes < 1.2  # the spec and labels are ~80 kB of ~1 MB
        assert e.params == 470_072
        assert e.published_top1 is not None
    assert entries[0].macs == 13_570_048 and entries[0].published_top1 == 41.3
    md, js = write_tables(entries, tmp_path)
    assert "| 0.25 | 160 |" in md.read_text()
    assert json.loads(js.read_text())[1]["res"] == 160
