"""The resolver: one table maps a spec keyword, or a file's sniffed format, to its loader.

Loaders import only leaves (settings, sniffing, layouts, checkpoint I/O, download); this
module is the only one that knows them all, so adding a source is one table row.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import h5py

from ..errors import WeightsError
from .checkpoint import FORMATS_HINT
from .download import DEFAULT_TIMEOUT, ProgressCallback
from .files import load_state_dict_weights
from .keras import load_imagenet, load_keras_file
from .keras3 import is_keras3_weights, load_keras3_file, load_keras3_weights_file
from .random_init import random_weights
from .settings import OUR_SETTINGS, LoadedWeights, apply_overrides, normalize_sha256
from .sniff import sniff_format
from .timm import load_timm

DEFAULT_ALPHA, DEFAULT_RES = 1.0, 224


@dataclass(frozen=True)
class Request:
    """Everything a loader may need; each reads only its part."""

    spec: str
    alpha: float | None
    res: int | None
    seed: int = 0
    overrides: Mapping[str, object] = field(default_factory=dict)
    sha256: str | None = None
    cache_dir: str | os.PathLike[str] | None = None
    base_url: str | None = None
    progress: ProgressCallback | None = None
    timeout: float = DEFAULT_TIMEOUT
    num_classes: int | None = None

    @property
    def alpha_or_default(self) -> float:
        return DEFAULT_ALPHA if self.alpha is None else self.alpha

    @property
    def res_or_default(self) -> int:
        return DEFAULT_RES if self.res is None else self.res


Loader = Callable[[Request], LoadedWeights]

#: Spec keywords; anything else is a path (use ``./imagenet`` for a file called ``imagenet``).
KEYWORD_LOADERS: dict[str, Loader] = {
    "random": lambda r: random_weights(
        r.alpha_or_default, r.res_or_default, r.seed, apply_overrides(OUR_SETTINGS, r.overrides),
        num_classes=r.num_classes or 1000,
    ),
    "imagenet": lambda r: load_imagenet(
        r.alpha_or_default, r.res_or_default, overrides=r.overrides, sha256=r.sha256,
        cache_dir=r.cache_dir, base_url=r.base_url, progress=r.progress, timeout=r.timeout,
    ),
    "timm": lambda r: load_timm(r.alpha_or_default, overrides=r.overrides),
}
KEYWORD_SPECS = tuple(KEYWORD_LOADERS)

#: A file's sniffed format -> its loader (called with the resolved path).
def _load_hdf5(path: Path, request: Request) -> LoadedWeights:
    """Keras 2 (and Keras 3 legacy ``.h5``) files index layers by name; Keras 3's
    ``.weights.h5`` has only generic paths, so it needs its own reader."""
    try:
        with h5py.File(path, "r") as f:
            keras3 = is_keras3_weights(f)
    except (OSError, ValueError):
        keras3 = False  # the Keras 2 reader reports the damaged file
    load = load_keras3_weights_file if keras3 else load_keras_file
    return load(path, request.alpha, spec=request.spec, overrides=request.overrides)


FORMAT_LOADERS: dict[str, Callable[[Path, Request], LoadedWeights]] = {
    "hdf5": _load_hdf5,
    "keras3": lambda p, r: load_keras3_file(p, r.alpha, spec=r.spec, overrides=r.overrides),
    "safetensors": lambda p, r: load_state_dict_weights(p, spec=r.spec, overrides=r.overrides),
    "torch": lambda p, r: load_state_dict_weights(p, spec=r.spec, overrides=r.overrides),
}


def _load_path(request: Request) -> LoadedWeights:
    spec = request.spec
    path = Path(spec).expanduser()
    if not path.exists():
        raise WeightsError(
            f"weights file {spec} does not exist; pass --weights imagenet, timm, random, or a "
            f"path to {FORMATS_HINT}"
        )
    if path.is_dir():
        raise WeightsError(f"--weights {spec} is a directory; pass a path to {FORMATS_HINT}")
    if not os.access(path, os.R_OK):
        raise WeightsError(f"weights file {spec} is not readable (permission denied)")
    kind = sniff_format(path)
    if kind == "zip":
        raise WeightsError(
            f"{path} is a zip archive but neither a PyTorch checkpoint nor a Keras 3 .keras file "
            f"(truncated or corrupt?); pass {FORMATS_HINT}"
        )
    if kind is None:
        raise WeightsError(
            f"{path} is not a weights file this tool reads (not HDF5, a .keras zip, safetensors "
            f"or a PyTorch file; truncated or corrupt?); pass {FORMATS_HINT}"
        )
    return FORMAT_LOADERS[kind](path, request)


def load_weights(
    spec: str | os.PathLike[str],
    alpha: float | None = None,
    res: int | None = None,
    *,
    seed: int = 0,
    overrides: Mapping[str, object] | None = None,
    sha256: str | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    base_url: str | None = None,
    progress: ProgressCallback | None = None,
    timeout: float | None = None,
    num_classes: int | None = None,
) -> LoadedWeights:
    """Resolve ``spec`` to weights in our layout, with the settings their source implies.

    ``spec`` is ``imagenet`` (the published Keras file for ``alpha``/``res``, downloaded once
    into the cache), ``timm`` (timm's ImageNet weights, alpha 1.0, via huggingface_hub),
    ``random`` (seeded; ``num_classes`` rows, default 1000), or a path: a Keras 2 ``.h5``, a
    Keras 3 ``.keras``, or a ``.safetensors``/``.pt``/``.pth`` state dict in our layout or
    timm's, with any number of classes. For a file, ``alpha`` None takes the file's own width
    (an explicit different one is an error); keywords default to alpha 1.0 and res 224.
    ``sha256`` pins the file's hash (for ``random``, the tensors' hash). ``cache_dir``,
    ``base_url``, ``progress`` and ``timeout`` only matter for ``imagenet`` (see
    :mod:`.download`).
    """
    request = Request(
        spec=os.fspath(spec), alpha=alpha, res=res, seed=seed, overrides=dict(overrides or {}),
        sha256=normalize_sha256(sha256), cache_dir=cache_dir, base_url=base_url,
        progress=progress, timeout=DEFAULT_TIMEOUT if timeout is None else timeout,
        num_classes=num_classes,
    )
    keyword = request.spec.strip().lower() if isinstance(spec, str) else ""
    loader = KEYWORD_LOADERS.get(keyword)
    loaded = loader(request) if loader is not None else _load_path(request)
    pinned = request.sha256
    if pinned is not None and loaded.sha256 != pinned:
        what = "tensors" if loaded.source == "random" else f"file {loaded.path or spec}"
        raise WeightsError(
            f"SHA-256 mismatch for {what}: expected {pinned}, got {loaded.sha256}; "
            "check the --sha256 value or the file"
        )
    return loaded


def model_size(
    weights: LoadedWeights, alpha: float | None = None, res: int | None = None
) -> tuple[float, int]:
    """The (alpha, res) to build: the explicit ones, else what the weights record, else 1.0/224.

    A file's alpha follows from its tensors' shapes; its res from its own model config (Keras
    files record their input size), otherwise the default.
    """
    if alpha is None:
        alpha = weights.alpha if weights.alpha is not None else DEFAULT_ALPHA
    if res is None:
        res = weights.res if weights.res is not None else DEFAULT_RES
    return alpha, res
