"""Accuracy of packages on a labelled image folder, next to the PyTorch model they came from.

Validation proves agreement on a dozen golden images; users choose a compression level by
accuracy on *their* data. :func:`evaluate` streams a labelled folder (see
:mod:`mnv1_coreml.datasets`) through several packages at once (each image is decoded once, in
worker processes, and prepared once per resolution), and through the PyTorch fp32 model
rebuilt from each package's ``mnv1.*`` metadata. Only counters are kept (per class, per
package), so memory does not grow with the dataset.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import closing, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .backends import BackendName, ComputeUnits
from .datasets import (
    PrepSpec,
    describe_preprocessing,
    find_dataset,
    map_classes,
    stream_chunks,
)
from .errors import UserError
from .predict import ImageClassifier

META = "mnv1."
WORST = 10


# --------------------------------------------------------------------------------------------
# the PyTorch fp32 reference, rebuilt from metadata


@dataclass
class TorchReference:
    """The PyTorch fp32 model a package was converted from, shared by packages made from it."""

    key: str
    description: str
    res: int
    model: Any  # mnv1_coreml.model.MobileNetV1
    normalization: Any  # mnv1_coreml.images.Normalization
    n: int = 0
    top1: int = 0
    top5: int = 0
    seconds: float = 0.0

    def logits(self, images: np.ndarray) -> np.ndarray:
        import torch

        with torch.inference_mode():
            return self.model(self.normalization.apply(images)).numpy()


def reference_key(metadata: Mapping[str, str], num_classes: int) -> str | None:
    """What identifies the PyTorch model behind a package (None: not made by ``convert``)."""
    keys = ("alpha", "resolution", "weights", "weights_sha256")
    if any(f"{META}{k}" not in metadata for k in keys):
        return None
    from .metadata import settings_of

    ident = {k: metadata[f"{META}{k}"] for k in keys}
    ident.update(settings_of(metadata))
    ident["num_classes"] = num_classes
    return json.dumps(ident, sort_keys=True)


def build_reference(metadata: Mapping[str, str], num_classes: int) -> TorchReference:
    """Load the weights the metadata names (hash-pinned) with its recorded settings.

    Raises :class:`UserError` when that is impossible (weights file gone, no network for
    ImageNet weights, a hash that no longer matches); callers report it as a note.
    """
    from .metadata import settings_of
    from .weights import build_model, load_weights

    key = reference_key(metadata, num_classes)
    if key is None:
        raise UserError("no mnv1.* metadata (not made by mnv1-coreml convert)")
    spec = metadata[f"{META}weights"]
    seed = 0
    try:
        alpha = float(metadata[f"{META}alpha"])
        res = int(metadata[f"{META}resolution"])
        if spec.startswith("random:"):
            spec, seed = "random", int(spec.split(":", 1)[1])
    except ValueError as exc:
        raise UserError(f"malformed mnv1.* metadata ({exc})") from None
    settings = settings_of(metadata)
    overrides: dict[str, object] = {
        k: settings[k] for k in ("padding", "activation", "bn_eps") if k in settings
    }
    if "normalization" in settings:
        norm = settings["normalization"]
        overrides["normalization"] = (tuple(norm["mean"]), tuple(norm["std"]))
    weights = load_weights(
        spec, alpha, res, seed=seed, overrides=overrides,
        sha256=metadata[f"{META}weights_sha256"], num_classes=num_classes,
    )
    model = build_model(alpha, res, weights, num_classes=num_classes)
    desc = f"PyTorch fp32 alpha={alpha:g} res={res} weights {metadata[f'{META}weights']}"
    return TorchReference(key, desc, res, model, weights.settings.normalization)


# --------------------------------------------------------------------------------------------
# results


@dataclass
class PackageResult:
    """What one package scored, and how it compares with its PyTorch reference."""

    path: str
    size_bytes: int
    kind: str
    backend: str
    res: int
    num_classes: int
    n: int = 0
    top1: int = 0
    top5: int = 0
    seconds: float = 0.0
    reference: str | None = None  # TorchReference.key
    reference_note: str = ""
    agree: int = 0
    flips_package_right: int = 0  # package right, PyTorch wrong
    flips_pytorch_right: int = 0  # PyTorch right, package wrong
    class_count: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    class_correct: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    labels: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        return Path(self.path).name

    @property
    def images_per_second(self) -> float:
        return self.n / self.seconds if self.seconds > 0 else 0.0

    def worst_classes(self, k: int = WORST) -> list[tuple[str, int, int]]:
        """(label, correct, count) of the ``k`` classes with the lowest top-1, seen classes only
        (ties: more images first, then label order)."""
        seen = np.flatnonzero(self.class_count)
        acc = self.class_correct[seen] / self.class_count[seen]
        order = sorted(range(len(seen)), key=lambda i: (acc[i], -self.class_count[seen[i]],
                                                        seen[i]))
        return [(self.labels[seen[i]], int(self.class_correct[seen[i]]),
                 int(self.class_count[seen[i]])) for i in order[:k]]


def _pct(num: int, den: int) -> float | None:
    return 100.0 * num / den if den else None


@dataclass
class EvaluationReport:
    data: str
    layout: str
    preprocessing: str
    crop_fraction: float | None
    classes: int
    images_listed: int
    packages: list[PackageResult]
    references: dict[str, TorchReference]
    images_seen: int = 0
    unreadable: int = 0
    unreadable_examples: list[tuple[str, str]] = field(default_factory=list)
    interrupted: bool = False
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)

    @property
    def images_evaluated(self) -> int:
        return self.images_seen - self.unreadable

    def reference_for(self, pkg: PackageResult) -> TorchReference | None:
        return self.references.get(pkg.reference) if pkg.reference else None

    def to_json(self) -> dict[str, Any]:
        def pkg_json(p: PackageResult) -> dict[str, Any]:
            ref = self.reference_for(p)
            return {
                "package": p.path, "size_bytes": p.size_bytes, "kind": p.kind,
                "backend": p.backend, "resolution": p.res, "classes": p.num_classes,
                "images": p.n, "top1": _pct(p.top1, p.n), "top5": _pct(p.top5, p.n),
                "images_per_second": p.images_per_second,
                "pytorch": None if ref is None else {
                    "model": ref.description, "images": ref.n, "top1": _pct(ref.top1, ref.n),
                    "top5": _pct(ref.top5, ref.n),
                    "images_per_second": ref.n / ref.seconds if ref.seconds else 0.0,
                },
                "pytorch_note": p.reference_note or None,
                "agreement": _pct(p.agree, p.n) if ref is not None else None,
                "flips": None if ref is None else {
                    "package_right_pytorch_wrong": p.flips_package_right,
                    "pytorch_right_package_wrong": p.flips_pytorch_right,
                },
                "worst_classes": [
                    {"label": lab, "correct": c, "images": n, "top1": _pct(c, n)}
                    for lab, c, n in p.worst_classes()
                ],
            }

        return {
            "data": self.data, "layout": self.layout, "preprocessing": self.preprocessing,
            "crop_fraction": self.crop_fraction, "classes": self.classes,
            "images_listed": self.images_listed, "images_seen": self.images_seen,
            "images_evaluated": self.images_evaluated, "unreadable": self.unreadable,
            "unreadable_examples": [{"image": p, "error": e}
                                    for p, e in self.unreadable_examples],
            "interrupted": self.interrupted, "seconds": self.seconds, "notes": self.notes,
            "packages": [pkg_json(p) for p in self.packages],
        }

    def summary_rows(self) -> list[dict[str, str]]:
        """One row per package (ordered by size), formatted for a table."""
        def f(x: float | None, digits: int = 2) -> str:
            return "-" if x is None else f"{x:.{digits}f}"

        rows = []
        for p in self.packages:
            ref = self.reference_for(p)
            rows.append({
                "package": p.name, "size MB": f"{p.size_bytes / 1e6:.2f}", "kind": p.kind,
                "images": str(p.n), "top-1 %": f(_pct(p.top1, p.n)),
                "top-5 %": f(_pct(p.top5, p.n)),
                "PyTorch top-1 %": f(_pct(ref.top1, ref.n)) if ref else "-",
                "PyTorch top-5 %": f(_pct(ref.top5, ref.n)) if ref else "-",
                "agreement %": f(_pct(p.agree, p.n)) if ref else "-",
                "flips +/-": f"+{p.flips_package_right}/-{p.flips_pytorch_right}" if ref
                else "-",
                "images/s": f"{p.images_per_second:.1f}",
            })
        return rows

    def header_lines(self) -> list[str]:
        lines = [
            f"data: {self.data} ({self.layout} layout, {self.classes} classes, "
            f"{self.images_listed} images listed)",
            f"preprocessing: {self.preprocessing}",
            f"evaluated: {self.images_evaluated} images"
            + (f", {self.unreadable} unreadable (skipped)" if self.unreadable else "")
            + f", {self.seconds:.1f} s"
            + (" -- INTERRUPTED, results so far" if self.interrupted else ""),
        ]
        lines += [f"note: {n}" for n in self.notes]
        for p in self.packages:
            if p.reference_note:
                lines.append(f"note: {p.name}: PyTorch reference skipped: {p.reference_note}")
        return lines

    def to_markdown(self) -> str:
        rows = self.summary_rows()
        out = ["# mnv1-coreml evaluate", ""] + [f"- {line}" for line in self.header_lines()]
        out += ["", "Flips: +package right and PyTorch wrong / -PyTorch right and package wrong.",
                ""]
        if rows:
            cols = list(rows[0])
            out.append("| " + " | ".join(cols) + " |")
            out.append("|" + "|".join("---" if c in ("package", "kind") else "---:"
                                      for c in cols) + "|")
            out += ["| " + " | ".join(r[c] for c in cols) + " |" for r in rows]
        for p in self.packages:
            worst = p.worst_classes()
            if not worst:
                continue
            out += ["", f"## {p.name}: {len(worst)} worst classes", "",
                    "| class | top-1 | correct / images |", "|---|---:|---:|"]
            out += [f"| {lab} | {100 * c / n:.1f}% | {c}/{n} |" for lab, c, n in worst]
        return "\n".join(out) + "\n"


# --------------------------------------------------------------------------------------------
# the run


def _kind(metadata: Mapping[str, str]) -> str:
    if f"{META}precision" not in metadata:
        return "-"
    from .metadata import model_kind

    try:
        return model_kind(metadata)
    except UserError:
        return "-"


def _topk_hits(scores: np.ndarray, targets: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(top-1 prediction, whether the target is among the top ``k``) per row."""
    top1 = scores.argmax(axis=1)
    k = min(k, scores.shape[1])
    if k == scores.shape[1]:
        return top1, np.ones(len(targets), bool)
    top = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    return top1, (top == targets[:, None]).any(axis=1)


