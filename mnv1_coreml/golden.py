"""Golden sets: the exact uint8 images fed to PyTorch and the fp32 logits it computed.

A golden directory holds ``logits.npz`` (``logits`` float32 N x classes, ``images`` uint8
N x R x R x 3 RGB, ``names``) and ``manifest.json`` (what made it). ``validate`` compares a
Core ML model with one, so the goldens are versioned in ``golden/`` and the photos they are
made from ship inside the package.
"""

from __future__ import annotations

import json
import math
import os
import zipfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ._version import __version__
from .errors import UserError
from .fsutil import as_path, atomic_path, check_output
from .hashing import bytes_sha256, file_sha256
from .images import Normalization, load_image_set
from .labels import labels_sha256, read_labels_option, resolve_labels
from .metadata import settings_differences
from .model import MobileNetV1, build_model, check_alpha, check_res
from .weights import LoadedWeights, load_weights, model_size

MANIFEST = "manifest.json"
LOGITS = "logits.npz"
FORMAT_VERSION = 1
#: What :func:`create_golden` reports to ``on_step``.
GOLDEN_STEPS: tuple[str, ...] = ("weights and logits", "write")


@dataclass(frozen=True)
class GoldenSet:
    """Images, PyTorch logits and the facts validate checks a model's contract against."""

    names: list[str]
    images: np.ndarray  # uint8 (N, R, R, 3) RGB
    logits: np.ndarray  # float32 (N, C)
    manifest: dict[str, Any]

    @property
    def res(self) -> int:
        return int(self.manifest["res"])

    @property
    def alpha(self) -> float:
        return float(self.manifest["alpha"])

    @property
    def labels(self) -> list[str]:
        return list(self.manifest["labels"])


def torch_logits(model: MobileNetV1, norm: Normalization, images: np.ndarray) -> np.ndarray:
    """PyTorch fp32 eval-mode logits for uint8 (N, R, R, 3) RGB images."""
    with torch.no_grad():
        return model.eval()(norm.apply(images)).numpy().astype(np.float32)


def weights_cli_args(spec: str, settings: Mapping[str, Any] | None = None) -> list[str]:
    """The CLI arguments that reproduce recorded weights and architecture settings.

    ``settings`` (as in a golden manifest: padding, activation, bn_eps, normalization) become
    the ``--padding/--activation/--bn-eps/--mean/--std`` overrides, so the command makes
    exactly the model that was recorded whatever the weights' format implies.
    """
    if spec.startswith("random:"):
        args = ["--weights", "random", "--seed", spec.split(":", 1)[1]]
    else:
        args = ["--weights", spec]
    settings = settings or {}
    for key, flag in (("padding", "--padding"), ("activation", "--activation")):
        if settings.get(key) is not None:
            args += [flag, str(settings[key])]
    if settings.get("bn_eps") is not None:
        args += ["--bn-eps", repr(float(settings["bn_eps"]))]
    norm = settings.get("normalization")
    if norm:
        for part in ("mean", "std"):
            args += [f"--{part}", ",".join(repr(float(v)) for v in norm[part])]
    return args


def make_golden(
    model: MobileNetV1,
    weights: LoadedWeights,
    names: list[str],
    images: np.ndarray,
    image_hashes: dict[str, str] | None = None,
    labels: Sequence[str] | None = None,
) -> GoldenSet:
    """Compute the golden logits for ``images`` and describe how they were made.

    ``labels`` (one per class, default ImageNet's) go into the manifest: ``validate`` checks
    a model's class labels, their count, names and order, against them.
    """
    cfg = model.cfg
    labels = resolve_labels(labels, cfg.num_classes)
    s = weights.settings
    logits = torch_logits(model, s.normalization, images)
    manifest = {
        "format": FORMAT_VERSION,
        "alpha": cfg.alpha,
        "res": cfg.res,
        "weights": weights.spec,
        "weights_source": weights.source,
        "weights_sha256": weights.sha256,
        "weights_args": " ".join(weights_cli_args(weights.spec)),
        "normalization": s.normalization.to_json(),
        "padding": s.padding,
        "activation": s.activation,
        "bn_eps": s.bn_eps,
        "images": [
            {
                "name": n,
                "sha256": bytes_sha256(images[i].tobytes()),
                **({"file_sha256": image_hashes[n]} if image_hashes and n in image_hashes else {}),
            }
            for i, n in enumerate(names)
        ],
        "num_classes": len(labels),
        "labels": list(labels),
        "labels_sha256": labels_sha256(labels),
        "torch_version": torch.__version__,
        "mnv1_coreml_version": __version__,
    }
    return GoldenSet(list(names), images, logits, manifest)


