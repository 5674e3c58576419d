"""What a package says about photos: any image-classifier ML Program, not only ours.

:class:`ImageClassifier` runs a package on uint8 RGB images prepared exactly as the golden
images are (Vision's ``.centerCrop``: :func:`mnv1_coreml.images.prepare_image`). It needs no
``mnv1.*`` metadata. It reads from the package itself:

- the input: an image (the program scales pixels itself), or a float multi-array of shape
  (1, 3, R, R) or (1, R, R, 3), fed ``(pixel/255 - mean)/std`` with the caller's mean and std;
- the output: a classifier (``classify`` op with its labels), a softmax, or raw logits (then
  softmaxed here, and said so), labelled by class index when the model carries no labels.

Classifiers with an image input run on a backend from :mod:`mnv1_coreml.backends` (Core ML on
macOS, the reference interpreter elsewhere); every other shape runs on the interpreter.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from .backends import Backend, BackendName, ComputeUnits, make_backend
from .errors import UserError
from .images import IMAGE_SUFFIXES, Normalization, prepare_image
from .modelspec import read_contract

InputKind = Literal["image", "array"]
OutputKind = Literal["classify", "softmax", "logits"]


@dataclass(frozen=True)
class ClassifierInfo:
    """What a package takes and gives, as far as classifying photos goes."""

    path: Path
    input_name: str
    input_kind: InputKind
    res: int
    labels: list[str]
    output_kind: OutputKind
    metadata: dict[str, str] = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return len(self.labels)


def _softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


class ImageClassifier:
    """A package, loaded once, that turns uint8 (N, R, R, 3) RGB images into probabilities.

    ``mean``/``std`` (RGB, 0..1 units) are required for a multi-array input and refused for an
    image input, whose normalisation is inside the model.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        backend: BackendName = "auto",
        compute_units: ComputeUnits = "all",
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        exact_batch: bool = True,
    ) -> None:
        self.path = Path(path)
        self._exact_batch = exact_batch
        contract = read_contract(self.path)
        if contract.kind != "mlProgram":
            raise UserError(
                f"{self.path} is a {contract.kind or 'unknown'} model, not an ML Program; "
                "predict and evaluate run ML Programs (.mlpackage)"
            )
        self._norm: Normalization | None = None
        self._backend: Backend | None = None
        self._model: Any = None
        image_input = contract.input_kind == "imageType"
        if image_input and (mean is not None or std is not None):
            raise UserError(
                f"{self.path} takes an image and normalises it itself; --mean/--std are only "
                "for models with a multi-array input"
            )
        if image_input and contract.labels and contract.probs_output:
            if contract.width != contract.height:
                raise UserError(f"{self.path}: image input {contract.width}x{contract.height} "
                                "is not square")
            self._backend = make_backend(backend, self.path, compute_units,
                                         exact_batch=exact_batch)
            self.backend_name = self._backend.name
            self.info = ClassifierInfo(
                self.path, contract.input_name, "image", contract.width,
                [str(x) for x in contract.labels], "classify", contract.metadata,
            )
            return
        if backend == "coreml":
            raise UserError(
                f"{self.path} is not a classifier with an image input; the Core ML backend "
                "here runs only those: use --backend reference"
            )
        if backend not in ("auto", "reference"):
            raise UserError(f"unknown backend {backend!r}; use auto, coreml or reference")
        self.backend_name = "reference"
        self._layout = "NCHW"
        self._load_reference(contract, mean, std)

    # ----------------------------------------------------------------------------------------
    # the general path: the reference interpreter on any classifier-shaped program

    def _load_reference(
        self, contract: Any, mean: Sequence[float] | None, std: Sequence[float] | None
    ) -> None:
        from .mil import ReferenceModel

        m = ReferenceModel.load(self.path, exact_batch=self._exact_batch)
        self._model = m
        main = m.package.main
        inputs = dict(main.inputs)
        if len(inputs) != 1:
            raise UserError(f"{self.path} has {len(inputs)} inputs; a classifier has one")
        name, var = next(iter(inputs.items()))
        if m.image_size is not None:
            h, w = m.image_size
            if h != w:
                raise UserError(f"{self.path}: image input {w}x{h} is not square")
            kind: InputKind = "image"
            res = h
        else:
            shape = tuple(int(d) for d in var.shape)
            if len(shape) == 4 and shape[0] == 1 and shape[1] == 3 and shape[2] == shape[3]:
                res, self._layout = shape[2], "NCHW"
            elif len(shape) == 4 and shape[0] == 1 and shape[3] == 3 and shape[1] == shape[2]:
                res, self._layout = shape[1], "NHWC"
            else:
                raise UserError(
                    f"{self.path}: input {name!r} has shape {shape}; predict needs an image, or "
                    "a multi-array of shape (1, 3, R, R) or (1, R, R, 3)"
                )
            if mean is None or std is None:
                raise UserError(
                    f"{self.path} takes a multi-array input {name!r} {shape}, not an image: "
                    "pass --mean R,G,B and --std R,G,B (0..1 units) to say how pixels are "
                    "normalised"
                )
            try:
                self._norm = Normalization(tuple(mean), tuple(std))  # type: ignore[arg-type]
            except ValueError as exc:
                raise UserError(f"--mean/--std: {exc}") from None
            kind = "array"
        labels: list[str]
        classify = m.class_labels
        if classify is not None:
            labels = [str(x) for x in classify]
            out_kind: OutputKind = "classify"
            self._output = contract.probs_output or _classify_probs_output(m)
        else:
            out_var = _probabilities_output(m)
            self._output = out_var.name
            op = out_var.op
            while op is not None and op.op_type == "cast":
                op = op.inputs["x"].op
            out_kind = "softmax" if op is not None and op.op_type == "softmax" else "logits"
            labels = [str(i) for i in range(int(np.prod(out_var.shape)))]
        self.info = ClassifierInfo(self.path, name, kind, res, labels, out_kind,
                                   contract.metadata)

    def _feed(self, images: np.ndarray) -> dict[str, np.ndarray]:
        assert self._norm is not None
        x = self._norm.apply(images).numpy()  # (N, 3, R, R) float32
        if self._layout == "NHWC":
            x = np.ascontiguousarray(x.transpose(0, 2, 3, 1))
        return {self.info.input_name: x}

    # ----------------------------------------------------------------------------------------

    @property
    def res(self) -> int:
        return self.info.res

    @property
    def labels(self) -> list[str]:
        return self.info.labels

    def prepare(self, image: Any) -> np.ndarray:
        """A PIL image as this model's uint8 (R, R, 3) input (Vision ``.centerCrop``)."""
        return prepare_image(image, self.res)

    def probabilities(self, images: np.ndarray) -> np.ndarray:
        """float64 (N, C) class probabilities for uint8 (N, R, R, 3) RGB images."""
        if len(images) == 0:
            return np.zeros((0, self.info.num_classes))
        if self._backend is not None:
            return self._backend.run(images).probabilities
        m = self._model
        if self.info.input_kind == "image":
            result = m.predict(images, outputs=[self._output])
        else:
            result = m.run(self._feed(images), outputs=[self._output])
        values = np.asarray(result[self._output], dtype=np.float64).reshape(len(images), -1)
        return _softmax(values) if self.info.output_kind == "logits" else values