def evaluate(
    packages: Sequence[str | os.PathLike[str]],
    data: str | os.PathLike[str],
    *,
    labels_csv: str | os.PathLike[str] | None = None,
    limit: int | None = None,
    crop_fraction: float | None = None,
    jobs: int = 2,
    batch_size: int = 32,
    backend: BackendName = "auto",
    compute_units: ComputeUnits = "all",
    pytorch: bool = True,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    on_start: Callable[[int], None] | None = None,
    on_progress: Callable[[int], None] | None = None,
    on_unreadable: Callable[[str, str], None] | None = None,
) -> EvaluationReport:
    """Top-1/top-5 of each package on ``data``, and of the PyTorch model each came from.

    ``on_start(total)`` is called once the images are listed, ``on_progress(done)`` after each
    chunk, ``on_unreadable(path, reason)`` per file that cannot be decoded (it is counted and
    skipped). Ctrl-C stops early: the report so far comes back with ``interrupted`` set.
    ``mean``/``std`` are for packages with a multi-array input (see
    :class:`~mnv1_coreml.predict.ImageClassifier`).
    """
    from .sizes import package_bytes

    if not packages:
        raise UserError("give at least one .mlpackage to evaluate")
    if crop_fraction is not None and not 0.0 < crop_fraction <= 1.0:
        raise UserError(f"--crop-fraction must be in (0, 1], got {crop_fraction}")
    if jobs < 0:
        raise UserError(f"--jobs must be >= 0, got {jobs}")
    if batch_size < 1:
        raise UserError(f"--batch-size must be >= 1, got {batch_size}")
    paths = [Path(p) for p in packages]
    if len(set(map(str, paths))) != len(paths):
        raise UserError("a package is given twice")
    dataset = find_dataset(data, labels_csv, limit)
    # Accuracy statistics do not need a batch to give the bits of single runs: let convs
    # and the FC take whole batches (ReferenceModel exact_batch=False), ~1.5x faster.
    classifiers = [ImageClassifier(p, backend=backend, compute_units=compute_units,
                                   mean=mean, std=std, exact_batch=False) for p in paths]
    targets = [map_classes(dataset, c.labels, c.path.name) for c in classifiers]
    results = [
        PackageResult(str(c.path), package_bytes(c.path), _kind(c.info.metadata),
                      c.backend_name, c.res, c.info.num_classes,
                      class_count=np.zeros(c.info.num_classes, np.int64),
                      class_correct=np.zeros(c.info.num_classes, np.int64),
                      labels=list(c.labels))
        for c in classifiers
    ]
    references: dict[str, TorchReference] = {}
    notes_by_key: dict[str, str] = {}
    for c, r in zip(classifiers, results, strict=True):
        if not pytorch:
            r.reference_note = "not requested"
            continue
        try:
            key = reference_key(c.info.metadata, c.info.num_classes)
        except UserError as exc:
            r.reference_note = " ".join(str(exc).split())
            continue
        if key is None:
            r.reference_note = "no mnv1.* metadata (not made by mnv1-coreml convert)"
            continue
        if key not in references and key not in notes_by_key:
            try:
                references[key] = build_reference(c.info.metadata, c.info.num_classes)
            except UserError as exc:
                notes_by_key[key] = " ".join(str(exc).split())
        if key in references:
            r.reference = key
        else:
            r.reference_note = notes_by_key[key]
    specs: list[PrepSpec] = sorted({(c.res, crop_fraction) for c in classifiers},
                                   key=lambda s: s[0])
    spec_of = {res: i for i, (res, _) in enumerate(specs)}
    order = sorted(range(len(results)), key=lambda i: (results[i].size_bytes, results[i].path))
    report = EvaluationReport(
        str(dataset.root), dataset.layout, describe_preprocessing(crop_fraction), crop_fraction,
        len(dataset.classes), len(dataset), [results[i] for i in order], references,
        notes=list(dataset.notes),
    )
    if on_start is not None:
        on_start(len(dataset))
    start = time.perf_counter()
    with model_threads(jobs), closing(stream_chunks(dataset.paths, specs, batch_size,
                                                    jobs)) as chunks:
        try:
            for chunk in chunks:
                _consume(chunk, dataset, classifiers, targets, results, references, spec_of,
                         report, on_unreadable)
                if on_progress is not None:
                    on_progress(report.images_seen)
        except KeyboardInterrupt:
            report.interrupted = True
    report.seconds = time.perf_counter() - start
    return report


