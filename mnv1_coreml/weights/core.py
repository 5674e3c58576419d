"""Weights specs, the settings each source implies, and the strict state-dict check."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from ..errors import WeightsError
from ..images import IMAGENET, Normalization
from ..model import Activation, MobileNetConfig, MobileNetV1, Padding, weight_keys


@dataclass(frozen=True)
class ArchSettings:
    """How the weights expect to be run: these must match what they were trained with."""

    padding: Padding = "torch"
    activation: Activation = "relu6"
    bn_eps: float = 1e-5
    normalization: Normalization = IMAGENET

    def override(self, **changes: object) -> ArchSettings:
        return replace(self, **{k: v for k, v in changes.items() if v is not None})


@dataclass(frozen=True)
class LoadedWeights:
    """A state dict in our layout, with where it came from and how to run it."""

    state_dict: dict[str, torch.Tensor]
    source: str  # "random" | "file" | ...: the kind of spec
    spec: str  # the spec as the user gave it
    sha256: str  # of the file; for random weights, of the tensors
    settings: ArchSettings

    @property
    def description(self) -> str:
        return self.spec if self.source != "random" else f"random (seed in spec: {self.spec})"


def state_dict_sha256(state_dict: dict[str, torch.Tensor]) -> str:
    """A content hash of tensors, independent of file format: names, shapes and bytes."""
    h = hashlib.sha256()
    for key in sorted(state_dict):
        t = state_dict[key].detach().contiguous().cpu()
        h.update(f"{key}:{t.dtype}:{tuple(t.shape)};".encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def check_state_dict(model: MobileNetV1, state_dict: dict[str, torch.Tensor], origin: str) -> None:
    """Raise one WeightsError naming every missing, unexpected and wrongly shaped key."""
    expected = weight_keys(model)
    got = {k: tuple(v.shape) for k, v in state_dict.items() if not k.endswith("num_batches_tracked")}
    missing = sorted(set(expected) - set(got))
    unexpected = sorted(set(got) - set(expected))
    wrong = sorted(
        f"{k} {got[k]} (expected {expected[k]})" for k in set(got) & set(expected)
        if got[k] != expected[k]
    )
    problems = []
    if missing:
        problems.append(f"missing {', '.join(missing)}")
    if unexpected:
        problems.append(f"unexpected {', '.join(unexpected)}")
    if wrong:
        problems.append(f"wrong shape {', '.join(wrong)}")
    if problems:
        cfg = model.cfg
        raise WeightsError(
            f"{origin} does not fit MobileNet V1 alpha={cfg.alpha} res={cfg.res}: "
            + "; ".join(problems)
            + ". Check --alpha, or pass weights saved from this tool's model layout."
        )


def build_model(
    alpha: float, res: int, weights: LoadedWeights, num_classes: int = 1000
) -> MobileNetV1:
    """The eval-mode PyTorch model for ``weights``, after the strict key and shape check."""
    s = weights.settings
    cfg = MobileNetConfig(
        alpha=alpha, res=res, num_classes=num_classes,
        padding=s.padding, activation=s.activation, bn_eps=s.bn_eps,
    )
    model = MobileNetV1(cfg)
    check_state_dict(model, weights.state_dict, weights.spec)
    model.load_state_dict(weights.state_dict, strict=False)
    return model.eval()


def load_weights(
    spec: str,
    alpha: float,
    res: int,
    *,
    seed: int = 0,
    overrides: dict[str, object] | None = None,
) -> LoadedWeights:
    """Resolve ``spec`` ("random" or a path) to weights in our layout."""
    from .random_init import random_weights
    from .files import load_state_dict_file

    overrides = overrides or {}
    if spec == "random":
        settings = ArchSettings().override(**overrides)
        return random_weights(alpha, res, seed, settings)
    path = Path(spec).expanduser()
    if not path.exists():
        raise WeightsError(
            f"weights file {spec} does not exist; pass --weights random or a path to a "
            ".safetensors/.pt/.pth state dict"
        )
    state_dict = load_state_dict_file(path)
    settings = ArchSettings().override(**overrides)
    return LoadedWeights(state_dict, "file", str(path), file_sha256(path), settings)
