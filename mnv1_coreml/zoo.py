"""All 16 paper variants (alpha x resolution) in one go: convert, validate, size, tabulate.

Variants run in worker processes (one torch thread each) because conversion is mostly
single-threaded Python; on 2 cores two workers roughly halve the wall time.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from .model import MobileNetConfig
from .summary import PAPER_ALPHAS, PAPER_RESOLUTIONS, paper_macs_millions, summarize


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


def _convert_one(opts: Any) -> ZooEntry:
    """Worker: one variant end to end. Errors become the entry's verdict, not a crash."""
    import torch

    torch.set_num_threads(1)
    from .convert import convert
    from .sizes import floor_bytes, package_bytes
    from .weights import published_accuracy

    cfg = MobileNetConfig(alpha=opts.alpha, res=opts.res)
    s = summarize(cfg)
    acc = published_accuracy(opts.alpha, opts.res) or {}
    top1, source = None, ""
    for key in ("keras_top1", "paper_top1", "slim2017_top1"):
        if acc.get(key) is not None:
            top1, source = acc[key], key.removesuffix("_top1")
            break
    comp = opts.compression
    floor = floor_bytes(
        cfg, opts.precision, comp.palettize_bits if comp else None, comp.quantize if comp else None
    )
    entry = ZooEntry(opts.alpha, opts.res, s.params, s.macs, paper_macs_millions(opts.alpha,
                     opts.res), str(opts.output), 0, floor, "not validated", None, top1, source)
    try:
        result = convert(opts)
    except Exception as exc:  # one bad variant must not sink the other fifteen
        entry.verdict = f"error: {' '.join(str(exc).split())[:200]}"
        return entry
    entry.size_bytes = package_bytes(result.path)
    if result.validation is not None:
        entry.verdict = "PASS" if result.validation.passed else "FAIL"
        worst = result.validation.worst
        entry.worst_max_abs = worst.max_abs if worst else None
    return entry


def run_zoo(
    base: Any,
    out_dir: Path,
    jobs: int = 2,
    on_done: Callable[[ZooEntry], None] | None = None,
    variants: list[tuple[float, int]] | None = None,
) -> list[ZooEntry]:
    """Convert every variant with ``base``'s options (alpha, res and output replaced)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    variants = variants or [(a, r) for a in PAPER_ALPHAS for r in PAPER_RESOLUTIONS]
    todo = [
        replace(base, alpha=a, res=r,
                output=out_dir / f"MobileNetV1_{_alpha_tag(a)}_{r}.mlpackage")
        for a, r in variants
    ]
    entries: list[ZooEntry] = []
    if jobs <= 1:
        for opts in todo:
            entries.append(_convert_one(opts))
            if on_done:
                on_done(entries[-1])
    else:
        env_threads = os.environ.get("OMP_NUM_THREADS")
        os.environ["OMP_NUM_THREADS"] = "1"
        try:
            with ProcessPoolExecutor(max_workers=jobs) as pool:
                futures = [pool.submit(_convert_one, opts) for opts in todo]
                for fut in as_completed(futures):
                    entries.append(fut.result())
                    if on_done:
                        on_done(entries[-1])
        finally:
            if env_threads is None:
                os.environ.pop("OMP_NUM_THREADS", None)
            else:
                os.environ["OMP_NUM_THREADS"] = env_threads
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


def write_tables(entries: list[ZooEntry], out_dir: Path) -> tuple[Path, Path]:
    md, js = out_dir / "zoo.md", out_dir / "zoo.json"
    md.write_text(zoo_markdown(entries))
    js.write_text(json.dumps([asdict(e) for e in entries], indent=2) + "\n")
    return md, js