@contextmanager
def model_threads(jobs: int) -> Iterator[int]:
    """Torch intra-op threads for the models while ``jobs`` processes decode: the cores the
    decoders leave (at least one). Oversubscribed OpenMP threads spin at barriers, which costs
    the interpreter's many small per-image convolutions far more than one batched PyTorch call.
    Restored afterwards."""
    import torch

    before = torch.get_num_threads()
    threads = max(1, min(before, (os.cpu_count() or 1) - jobs))
    torch.set_num_threads(threads)
    try:
        yield threads
    finally:
        torch.set_num_threads(before)


def _consume(
    chunk: Any,
    dataset: Any,
    classifiers: Sequence[ImageClassifier],
    targets: Sequence[np.ndarray],
    results: Sequence[PackageResult],
    references: Mapping[str, TorchReference],
    spec_of: Mapping[int, int],
    report: EvaluationReport,
    on_unreadable: Callable[[str, str], None] | None,
) -> None:
    """Run one decoded chunk through every package and reference; update the counters.

    Counters are updated only once the whole chunk has run, so an interrupted run reports
    the same images for every package.
    """
    data_cls = dataset.targets[chunk.indices]
    ref_pred: dict[str, np.ndarray] = {}
    ref_right: dict[str, np.ndarray] = {}
    updates: list[Callable[[], None]] = []
    if len(chunk.indices):
        for key, ref in references.items():
            t0 = time.perf_counter()
            logits = ref.logits(chunk.arrays[spec_of[ref.res]])
            seconds = time.perf_counter() - t0
            # packages made from one model share its label order, hence its targets
            owner = next(i for i, r in enumerate(results) if r.reference == key)
            tgt = targets[owner][data_cls]
            top1, hit5 = _topk_hits(logits, tgt, 5)
            ref_pred[key], ref_right[key] = top1, top1 == tgt

            def upd_ref(ref=ref, seconds=seconds, top1=top1, hit5=hit5, tgt=tgt) -> None:
                ref.n += len(tgt)
                ref.top1 += int((top1 == tgt).sum())
                ref.top5 += int(hit5.sum())
                ref.seconds += seconds

            updates.append(upd_ref)
        for clf, tmap, r in zip(classifiers, targets, results, strict=True):
            tgt = tmap[data_cls]
            t0 = time.perf_counter()
            probs = clf.probabilities(chunk.arrays[spec_of[clf.res]])
            seconds = time.perf_counter() - t0
            top1, hit5 = _topk_hits(probs, tgt, 5)
            right = top1 == tgt

            def upd(r=r, seconds=seconds, right=right, hit5=hit5, tgt=tgt, top1=top1) -> None:
                r.n += len(tgt)
                r.top1 += int(right.sum())
                r.top5 += int(hit5.sum())
                r.seconds += seconds
                np.add.at(r.class_count, tgt, 1)
                np.add.at(r.class_correct, tgt, right.astype(np.int64))
                if r.reference is not None:
                    torch_right = ref_right[r.reference]
                    r.agree += int((top1 == ref_pred[r.reference]).sum())
                    r.flips_package_right += int((right & ~torch_right).sum())
                    r.flips_pytorch_right += int((~right & torch_right).sum())

            updates.append(upd)
    for update in updates:
        update()
    report.images_seen += len(chunk.indices) + len(chunk.errors)
    for index, reason in chunk.errors:
        report.unreadable += 1
        path = str(dataset.paths[index])
        if len(report.unreadable_examples) < 20:
            report.unreadable_examples.append((path, reason))
        if on_unreadable is not None:
            on_unreadable(path, reason)



def write_report(report: EvaluationReport, path: str | os.PathLike[str], fmt: str) -> Path:
    """Write the report as ``json`` or ``markdown``, atomically (temporary file, rename)."""
    from .fsutil import atomic_path

    if fmt == "json":
        text = json.dumps(report.to_json(), indent=2, default=float) + "\n"
    elif fmt == "markdown":
        text = report.to_markdown()
    else:
        raise ValueError(f"unknown report format {fmt!r}")
    out = Path(path)
    with atomic_path(out, force=True) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return out
