"""Who runs the ``.mlpackage``: the Core ML runtime (macOS only) or our reference interpreter.

This is the one interface behind which the macOS-only path lives. Both backends return the
same thing, so ``validate`` never asks which one ran except to report it.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol

import numpy as np

from .coreml import can_run_coreml, ct
from .errors import UserError, one_line
from .fsutil import as_path
from .modelspec import read_contract

#: What loading a damaged package raises from coremltools' readers (a truncated weight file
#: gives ``ValueError: index out of bounds``), as opposed to bugs of ours.
CORRUPT_PACKAGE_ERRORS = (ValueError, OSError, RuntimeError, KeyError, IndexError, EOFError)

BackendName = Literal["auto", "coreml", "reference"]
ComputeUnits = Literal["all", "cpu", "cpu-gpu", "cpu-ne"]


@dataclass
class BackendOutput:
    """What a model said about N images."""

    probabilities: np.ndarray  # float64 (N, C), columns in ``labels`` order
    labels: list[str]  # the model's own class labels
    class_label: list[str]  # the classLabel output per image
    logits: np.ndarray | None  # (N, C) pre-softmax values, where the backend can see them


def corrupt_package(path: Path, exc: BaseException) -> UserError:
    """The one-line error for a package whose spec reads but whose program or weights do not."""
    return UserError(
        f"{path} is corrupt: its program or weights cannot be loaded ({type(exc).__name__}: "
        f"{one_line(exc)}); convert it again"
    )


class Backend(Protocol):
    name: str

    def run(self, images: np.ndarray) -> BackendOutput: ...

    def intermediates(self, images: np.ndarray, names: Sequence[str]) -> dict[str, np.ndarray]:
        """Values of the program vars ``names`` for uint8 RGB images, dim 0 = image."""
        ...


class ReferenceBackend:
    """Our ML Program interpreter: runs anywhere, and exposes the logits before softmax."""

    name = "reference"

    def __init__(self, path: str | os.PathLike[str], *, exact_batch: bool = True) -> None:
        from .mil import ReferenceModel

        path = as_path(path)
        contract = read_contract(path)
        try:
            self.model = ReferenceModel.load(path, exact_batch=exact_batch)
        except UserError:
            raise
        except CORRUPT_PACKAGE_ERRORS as exc:  # e.g. a truncated weight.bin
            raise corrupt_package(path, exc) from None
        self.probs_name = contract.probs_output
        self.label_name = contract.label_output
        #: Program vars that ``run`` also reads, in the same pass (``validate --layers``), and
        #: their values from the last run, for ``intermediates`` on the same images.
        self.watch: list[str] = []
        self._watched: tuple[bytes, dict[str, np.ndarray]] = (b"", {})

    def run(self, images: np.ndarray) -> BackendOutput:
        m = self.model
        wanted = [self.probs_name, self.label_name] + ([m.logits_name] if m.logits_name else [])
        result = m.predict(images, outputs=list(dict.fromkeys(wanted + self.watch)))
        if self.watch:
            self._watched = (_images_key(images), {n: result[n] for n in self.watch})
        labels = list(m.class_labels or [])
        logits = result[m.logits_name].reshape(len(images), -1) if m.logits_name else None
        return BackendOutput(
            probabilities=np.asarray(result[self.probs_name], dtype=np.float64),
            labels=labels,
            class_label=[str(x) for x in result[self.label_name]],
            logits=None if logits is None else logits.astype(np.float64),
        )

    def intermediates(self, images: np.ndarray, names: Sequence[str]) -> dict[str, np.ndarray]:
        """The interpreter can hand back any var it computes (from the last ``run`` when it
        watched these vars on these images, so ``validate --layers`` runs the program once)."""
        key, values = self._watched
        if set(names) <= set(values) and key == _images_key(images):
            return {n: values[n] for n in names}
        return self.model.predict(images, outputs=list(names))


def _images_key(images: np.ndarray) -> bytes:
    arr = np.ascontiguousarray(images)
    return hashlib.sha256(repr((arr.shape, arr.dtype.str)).encode() + arr.tobytes()).digest()


class CoreMLBackend:
    """Apple's Core ML runtime through coremltools (macOS only): what the app will run."""

    name = "coreml"
    UNITS = {"all": "ALL", "cpu": "CPU_ONLY", "cpu-gpu": "CPU_AND_GPU", "cpu-ne": "CPU_AND_NE"}

    def __init__(self, path: str | os.PathLike[str], compute_units: ComputeUnits = "all") -> None:
        if not can_run_coreml():
            raise UserError(
                "the coreml backend needs macOS (coremltools cannot run models elsewhere); "
                "use the reference backend (--backend reference)"
            )
        contract = read_contract(path)
        self.input_name = contract.input_name
        self.probs_name = contract.probs_output
        self.label_name = contract.label_output
        self.labels = contract.labels
        try:
            self.model = ct.models.MLModel(
                str(path), compute_units=getattr(ct.ComputeUnit, self.UNITS[compute_units])
            )
        except CORRUPT_PACKAGE_ERRORS as exc:
            raise corrupt_package(as_path(path), exc) from None

    def run(self, images: np.ndarray) -> BackendOutput:
        from PIL import Image

        probs, top = [], []
        for image in images:
            out = self.model.predict({self.input_name: Image.fromarray(image, "RGB")})
            scores: dict[str, float] = out[self.probs_name]
            probs.append([scores[label] for label in self.labels])
            top.append(str(out[self.label_name]))
        return BackendOutput(np.asarray(probs, dtype=np.float64), self.labels, top, None)

    def intermediates(self, images: np.ndarray, names: Sequence[str]) -> dict[str, np.ndarray]:
        """Program vars re-exposed as outputs by coremltools' ``MLModelInspector`` (as its
        comparators do), run on this backend's compute units, one image at a time."""
        import asyncio

        from coremltools.models.ml_program.experimental.debugging_utils import MLModelInspector
        from PIL import Image

        inspector = MLModelInspector(self.model, compute_units=self.model.compute_unit)

        async def collect() -> list[dict[str, np.ndarray | None]]:
            found = []
            for image in images:
                feeds = {self.input_name: Image.fromarray(image, "RGB")}
                found.append({n: v async for n, v in inspector.inspect(feeds, list(names))})
            return found

        per_image = asyncio.run(collect())
        missing = sorted({n for p in per_image for n in names if p.get(n) is None})
        if missing:
            raise UserError(f"the Core ML runtime did not return {', '.join(missing)}")
        return {n: np.stack([np.asarray(p[n]) for p in per_image]) for n in names}


def make_backend(
    name: BackendName, path: str | os.PathLike[str], compute_units: ComputeUnits = "all",
    *, exact_batch: bool = True,
) -> Backend:
    """``auto`` is the Core ML runtime on macOS and the reference interpreter elsewhere.

    ``exact_batch=False`` lets the interpreter run convs on whole batches (last-bit
    differences from single runs): for accuracy statistics, never for validation."""
    if name == "auto":
        name = "coreml" if can_run_coreml() else "reference"
    if name == "coreml":
        return CoreMLBackend(path, compute_units)
    if name == "reference":
        return ReferenceBackend(path, exact_batch=exact_batch)
    raise UserError(f"unknown backend {name!r}; use auto, coreml or reference")