def _file_hashes(directory: Path | None) -> dict[str, str]:
    from .images import iter_image_files, packaged_image_dir

    directory = directory or packaged_image_dir()
    return {p.name: file_sha256(p) for p in iter_image_files(directory)}


def golden_for(
    alpha: float | None,
    res: int | None,
    weights_spec: str,
    *,
    seed: int = 0,
    image_dir: str | os.PathLike[str] | None = None,
    overrides: dict[str, object] | None = None,
    weights_sha256: str | None = None,
    progress: Callable[[int, int | None], None] | None = None,
    labels: str | os.PathLike[str] | Sequence[str] | None = None,
) -> GoldenSet:
    """Load the weights, prepare the images and compute their PyTorch logits.

    ``alpha``/``res`` None: what the weights record, else 1.0/224. ``labels``: a labels file
    or list, one per class (None: ImageNet's, for a 1000-class checkpoint).
    """
    given = read_labels_option(labels)
    weights = load_weights(
        weights_spec, alpha, res, seed=seed, overrides=overrides, sha256=weights_sha256,
        progress=progress, num_classes=None if given is None else len(given),
    )
    alpha, res = model_size(weights, alpha, res)
    check_res(res)
    model = build_model(alpha, res, weights)
    resolved = resolve_labels(labels, model.cfg.num_classes)
    image_dir = None if image_dir is None else as_path(image_dir)
    if image_dir is not None and not image_dir.is_dir():
        raise UserError(f"image directory {image_dir} does not exist or is not a directory")
    names, images = load_image_set(res, image_dir)
    return make_golden(model, weights, names, images, _file_hashes(image_dir), labels=resolved)


def create_golden(
    output: str | os.PathLike[str],
    alpha: float | None,
    res: int | None,
    weights_spec: str = "imagenet",
    *,
    seed: int = 0,
    image_dir: str | os.PathLike[str] | None = None,
    overrides: dict[str, object] | None = None,
    weights_sha256: str | None = None,
    force: bool = False,
    on_step: Callable[[str], None] | None = None,
    progress: Callable[[int, int | None], None] | None = None,
    labels: str | os.PathLike[str] | Sequence[str] | None = None,
) -> GoldenSet:
    """Make a golden and write it to ``output``; bad options are refused before any work.

    ``on_step`` hears ``"weights and logits"`` and ``"write"`` (:data:`GOLDEN_STEPS`).
    """
    step = on_step or (lambda _name: None)
    if alpha is not None:
        check_alpha(alpha)
    if res is not None:
        check_res(res)
    check_output(output, force)
    read_labels_option(labels)  # a bad labels file fails before any work
    step(GOLDEN_STEPS[0])
    golden = golden_for(
        alpha, res, weights_spec, seed=seed, image_dir=image_dir, overrides=overrides,
        weights_sha256=weights_sha256, progress=progress, labels=labels,
    )
    step(GOLDEN_STEPS[1])
    write_golden(golden, output, force=force)
    return golden


def write_golden(
    golden: GoldenSet, directory: str | os.PathLike[str], force: bool = False
) -> Path:
    """Write ``logits.npz`` and ``manifest.json`` into ``directory``, atomically."""
    directory = as_path(directory)
    with atomic_path(directory, force=force) as tmp:
        tmp.mkdir()
        np.savez_compressed(
            tmp / LOGITS,
            logits=golden.logits.astype(np.float32),
            images=golden.images.astype(np.uint8),
            names=np.array(golden.names),
        )
        (tmp / MANIFEST).write_text(json.dumps(golden.manifest, indent=2) + "\n")
    return directory