def _classify_probs_output(m: Any) -> str:
    for name in m.output_names:
        if name in m.variable_names:
            return name
    raise UserError(f"{m.path}: cannot find the classifier's probabilities output")


def _probabilities_output(m: Any) -> Any:
    """The one output that holds class scores: shape (1, C) or (C,) (trailing 1s allowed)."""
    found = []
    for var in m.package.main.outputs:
        shape = [int(d) for d in var.shape] if var.shape is not None else []
        if shape and shape[0] == 1:
            shape = shape[1:]
        while len(shape) > 1 and shape[-1] == 1:
            shape = shape[:-1]
        if len(shape) == 1 and shape[0] > 1:
            found.append(var)
    if len(found) != 1:
        names = [v.name for v in m.package.main.outputs]
        raise UserError(
            f"{m.path}: expected one class-score output of shape (1, C), found outputs {names}; "
            "predict needs a classifier, a softmax or logits"
        )
    return found[0]


# --------------------------------------------------------------------------------------------
# files -> predictions


@dataclass(frozen=True)
class Prediction:
    """The top-K (label, probability) of one image."""

    image: str
    top: list[tuple[str, float]]

    def to_json(self) -> dict[str, Any]:
        return {"image": self.image,
                "top": [{"label": lab, "probability": p} for lab, p in self.top]}


