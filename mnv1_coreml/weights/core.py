"""Weights specs, the settings each source implies, and the strict state-dict check.

A spec resolves to a state dict in our layout (see :mod:`mnv1_coreml.model`) plus the
architecture settings the weights were trained with. The settings follow from the source, because
running Keras weights with symmetric padding or ImageNet mean/std gives plausible-looking but
wrong logits; the user may still override each of them.
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
from ..model import (
    BLOCKS,
    STEM_CHANNELS,
    Activation,
    MobileNetConfig,
    MobileNetV1,
    Padding,
    weight_keys,
)
from .download import DEFAULT_TIMEOUT, ProgressCallback

#: Keys accepted in ``overrides`` (``normalization_parts`` is ``(mean | None, std | None)``: the
#: part left as None keeps the source's own value).
OVERRIDE_KEYS = ("padding", "activation", "bn_eps", "normalization", "normalization_parts")

#: Spec keywords; anything else is a path.
KEYWORD_SPECS = ("imagenet", "timm", "random")


@dataclass(frozen=True)
class ArchSettings:
    """How the weights expect to be run: these must match what they were trained with."""

    padding: Padding = "torch"
    activation: Activation = "relu6"
    bn_eps: float = 1e-5
    normalization: Normalization = IMAGENET

    def override(self, **changes: object) -> ArchSettings:
        """A copy with the user's overrides applied; None values mean "keep"."""
        return apply_overrides(self, changes)

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
    """Apply user overrides, raising a one-line WeightsError for a bad value."""
    unknown = sorted(set(overrides) - set(OVERRIDE_KEYS))
    if unknown:
        raise ValueError(f"unknown override(s) {unknown}; allowed: {', '.join(OVERRIDE_KEYS)}")
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
        if not isinstance(eps, (int, float)) or not eps > 0:
            raise WeightsError(f"bn_eps override must be a number > 0, got {eps!r}")
        changes["bn_eps"] = float(eps)
    norm = overrides.get("normalization")
    parts = overrides.get("normalization_parts")
    if norm is not None and parts is not None:
        raise ValueError("give either 'normalization' or 'normalization_parts', not both")
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
    #: Layout the tensors were read from: "random", "mnv1-coreml", "keras-h5" or "timm".
    format: str = ""
    #: The local file the tensors were read from (a cache entry for downloads), if any.
    path: Path | None = None
    #: Where a downloaded file came from, if it was downloaded.
    url: str | None = None


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


def normalize_sha256(sha256: str | None) -> str | None:
    """A pinned hash in lower case, or a WeightsError if it is not 64 hex digits."""
    if sha256 is None:
        return None
    pinned = sha256.strip().lower()
    if not re.fullmatch(r"[0-9a-f]{64}", pinned):
        raise WeightsError(f"--sha256 must be 64 hex digits, got {sha256!r}")
    return pinned


def key_problems(missing: list[str], unexpected: list[str], wrong: list[str]) -> list[str]:
    """The parts of a "does not fit" message, each naming every offending key."""
    parts = (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong))
    return [f"{what} {', '.join(keys)}" for what, keys in parts if keys]


def check_state_dict(model: MobileNetV1, state_dict: dict[str, torch.Tensor], origin: str) -> None:
    """Raise one WeightsError naming every missing, unexpected and wrongly shaped key."""
    expected = weight_keys(model)
    got = {
        k: tuple(v.shape) for k, v in state_dict.items() if not k.endswith("num_batches_tracked")
    }
    missing = sorted(set(expected) - set(got))
    unexpected = sorted(set(got) - set(expected))
    wrong = sorted(
        f"{k} {got[k]} (expected {expected[k]})" for k in set(got) & set(expected)
        if got[k] != expected[k]
    )
    cfg = model.cfg
    other = _other_width(expected, got)
    if other is not None:
        held, key = other
        raise WeightsError(
            f"{origin} holds MobileNet V1 alpha={held:g} weights, not alpha={cfg.alpha:g} "
            f"(wrong shape {key} {got[key]}, expected {expected[key]}): pass --alpha {held:g}"
        )
    problems = key_problems(missing, unexpected, wrong)
    if problems:
        raise WeightsError(
            f"{origin} does not fit MobileNet V1 alpha={cfg.alpha} res={cfg.res}: "
            + "; ".join(problems)
            + ". Check --alpha, or pass weights saved from this tool's model layout."
        )


def _other_width(
    expected: Mapping[str, tuple[int, ...]], got: Mapping[str, tuple[int, ...]]
) -> tuple[float, str] | None:
    """(alpha the tensors hold, a key showing it) when they are of another width, else None.

    A whole net of another alpha mismatches in nearly every tensor; one line naming the alpha
    to pass helps more than eighty shapes.
    """
    last = f"blocks.{len(BLOCKS) - 1}.pw.conv.weight"
    for key in ("stem.conv.weight", last):
        shape, want = got.get(key), expected.get(key)
        if shape is None or want is None or len(shape) != 4 or shape[0] == want[0]:
            continue
        ref = got.get(last)
        if ref is not None and len(ref) == 4:
            held = ref[0] / BLOCKS[-1][1]
        else:
            held = shape[0] / STEM_CHANNELS
        return round(held, 4), key
    return None


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
    overrides: Mapping[str, object] | None = None,
    sha256: str | None = None,
    cache_dir: str | Path | None = None,
    base_url: str | None = None,
    progress: ProgressCallback | None = None,
    timeout: float | None = None,
) -> LoadedWeights:
    """Resolve ``spec`` to weights in our layout, with the settings their source implies.

    ``spec`` is ``imagenet`` (the published Keras file for ``alpha``/``res``, downloaded once
    into the cache), ``timm`` (timm's ImageNet weights, alpha 1.0, via huggingface_hub),
    ``random`` (seeded), or a path to a Keras ``.h5``, or a ``.safetensors``/``.pt``/``.pth``
    state dict in our layout or timm's (use ``./imagenet`` for a file called ``imagenet``).
    ``sha256`` pins the file's hash (for ``random``, the tensors' hash). ``cache_dir``,
    ``base_url``, ``progress`` and ``timeout`` only matter for ``imagenet`` (see
    :mod:`.download`).
    """
    from .files import load_weights_file

    pinned = normalize_sha256(sha256)
    overrides = dict(overrides or {})
    keyword = spec.strip().lower()
    if keyword == "random":
        from .random_init import random_weights

        loaded = random_weights(alpha, res, seed, apply_overrides(OUR_SETTINGS, overrides))
    elif keyword == "imagenet":
        from .keras import load_imagenet

        loaded = load_imagenet(
            alpha, res, overrides=overrides, sha256=pinned, cache_dir=cache_dir,
            base_url=base_url, progress=progress,
            timeout=DEFAULT_TIMEOUT if timeout is None else timeout,
        )
    elif keyword == "timm":
        from .timm import load_timm

        loaded = load_timm(alpha, overrides=overrides)
    else:
        loaded = load_weights_file(Path(spec).expanduser(), alpha, overrides=overrides, spec=spec)
    if pinned is not None and loaded.sha256 != pinned:
        what = "tensors" if loaded.source == "random" else f"file {loaded.path or spec}"
        raise WeightsError(
            f"SHA-256 mismatch for {what}: expected {pinned}, got {loaded.sha256}; "
            "check the --sha256 value or the file"
        )
    return loaded