def _read_manifest(path: Path) -> dict[str, Any]:
    """A golden manifest, with the fields ``validate`` relies on type-checked."""
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise UserError(f"golden manifest {path} is unreadable ({exc})") from None
    problems = []
    if not isinstance(manifest, dict):
        raise UserError(f"golden manifest {path} is not a JSON object")
    try:
        float(manifest["alpha"])
        int(manifest["res"])
        if not all(isinstance(i["name"], str) and isinstance(i["sha256"], str)
                   for i in manifest["images"]):
            problems.append("images")
        if not all(isinstance(label, str) for label in manifest["labels"]):
            problems.append("labels")
    except (KeyError, TypeError, ValueError) as exc:
        problems.append(f"{type(exc).__name__}: {exc}")
    if problems:
        raise UserError(f"golden manifest {path} is malformed ({', '.join(problems)})")
    return manifest


def read_golden(directory: str | os.PathLike[str]) -> GoldenSet:
    """Load a golden directory, checking that the arrays agree with the manifest.

    Anything unreadable (truncated, not a zip, wrong arrays) is one UserError naming the file.
    """
    directory = as_path(directory)
    manifest_path, logits_path = directory / MANIFEST, directory / LOGITS
    if not manifest_path.is_file() or not logits_path.is_file():
        raise UserError(f"{directory} is not a golden directory (needs {MANIFEST} and {LOGITS})")
    manifest = _read_manifest(manifest_path)
    try:
        with np.load(logits_path, allow_pickle=False) as data:
            logits = data["logits"].astype(np.float32)
            images = data["images"]
            names = [str(n) for n in data["names"]]
    except (ValueError, KeyError, OSError, EOFError, zipfile.BadZipFile) as exc:
        raise UserError(f"golden {logits_path} is unreadable ({exc}); regenerate it") from None
    expected = [i["name"] for i in manifest["images"]]
    if (
        names != expected or logits.ndim != 2 or len(logits) != len(images)
        or images.dtype != np.uint8 or images.ndim != 4 or images.shape[1:] != (
            manifest["res"], manifest["res"], 3)
        or logits.shape[1] != len(manifest["labels"])
    ):
        raise UserError(f"golden {directory}: {LOGITS} does not match {MANIFEST}; regenerate it")
    for i, entry in enumerate(manifest["images"]):
        if bytes_sha256(images[i].tobytes()) != entry["sha256"]:
            raise UserError(f"golden {directory}: image {entry['name']} does not match its SHA-256")
    return GoldenSet(names, images, logits, manifest)


def golden_dirs() -> list[Path]:
    """Where to look for versioned goldens: $MNV1_COREML_GOLDEN, ./golden, the source tree's."""
    candidates = []
    if env := os.environ.get("MNV1_COREML_GOLDEN"):
        candidates.append(Path(env))
    candidates.append(Path.cwd() / "golden")
    candidates.append(Path(__file__).resolve().parent.parent / "golden")
    seen, result = set(), []
    for c in candidates:
        if c.is_dir() and c.resolve() not in seen:
            seen.add(c.resolve())
            result.append(c)
    return result


def golden_name(alpha: float, res: int, weights: str) -> str:
    """Directory name of a golden, e.g. ``random-0_0.25_128`` or ``imagenet_1.0_224``."""
    tag = weights.replace(":", "-") if weights.startswith("random") else Path(weights).stem
    return f"{tag}_{alpha}_{res}"


def find_golden(
    alpha: float, res: int, weights_sha256: str, settings: Mapping[str, Any] | None = None,
    labels_sha: str | None = None,
) -> Path | None:
    """The versioned golden made from exactly these weights at this variant, if any.

    ``labels_sha`` (the model's ``mnv1.labels_sha256``) must match a golden that records one.

    ``settings`` (padding, activation, bn_eps, normalization, as the model's metadata records
    them) must match the golden's too: the same weights run with another padding or
    normalisation are another model.
    """
    for root in golden_dirs():
        for manifest_path in sorted(root.glob(f"*/{MANIFEST}")):
            try:
                m = json.loads(manifest_path.read_text(encoding="utf-8"))
                same = (
                    math.isclose(float(m.get("alpha", -1)), float(alpha))
                    and int(m.get("res", -1)) == int(res)
                    and m.get("weights_sha256") == weights_sha256
                    and not (settings and settings_differences(settings, m))
                    and (labels_sha is None or m.get("labels_sha256", labels_sha) == labels_sha)
                )
            except (OSError, UnicodeDecodeError, ValueError, TypeError, AttributeError):
                continue  # a broken golden is never the match; read_golden reports it if asked
            if same:
                return manifest_path.parent
    return None