def image_files(inputs: Iterable[str | os.PathLike[str]]) -> list[Path]:
    """Files as given, and image files in directories (recursively, sorted).

    A path that does not exist stays in the list: it fails to open like any unreadable image
    (one line), and the others still run.
    """
    found: list[Path] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            found += sorted(q for q in p.rglob("*")
                            if q.is_file() and q.suffix.lower() in IMAGE_SUFFIXES)
        else:
            found.append(p)
    if not found:
        raise UserError("no images to classify (directories are searched for "
                        f"{', '.join(IMAGE_SUFFIXES)})")
    return found


def top_k(probs: np.ndarray, labels: Sequence[str], k: int) -> list[list[tuple[str, float]]]:
    """Per row, the ``k`` most probable labels, most probable first (ties: lower index)."""
    k = min(k, probs.shape[1])
    order = np.argsort(-probs, axis=1, kind="stable")[:, :k]
    return [[(labels[j], float(row[j])) for j in idx] for row, idx in zip(probs, order,
                                                                       strict=True)]


def predict_files(
    classifier: ImageClassifier,
    paths: Sequence[Path],
    k: int = 5,
    batch_size: int = 16,
    on_error: Callable[[Path, str], None] | None = None,
) -> tuple[list[Prediction], list[tuple[str, str]]]:
    """Top-``k`` per readable image, in batches; unreadable files go to ``on_error`` and the
    returned error list (one reason each) and the rest still run."""
    from PIL import Image

    if k < 1:
        raise UserError(f"--top must be >= 1, got {k}")
    preds: list[Prediction] = []
    errors: list[tuple[str, str]] = []
    for start in range(0, len(paths), batch_size):
        names, arrays = [], []
        for path in paths[start : start + batch_size]:
            try:
                with Image.open(path) as im:
                    im.load()
                    arrays.append(classifier.prepare(im))
                names.append(str(path))
            except Exception as exc:  # PIL raises many types for bad files: one line each
                reason = f"{type(exc).__name__}: {exc}".splitlines()[0]
                errors.append((str(path), reason))
                if on_error is not None:
                    on_error(path, reason)
        if not arrays:
            continue
        probs = classifier.probabilities(np.stack(arrays))
        preds += [Prediction(n, t) for n, t in zip(names, top_k(probs, classifier.labels, k),
                                                   strict=True)]
    return preds, errors


def write_predictions_json(
    path: str | os.PathLike[str],
    classifier: ImageClassifier,
    predictions: Sequence[Prediction],
    errors: Sequence[tuple[str, str]],
) -> Path:
    """``--json``: model, backend, input and output kinds, top-K per image, unreadable files;
    written atomically."""
    import json

    from .fsutil import atomic_path

    info = classifier.info
    doc = {
        "model": str(info.path), "backend": classifier.backend_name,
        "input": info.input_kind, "output": info.output_kind, "resolution": info.res,
        "preprocessing": "centre square, resized to R (Vision .centerCrop)",
        "results": [p.to_json() for p in predictions],
        "errors": [{"image": image, "error": reason} for image, reason in errors],
    }
    out = Path(path)
    with atomic_path(out, force=True) as tmp:
        tmp.write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
    return out
