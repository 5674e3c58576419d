"""Golden sets: the exact uint8 images fed to PyTorch and the fp32 logits it computed.

A golden directory holds ``logits.npz`` (``logits`` float32 N x 1000, ``images`` uint8
N x R x R x 3 RGB, ``names``) and ``manifest.json`` (what made it). ``validate`` compares a
Core ML model with one, so the goldens are versioned in ``golden/`` and the photos they are
made from ship inside the package.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import __version__
from .errors import UserError
from .fsutil import atomic_path
from .images import Normalization, load_image_set
from .labels import imagenet_labels
from .model import MobileNetV1
from .weights import LoadedWeights, build_model, load_weights

MANIFEST = "manifest.json"
LOGITS = "logits.npz"
FORMAT_VERSION = 1


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


def weights_cli_args(spec: str) -> str:
    """The ``--weights`` (and ``--seed``) arguments that reproduce a recorded weights spec."""
    if spec.startswith("random:"):
        return f"--weights random --seed {spec.split(':', 1)[1]}"
    return f"--weights {spec}"


def make_golden(
    model: MobileNetV1,
    weights: LoadedWeights,
    names: list[str],
    images: np.ndarray,
    image_hashes: dict[str, str] | None = None,
) -> GoldenSet:
    """Compute the golden logits for ``images`` and describe how they were made."""
    cfg = model.cfg
    s = weights.settings
    logits = torch_logits(model, s.normalization, images)
    manifest = {
        "format": FORMAT_VERSION,
        "alpha": cfg.alpha,
        "res": cfg.res,
        "weights": weights.spec,
        "weights_source": weights.source,
        "weights_sha256": weights.sha256,
        "weights_args": weights_cli_args(weights.spec),
        "normalization": s.normalization.to_json(),
        "padding": s.padding,
        "activation": s.activation,
        "bn_eps": s.bn_eps,
        "images": [
            {
                "name": n,
                "sha256": hashlib.sha256(images[i].tobytes()).hexdigest(),
                **({"file_sha256": image_hashes[n]} if image_hashes and n in image_hashes else {}),
            }
            for i, n in enumerate(names)
        ],
        "labels": list(imagenet_labels()),
        "torch_version": torch.__version__,
        "mnv1_coreml_version": __version__,
    }
    return GoldenSet(list(names), images, logits, manifest)


def _file_hashes(directory: Path | None) -> dict[str, str]:
    from .images import iter_image_files, packaged_image_dir

    directory = directory or packaged_image_dir()
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in iter_image_files(directory)}


def golden_for(
    alpha: float,
    res: int,
    weights_spec: str,
    *,
    seed: int = 0,
    image_dir: Path | None = None,
    overrides: dict[str, object] | None = None,
    weights_sha256: str | None = None,
    progress: Callable[[int, int | None], None] | None = None,
) -> GoldenSet:
    """Load the weights, prepare the images and compute their PyTorch logits."""
    weights = load_weights(
        weights_spec, alpha, res, seed=seed, overrides=overrides, sha256=weights_sha256,
        progress=progress,
    )
    model = build_model(alpha, res, weights)
    if image_dir is not None and not image_dir.is_dir():
        raise UserError(f"--images {image_dir} is not a directory")
    try:
        names, images = load_image_set(res, image_dir)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    return make_golden(model, weights, names, images, _file_hashes(image_dir))


def write_golden(golden: GoldenSet, directory: Path, force: bool = False) -> Path:
    """Write ``logits.npz`` and ``manifest.json`` into ``directory``, atomically."""
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


def read_golden(directory: Path) -> GoldenSet:
    """Load a golden directory, checking that the arrays agree with the manifest."""
    manifest_path, logits_path = directory / MANIFEST, directory / LOGITS
    if not manifest_path.is_file() or not logits_path.is_file():
        raise UserError(f"{directory} is not a golden directory (needs {MANIFEST} and {LOGITS})")
    try:
        manifest = json.loads(manifest_path.read_text())
        with np.load(logits_path, allow_pickle=False) as data:
            logits = data["logits"].astype(np.float32)
            images = data["images"]
            names = [str(n) for n in data["names"]]
    except (ValueError, KeyError, OSError) as exc:
        raise UserError(f"golden {directory} is unreadable ({exc})") from None
    expected = [i["name"] for i in manifest.get("images", [])]
    if names != expected or len(logits) != len(images) or images.dtype != np.uint8:
        raise UserError(f"golden {directory}: {LOGITS} does not match {MANIFEST}; regenerate it")
    for i, entry in enumerate(manifest["images"]):
        if hashlib.sha256(images[i].tobytes()).hexdigest() != entry["sha256"]:
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


def find_golden(alpha: float, res: int, weights_sha256: str) -> Path | None:
    """The versioned golden made from exactly these weights at this variant, if any."""
    for root in golden_dirs():
        for manifest_path in sorted(root.glob(f"*/{MANIFEST}")):
            try:
                m = json.loads(manifest_path.read_text())
            except ValueError:
                continue
            if (
                float(m.get("alpha", -1)) == float(alpha)
                and int(m.get("res", -1)) == int(res)
                and m.get("weights_sha256") == weights_sha256
            ):
                return manifest_path.parent
    return None
