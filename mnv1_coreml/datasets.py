"""Labelled image folders for ``evaluate``: layout detection, class mapping, streaming decode.

Three layouts are recognised: class folders named by WordNet ID (ImageNet val), class folders
named by label (any dataset), and a flat folder with a CSV of ``filename,label`` (Kaggle's
``LOC_val_solution.csv`` is read as is). Only file paths are held, never pixels: images are
decoded in small chunks, by worker processes, while the models run.
"""

from __future__ import annotations

import csv
import os
import re
import signal
import threading
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from importlib.resources import files
from multiprocessing import get_context
from pathlib import Path
from typing import Literal

import numpy as np

from .errors import UserError
from .images import IMAGE_SUFFIXES

WNID = re.compile(r"^n\d{8}$")
#: First cells that mark a header row in a labels CSV (Kaggle: ``ImageId,PredictionString``).
HEADER_NAMES = {"filename", "file", "image", "imageid", "image_id", "path", "name", "id"}

Layout = Literal["wordnet", "labels", "csv"]
#: How to prepare pixels: (resolution, crop fraction); None means Vision's ``.centerCrop``.
PrepSpec = tuple[int, float | None]


@dataclass(frozen=True)
class Dataset:
    """Where every image is and which class it belongs to (names as the data spells them)."""

    root: Path
    layout: Layout
    paths: list[Path]
    targets: np.ndarray  # int32 index into ``classes`` per path
    classes: list[str]  # WordNet IDs, folder names or CSV labels, sorted
    notes: list[str]  # things the user should know (files the CSV lists but are missing, ...)

    def __len__(self) -> int:
        return len(self.paths)


@lru_cache(maxsize=1)
def wordnet_to_imagenet_label() -> dict[str, str]:
    """WordNet ID -> the unique ImageNet label our packages use (``labels.imagenet_labels``)."""
    from .labels import imagenet_labels

    text = files("mnv1_coreml").joinpath("data/imagenet_classes.tsv").read_text("utf-8")
    rows = list(csv.DictReader(text.splitlines(), delimiter="\t"))
    return {r["wnid"]: imagenet_labels()[int(r["index"])] for r in rows}


