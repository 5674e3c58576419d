"""Who runs the ``.mlpackage``: the Core ML runtime (macOS only) or our reference interpreter.

This is the one interface behind which the macOS-only path lives. Both backends return the
same thing, so ``validate`` never asks which one ran except to report it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol

import numpy as np

from .coreml import can_run_coreml, ct
from .errors import UserError
from .modelspec import read_contract

BackendName = Literal["auto", "coreml", "reference"]
ComputeUnits = Literal["all", "cpu", "cpu-gpu", "cpu-ne"]


@dataclass
class BackendOutput:
    """What a model said about N images."""

    probabilities: np.ndarray  # float64 (N, C), columns in ``labels`` order
    labels: list[str]  # the model's own class labels
    class_label: list[str]  # the classLabel output per image
    logits: np.ndarray | None  # (N, C) pre-softmax values, where the backend can see them


class Backend(Protocol):
    name: str

    def run(self, images: np.ndarray) -> BackendOutput: ...


class ReferenceBackend:
    """Our ML Program interpreter: runs anywhere, and exposes the logits before softmax."""

    name = "reference"

    def __init__(self, path: Path) -> None:
        from .mil import ReferenceModel

        self.model = ReferenceModel.load(path)
        contract = read_contract(path)
        self.probs_name = contract.probs_output
        self.label_name = contract.label_output

    def run(self, images: np.ndarray) -> BackendOutput:
        m = self.model
        wanted = [self.probs_name, self.label_name] + ([m.logits_name] if m.logits_name else [])
        result = m.predict(images, outputs=wanted)
        labels = list(m.class_labels or [])
        logits = result[m.logits_name].reshape(len(images), -1) if m.logits_name else None
        return BackendOutput(
            probabilities=np.asarray(result[self.probs_name], dtype=np.float64),
            labels=labels,
            class_label=[str(x) for x in result[self.label_name]],
            logits=None if logits is None else logits.astype(np.float64),
        )


class CoreMLBackend:
    """Apple's Core ML runtime through coremltools (macOS only): what the app will run."""

    name = "coreml"
    UNITS = {"all": "ALL", "cpu": "CPU_ONLY", "cpu-gpu": "CPU_AND_GPU", "cpu-ne": "CPU_AND_NE"}

    def __init__(self, path: Path, compute_units: ComputeUnits = "all") -> None:
        if not can_run_coreml():
            raise UserError(
                "--backend coreml needs macOS (coremltools cannot run models elsewhere); "
                "use --backend reference"
            )
        contract = read_contract(path)
        self.input_name = contract.input_name
        self.probs_name = contract.probs_output
        self.label_name = contract.label_output
        self.labels = contract.labels
        self.model = ct.models.MLModel(
            str(path), compute_units=getattr(ct.ComputeUnit, self.UNITS[compute_units])
        )

    def run(self, images: np.ndarray) -> BackendOutput:
        from PIL import Image

        probs, top = [], []
        for image in images:
            out = self.model.predict({self.input_name: Image.fromarray(image, "RGB")})
            scores: dict[str, float] = out[self.probs_name]
            probs.append([scores[label] for label in self.labels])
            top.append(str(out[self.label_name]))
        return BackendOutput(np.asarray(probs, dtype=np.float64), self.labels, top, None)


def make_backend(
    name: BackendName, path: Path, compute_units: ComputeUnits = "all"
) -> Backend:
    """``auto`` is the Core ML runtime on macOS and the reference interpreter elsewhere."""
    if name == "auto":
        name = "coreml" if can_run_coreml() else "reference"
    if name == "coreml":
        return CoreMLBackend(path, compute_units)
    if name == "reference":
        return ReferenceBackend(path)
    raise UserError(f"unknown backend {name!r}; use auto, coreml or reference")
