"""Leaf: the settings each weights source implies, user overrides, and the loaded-weights type.

The settings follow from the source, because running Keras weights with symmetric padding or
ImageNet mean/std gives plausible-looking but wrong logits; the user may still override each of
them. Nothing here reads files: loaders import this, never the other way round.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from ..errors import WeightsError
from ..images import IMAGENET, INCEPTION, Normalization
from ..model import Activation, Padding, infer_alpha

#: Keys accepted in ``overrides`` (``normalization_parts`` is ``(mean | None, std | None)``: the
#: part left as None keeps the source's own value).
OVERRIDE_KEYS = ("padding", "activation", "bn_eps", "normalization", "normalization_parts")


@dataclass(frozen=True)
class ArchSettings:
    """How the weights expect to be run: these must match what they were trained with."""

    padding: Padding = "torch"
    activation: Activation = "relu6"
    bn_eps: float = 1e-5
    normalization: Normalization = IMAGENET

    def to_json(self) -> dict[str, object]:
        return {
            "padding": self.padding,
            "activation": self.activation,
            "bn_eps": self.bn_eps,
            **self.normalization.to_json(),
        }


#: Keras Applications and TF-slim: TF SAME padding, BN eps 1e-3, ReLU6, x/127.5 - 1.
KERAS_SETTINGS = ArchSettings(
    padding="tf", activation="relu6", bn_eps=1e-3, normalization=INCEPTION
)
#: timm's mobilenetv1_100: symmetric padding, ReLU6, BN eps 1e-5, mean = std = 0.5.
TIMM_SETTINGS = ArchSettings(
    padding="torch", activation="relu6", bn_eps=1e-5, normalization=INCEPTION
)
#: A state dict in our layout carries no settings unless this tool wrote it: our defaults.
OUR_SETTINGS = ArchSettings()


def apply_overrides(settings: ArchSettings, overrides: Mapping[str, object]) -> ArchSettings:
    """Apply user overrides (None values mean "keep"), raising a one-line WeightsError."""
    unknown = sorted(set(overrides) - set(OVERRIDE_KEYS))
    if unknown:
        raise WeightsError(
            f"unknown override(s) {', '.join(unknown)}; allowed: {', '.join(OVERRIDE_KEYS)}"
        )
    changes: dict[str, object] = {}
    padding = overrides.get("padding")
    if padding is not None:
        if padding not in ("torch", "tf"):
            raise WeightsError(f"padding override must be 'torch' or 'tf', got {padding!r}")
        changes["padding"] = padding
    activation = overrides.get("activation")
    if activation is not None:
        if activation not in ("relu", "relu6"):
            raise WeightsError(
                f"activation override must be 'relu' or 'relu6', got {activation!r}"
            )
        changes["activation"] = activation
    eps = overrides.get("bn_eps")
    if eps is not None:
        if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not eps > 0:
            raise WeightsError(f"bn_eps override must be a number > 0, got {eps!r}")
        changes["bn_eps"] = float(eps)
    norm = overrides.get("normalization")
    parts = overrides.get("normalization_parts")
    if norm is not None and parts is not None:
        raise WeightsError("give either 'normalization' or 'normalization_parts', not both")
    try:
        if norm is not None:
            if not isinstance(norm, Normalization):
                mean, std = norm  # type: ignore[misc]
                norm = Normalization(tuple(mean), tuple(std))
            changes["normalization"] = norm
        elif parts is not None:
            mean, std = parts  # type: ignore[misc]
            base = settings.normalization
            changes["normalization"] = Normalization(
                tuple(mean) if mean is not None else base.mean,
                tuple(std) if std is not None else base.std,
            )
    except (TypeError, ValueError) as exc:
        raise WeightsError(f"normalization override: {exc}") from None
    return replace(settings, **changes)  # type: ignore[arg-type]


@dataclass(frozen=True)
class LoadedWeights:
    """A state dict in our layout, with where it came from and how to run it."""

    state_dict: dict[str, torch.Tensor]
    source: str  # "random" | "file" | "imagenet" | "timm": the kind of spec
    spec: str  # the spec as the user gave it
    sha256: str  # of the file; for random weights, of the tensors
    settings: ArchSettings
    #: Layout the tensors were read from: "random", "mnv1-coreml", "keras-h5", "keras3" or "timm".
    format: str = ""
    #: The local file the tensors were read from (a cache entry for downloads), if any.
    path: Path | None = None
    #: Where a downloaded file came from, if it was downloaded.
    url: str | None = None
    #: The input resolution the file itself records (a Keras model config), if any.
    res: int | None = None

    @property
    def alpha(self) -> float | None:
        """The width multiplier the tensors are at (from their shapes), None if unclear."""
        return infer_alpha(self.state_dict)

    @property
    def num_classes(self) -> int:
        """Rows of the classifier: the number of classes the checkpoint predicts."""
        return int(self.state_dict["classifier.weight"].shape[0])


def state_dict_sha256(state_dict: Mapping[str, torch.Tensor]) -> str:
    """A content hash of tensors, independent of file format: names, shapes and bytes."""
    h = hashlib.sha256()
    for key in sorted(state_dict):
        t = state_dict[key].detach().contiguous().cpu()
        h.update(f"{key}:{t.dtype}:{tuple(t.shape)};".encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()


def normalize_sha256(sha256: str | None) -> str | None:
    """A pinned hash in lower case, or a WeightsError if it is not 64 hex digits."""
    if sha256 is None:
        return None
    pinned = sha256.strip().lower()
    if not re.fullmatch(r"[0-9a-f]{64}", pinned):
        raise WeightsError(f"--sha256 must be 64 hex digits, got {sha256!r}")
    return pinned


def settings_to_metadata(settings: ArchSettings) -> dict[str, str]:
    """The settings as strings, for a checkpoint file's metadata."""
    n = settings.normalization
    return {
        "format": "mnv1-coreml",
        "padding": settings.padding,
        "activation": settings.activation,
        "bn_eps": repr(settings.bn_eps),
        "mean": ",".join(repr(v) for v in n.mean),
        "std": ",".join(repr(v) for v in n.std),
    }


def settings_from_metadata(meta: Mapping[str, str], origin: str) -> ArchSettings | None:
    """The settings a file written by this tool records, or None when it records none."""
    if not any(k in meta for k in ("padding", "activation", "bn_eps", "mean", "std")):
        return None
    try:
        norm = OUR_SETTINGS.normalization
        if "mean" in meta or "std" in meta:
            norm = Normalization(
                tuple(float(v) for v in meta.get("mean", ",".join(map(str, norm.mean))).split(",")),
                tuple(float(v) for v in meta.get("std", ",".join(map(str, norm.std))).split(",")),
            )
        return apply_overrides(OUR_SETTINGS, {
            "padding": meta.get("padding"),
            "activation": meta.get("activation"),
            "bn_eps": float(meta["bn_eps"]) if "bn_eps" in meta else None,
            "normalization": norm,
        })
    except (ValueError, TypeError, WeightsError) as exc:
        raise WeightsError(f"{origin} has invalid mnv1-coreml settings metadata: {exc}") from None
