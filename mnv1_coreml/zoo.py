"""All 16 paper variants (alpha x resolution) in one go: convert, validate, size, tabulate.

Variants run in worker processes (one torch thread each) because conversion is mostly
single-threaded Python; on 2 cores two workers roughly halve the wall time. Workers are
*spawned* (a fork after torch, numba and coremltools have started threads can deadlock), and
an initializer sets their thread counts; the parent's environment is never changed.
"""

from __future__ import annotations

import json
import multiprocessing
import os
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from .catalog import published_accuracy
from .errors import OutputExistsError, UserError, one_line
from .fsutil import as_path, atomic_path
from .labels import read_labels_option
from .model import MobileNetConfig
from .summary import PAPER_ALPHAS, PAPER_RESOLUTIONS, paper_macs_millions, summarize

PACKAGE_PREFIX = "MobileNetV1_"


@dataclass
class ZooEntry:
    alpha: float
    res: int
    params: int
    macs: int
    paper_macs_millions: int
    path: str
    size_bytes: int
    floor_bytes: int
    verdict: str  # "PASS", "FAIL", "not validated" or "error: ..."
    worst_max_abs: float | None
    published_top1: float | None  # Keras file if listed, else the paper, else slim 2017
    top1_source: str


def _alpha_tag(alpha: float) -> str:
    return f"{alpha:g}".replace(".", "_")


def _init_worker(threads: int = 1) -> None:
    """Runs first in each spawned worker: one compute thread per worker process."""
    os.environ["OMP_NUM_THREADS"] = str(threads)  # the child's own copy, before numba starts
    os.environ["NUMBA_NUM_THREADS"] = str(threads)
    import torch

    torch.set_num_threads(threads)


def _convert_one(opts: Any) -> ZooEntry:
    """Worker: one variant end to end. Errors become the entry's verdict, not a crash."""
    from .pipeline import convert
    from .sizes import floor_bytes, package_bytes

    custom = read_labels_option(opts.labels)  # your own classes: no published ImageNet top-1
    classes = 1000 if custom is None else len(custom)
    cfg = MobileNetConfig(alpha=opts.alpha, res=opts.res, num_classes=classes)
    s = summarize(cfg)
    acc = (published_accuracy(opts.alpha, opts.res) or {}) if custom is None else {}
    top1, source = None, ""
    for key in ("keras_top1", "paper_top1", "slim2017_top1"):
        if acc.get(key) is not None:
            top1, source = acc[key], key.removesuffix("_top1")
            break
    floor = floor_bytes(cfg, opts.precision, opts.compression)
    entry = ZooEntry(opts.alpha, opts.res, s.params, s.macs, paper_macs_millions(opts.alpha,
                     opts.res), str(opts.output), 0, floor, "not validated", None, top1, source)
    try:
        result = convert(opts)
    except Exception as exc:  # one bad variant must not sink the other fifteen
        entry.verdict = f"error: {one_line(exc, 200)}"
        return entry
    entry.size_bytes = package_bytes(result.path)
    if result.validation is not None:
        entry.verdict = "PASS" if result.validation.passed else "FAIL"
        worst = result.validation.worst
        entry.worst_max_abs = worst.max_abs if worst else None
    return entry


def check_zoo_output(out_dir: str | os.PathLike[str], force: bool, jobs: int = 1) -> None:
    """Refuse before any work: a file in the way, earlier zoo packages, no workers."""
    out_dir = as_path(out_dir)
    if jobs < 1:
        raise UserError(f"jobs must be >= 1, got {jobs}")
    if out_dir.exists() and not out_dir.is_dir():
        raise UserError(f"{out_dir} exists and is not a directory")
    if not force and out_dir.is_dir() and any(out_dir.glob(f"{PACKAGE_PREFIX}*.mlpackage")):
        raise OutputExistsError(f"{out_dir} already holds zoo packages")


def run_zoo(
    base: Any,
    out_dir: str | os.PathLike[str],
    jobs: int = 2,
    on_done: Callable[[ZooEntry], None] | None = None,
    variants: list[tuple[float, int]] | None = None,
) -> list[ZooEntry]:
    """Convert every variant with ``base``'s options (alpha, res and output replaced)."""
    out_dir = as_path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    variants = variants or [(a, r) for a in PAPER_ALPHAS for r in PAPER_RESOLUTIONS]
    todo = [
        replace(base, alpha=a, res=r,
                output=out_dir / f"{PACKAGE_PREFIX}{_alpha_tag(a)}_{r}.mlpackage")
        for a, r in variants
    ]
    entries: list[ZooEntry] = []
    if jobs <= 1:
        for opts in todo:
            entries.append(_convert_one(opts))
            if on_done:
                on_done(entries[-1])
    else:
        with ProcessPoolExecutor(
            max_workers=jobs, mp_context=multiprocessing.get_context("spawn"),
            initializer=_init_worker,
        ) as pool:
            futures = [pool.submit(_convert_one, opts) for opts in todo]
            for fut in as_completed(futures):
                entries.append(fut.result())
                if on_done:
                    on_done(entries[-1])
    order = {v: i for i, v in enumerate(variants)}
    entries.sort(key=lambda e: order[(e.alpha, e.res)])
    return entries


def zoo_markdown(entries: list[ZooEntry]) -> str:
    lines = [
        "| alpha | res | params | mult-adds | size (MB) | floor (MB) | size/floor | validation "
        "| worst max-abs | ImageNet top-1 (%) |",
        "|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|",
    ]
    for e in entries:
        ratio = f"{e.size_bytes / e.floor_bytes:.4f}" if e.size_bytes else "-"
        worst = f"{e.worst_max_abs:.3g}" if e.worst_max_abs is not None else "-"
        top1 = f"{e.published_top1} ({e.top1_source})" if e.published_top1 is not None else "-"
        lines.append(
            f"| {e.alpha} | {e.res} | {e.params:,} | {e.macs:,} | {e.size_bytes / 1e6:.3f} | "
            f"{e.floor_bytes / 1e6:.3f} | {ratio} | {e.verdict} | {worst} | {top1} |"
        )
    return "\n".join(lines) + "\n"


def write_tables(
    entries: list[ZooEntry], out_dir: str | os.PathLike[str]
) -> tuple[Path, Path]:
    """``zoo.md`` and ``zoo.json`` in ``out_dir``, each written atomically."""
    out_dir = as_path(out_dir)
    md, js = out_dir / "zoo.md", out_dir / "zoo.json"
    for path, text in ((md, zoo_markdown(entries)),
                       (js, json.dumps([asdict(e) for e in entries], indent=2) + "\n")):
        with atomic_path(path, force=True) as tmp:
            tmp.write_text(text)
    return md, js