def _is_image(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES


def _interleave(per_class: list[list[Path]]) -> tuple[list[Path], list[int]]:
    """Round-robin over classes, so ``--limit N`` samples every class, not the first few."""
    paths: list[Path] = []
    targets: list[int] = []
    longest = max((len(p) for p in per_class), default=0)
    for i in range(longest):
        for cls, items in enumerate(per_class):
            if i < len(items):
                paths.append(items[i])
                targets.append(cls)
    return paths, targets


def find_dataset(
    data: str | os.PathLike[str],
    labels_csv: str | os.PathLike[str] | None = None,
    limit: int | None = None,
) -> Dataset:
    """Detect the layout of ``data`` and list its images with their class names."""
    root = Path(data)
    if not root.is_dir():
        raise UserError(f"--data {root} is not a directory")
    if limit is not None and limit < 1:
        raise UserError(f"--limit must be >= 1, got {limit}")
    if labels_csv is not None:
        ds = _csv_dataset(root, Path(labels_csv))
    else:
        subdirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
        per_class = [sorted(p for p in d.rglob("*") if _is_image(p)) for d in subdirs]
        keep = [(d.name, items) for d, items in zip(subdirs, per_class, strict=True) if items]
        if not keep:
            flat = [p for p in root.iterdir() if _is_image(p)]
            if flat:
                raise UserError(
                    f"{root} holds images but no class folders; pass --labels-csv FILE "
                    "(filename,label) for a flat folder"
                )
            raise UserError(
                f"no images ({', '.join(IMAGE_SUFFIXES)}) in class folders under {root}"
            )
        names = [n for n, _ in keep]
        layout: Layout = "wordnet" if all(WNID.match(n) for n in names) else "labels"
        paths, targets = _interleave([items for _, items in keep])
        ds = Dataset(root, layout, paths, np.asarray(targets, np.int32), names, [])
    if limit is not None and limit < len(ds.paths):
        ds = Dataset(ds.root, ds.layout, ds.paths[:limit], ds.targets[:limit], ds.classes,
                     ds.notes)
    return ds


def _csv_dataset(root: Path, csv_path: Path) -> Dataset:
    if not csv_path.is_file():
        raise UserError(f"--labels-csv {csv_path} is not a file")
    try:
        with open(csv_path, newline="", encoding="utf-8-sig") as f:
            rows = [r for r in csv.reader(f) if r and any(c.strip() for c in r)]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise UserError(f"cannot read --labels-csv {csv_path}: {exc}") from None
    if rows and rows[0][0].strip().lower() in HEADER_NAMES:
        rows = rows[1:]
    if not rows:
        raise UserError(f"--labels-csv {csv_path} lists no images")
    bad = [i for i, r in enumerate(rows) if len(r) < 2 or not r[1].split()]
    if bad:
        raise UserError(
            f"--labels-csv {csv_path}: row {bad[0] + 1} is not 'filename,label' ({rows[bad[0]]})"
        )
    images = [p for p in root.rglob("*") if _is_image(p)]
    by_rel = {p.relative_to(root).as_posix(): p for p in images}
    by_stem: dict[str, Path] = {}
    for p in images:  # Kaggle's ImageId has no extension
        by_stem.setdefault(p.relative_to(root).with_suffix("").as_posix(), p)
    per_class: dict[str, list[Path]] = {}
    missing = []
    for row in rows:
        name = row[0].strip()
        label = row[1].strip()
        first = label.split()[0]
        if WNID.match(first):  # Kaggle: "n01751748 9 7 499 333 ..." -> the WordNet ID
            label = first
        path = by_rel.get(name) or by_stem.get(name)
        if path is None:
            missing.append(name)
            continue
        per_class.setdefault(label, []).append(path)
    if not per_class:
        raise UserError(
            f"none of the {len(rows)} files --labels-csv {csv_path} lists is an image in {root} "
            f"(first: {rows[0][0]!r})"
        )
    classes = sorted(per_class)
    paths, targets = _interleave([sorted(per_class[c]) for c in classes])
    notes = []
    if missing:
        notes.append(f"{len(missing)} file(s) listed in {csv_path.name} are not in {root} "
                     f"(first: {missing[0]}); skipped")
    return Dataset(root, "csv", paths, np.asarray(targets, np.int32), classes, notes)


def _normalised(name: str) -> str:
    return " ".join(name.replace("_", " ").split()).casefold()


def map_classes(dataset: Dataset, labels: Sequence[str], model: str) -> np.ndarray:
    """Index into ``labels`` (the model's) for each data class, or a UserError naming unknowns.

    A class may be a WordNet ID (through the ImageNet label table, or a model labelled by
    WordNet ID), a label (exactly, or ignoring case and ``_`` vs space), or, in a CSV, an index.
    """
    index = {str(label): i for i, label in enumerate(labels)}
    loose: dict[str, int] = {}
    for i, label in enumerate(labels):
        loose.setdefault(_normalised(str(label)), i)
    wn = wordnet_to_imagenet_label()
    mapped, unknown = [], []
    for cls in dataset.classes:
        i = index.get(cls)
        if i is None and WNID.match(cls) and cls in wn:
            i = index.get(wn[cls])
        if i is None:
            i = loose.get(_normalised(cls))
        if i is None and dataset.layout == "csv" and cls.isdigit() and int(cls) < len(labels):
            i = int(cls)
        if i is None:
            unknown.append(cls)
        mapped.append(-1 if i is None else i)
    if unknown:
        shown = ", ".join(unknown[:8]) + (f", ... ({len(unknown)} in all)" if len(unknown) > 8
                                          else "")
        what = {"wordnet": "WordNet IDs", "labels": "class folders",
                "csv": "labels in the CSV"}[dataset.layout]
        sample = ", ".join(str(x) for x in list(labels)[:5])
        raise UserError(
            f"{what} not among the {len(labels)} labels of {model}: {shown} "
            f"(its labels start: {sample})"
        )
    return np.asarray(mapped, np.int64)


# --------------------------------------------------------------------------------------------
# decoding


def describe_preprocessing(crop_fraction: float | None) -> str:
    if crop_fraction is None:
        return "centre square, resized to R (Vision .centerCrop, as the app does)"
    return (f"shorter side resized to R/{crop_fraction:g}, centre crop R "
            "(the standard ImageNet evaluation protocol)")


def decode(path: str | os.PathLike[str], specs: Sequence[PrepSpec]) -> list[np.ndarray]:
    """One image file, prepared once per (resolution, crop fraction) in ``specs``."""
    from PIL import Image

    from .images import prepare_image, prepare_image_fraction

    with Image.open(path) as im:
        im.load()
        return [
            prepare_image(im, res) if frac is None else prepare_image_fraction(im, res, frac)
            for res, frac in specs
        ]


@dataclass
class Chunk:
    """Decoded images of consecutive dataset entries; failures are reported, not raised."""

    start: int
    indices: list[int]  # dataset positions that decoded
    arrays: list[np.ndarray]  # one uint8 (n, R, R, 3) per PrepSpec
    errors: list[tuple[int, str]]  # (dataset position, reason) of unreadable files


def decode_chunk(start: int, paths: Sequence[str], specs: Sequence[PrepSpec]) -> Chunk:
    """Decode ``paths``; a corrupt or unreadable file becomes an error entry, never a crash."""
    ok: list[int] = []
    per_spec: list[list[np.ndarray]] = [[] for _ in specs]
    errors: list[tuple[int, str]] = []
    for i, path in enumerate(paths):
        try:
            prepared = decode(path, specs)
        except Exception as exc:  # PIL raises many types for bad files; each is one line
            errors.append((start + i, f"{type(exc).__name__}: {exc}".splitlines()[0]))
            continue
        ok.append(start + i)
        for store, arr in zip(per_spec, prepared, strict=True):
            store.append(arr)
    arrays = [
        np.stack(store) if store else np.zeros((0, res, res, 3), np.uint8)
        for store, (res, _) in zip(per_spec, specs, strict=True)
    ]
    return Chunk(start, ok, arrays, errors)


@contextmanager
def _sigint_ignored() -> Iterator[None]:
    """SIGINT ignored inside the block (main thread only), so processes spawned there start
    with it ignored (an ignored signal survives exec); the parent's handler is restored."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _worker_init() -> None:
    """Workers ignore Ctrl-C: the parent handles it, then shuts them down."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def stream_chunks(
    paths: Sequence[Path], specs: Sequence[PrepSpec], chunk_size: int = 32, jobs: int = 2
) -> Iterator[Chunk]:
    """Decoded chunks in dataset order, with at most ``2 * jobs`` chunks in flight.

    ``jobs`` worker processes (spawn context: safe with torch threads in the parent) decode
    while the caller runs models; ``jobs=0`` decodes in this process. Memory stays bounded by
    the chunks in flight, whatever the dataset size.
    """
    starts = range(0, len(paths), chunk_size)

    def args(start: int) -> tuple[int, list[str], list[PrepSpec]]:
        return start, [str(p) for p in paths[start : start + chunk_size]], list(specs)

    if jobs <= 0:
        for start in starts:
            yield decode_chunk(*args(start))
        return
    pool = ProcessPoolExecutor(jobs, mp_context=get_context("spawn"), initializer=_worker_init)
    pending: list[Future[Chunk]] = []
    it = iter(starts)
    try:
        with _sigint_ignored():  # workers start now and inherit it: no tracebacks on Ctrl-C
            for start in it:
                pending.append(pool.submit(decode_chunk, *args(start)))
                if len(pending) >= 2 * jobs:
                    break
        while pending:
            chunk = pending.pop(0).result()
            nxt = next(it, None)
            if nxt is not None:
                pending.append(pool.submit(decode_chunk, *args(nxt)))
            yield chunk
    finally:
        for f in pending:
            f.cancel()
        pool.shutdown(wait=True, cancel_futures=True)
