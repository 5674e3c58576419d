"""Weight files on disk: format detection, safe reading, and writing our layout.

The format is recognised from the file's first bytes, not its suffix (a renamed download is
still read correctly): HDF5 is a Keras file; safetensors and PyTorch files hold a state dict in
our layout or timm's, told apart by key names. PyTorch files are read with
``weights_only=True``, so loading never runs code from the file.

Files written by :func:`save_state_dict_file` carry the architecture settings (safetensors
metadata, or a ``mnv1_coreml_settings`` entry in a .pt file), so they round-trip exactly.
"""

from __future__ import annotations

import pickle
import re
import struct
import zipfile
from collections.abc import Mapping
from pathlib import Path

import torch

from ..errors import WeightsError
from ..images import Normalization
from .core import (
    OUR_SETTINGS,
    TIMM_SETTINGS,
    ArchSettings,
    LoadedWeights,
    apply_overrides,
    file_sha256,
)

STATE_DICT_SUFFIXES = (".safetensors", ".pt", ".pth")
KERAS_SUFFIXES = (".h5", ".hdf5")
#: Key of the settings dict in .pt files; safetensors metadata keys carry this prefix + ".".
SETTINGS_KEY = "mnv1_coreml_settings"
_META_PREFIX = "mnv1_coreml."
_FORMATS_HINT = "a Keras .h5, or a .safetensors/.pt/.pth state dict in this tool's or timm's layout"


def sniff_format(path: Path) -> str | None:
    """``"hdf5"``, ``"safetensors"``, ``"torch"`` or None, from the file's first bytes."""
    from .keras import is_hdf5

    if is_hdf5(path):
        return "hdf5"
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(9)
    except OSError:
        return None
    if head[:4] == b"PK\x03\x04":  # torch.save's zip container
        return "torch"
    if len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5:  # legacy torch.save pickle
        return "torch"
    if len(head) == 9:
        (n,) = struct.unpack("<Q", head[:8])
        if 2 <= n <= size - 8 and head[8:9] == b"{":
            return "safetensors"
    return None


def _reason(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return " ".join((lines[0] if lines else type(exc).__name__).split())[:200]


def read_state_dict_file(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors by name from a safetensors or torch file, and the settings metadata it carries.

    Never unpickles arbitrary objects. Raises a one-line WeightsError for an unreadable file.
    """
    from safetensors import SafetensorError, safe_open

    kind = sniff_format(path)
    if kind not in ("safetensors", "torch"):
        raise WeightsError(
            f"{path} is neither a safetensors nor a PyTorch file (truncated or corrupt?); pass "
            f"{_FORMATS_HINT}"
        )
    meta: dict[str, str] = {}
    try:
        if kind == "safetensors":
            with safe_open(str(path), framework="pt", device="cpu") as f:
                state = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - not a dict
                meta = {
                    k[len(_META_PREFIX):]: v
                    for k, v in (f.metadata() or {}).items()
                    if k.startswith(_META_PREFIX)
                }
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        found = re.search(r"Unsupported global: GLOBAL (\S+)", str(exc))
        if found:
            raise WeightsError(
                f"{path} holds pickled Python objects ({found.group(1)}), which are never loaded "
                "since that could run code; save model.state_dict() instead"
            ) from None
        raise WeightsError(
            f"{path} is not a readable PyTorch weights file, truncated or corrupt? ({_reason(exc)})"
        ) from None
    except (OSError, RuntimeError, ValueError, EOFError, zipfile.BadZipFile,
            SafetensorError) as exc:
        raise WeightsError(
            f"{path} is not a readable {kind} weights file, truncated or corrupt? ({_reason(exc)})"
        ) from None
    if isinstance(state, dict) and isinstance(state.get(SETTINGS_KEY), dict):
        meta = {str(k): str(v) for k, v in state[SETTINGS_KEY].items()}
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()
    ):
        raise WeightsError(f"{path} does not hold a state dict (a mapping of names to tensors)")
    return state, meta


def load_state_dict_file(path: Path) -> dict[str, torch.Tensor]:
    """Tensors by name from ``path`` (safetensors or torch); never unpickles arbitrary objects."""
    return read_state_dict_file(path)[0]


def settings_to_metadata(settings: ArchSettings) -> dict[str, str]:
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
        base = OUR_SETTINGS
        norm = base.normalization
        if "mean" in meta or "std" in meta:
            norm = Normalization(
                tuple(float(v) for v in meta.get("mean", ",".join(map(str, norm.mean))).split(",")),
                tuple(float(v) for v in meta.get("std", ",".join(map(str, norm.std))).split(",")),
            )
        return apply_overrides(base, {
            "padding": meta.get("padding"),
            "activation": meta.get("activation"),
            "bn_eps": float(meta["bn_eps"]) if "bn_eps" in meta else None,
            "normalization": norm,
        })
    except (ValueError, TypeError, WeightsError) as exc:
        raise WeightsError(f"{origin} has invalid mnv1-coreml settings metadata: {exc}") from None


def save_state_dict_file(
    path: Path, state_dict: Mapping[str, torch.Tensor], settings: ArchSettings | None = None
) -> None:
    """Write a state dict in our layout (.safetensors, or .pt/.pth), with its settings."""
    suffix = path.suffix.lower()
    state = {k: v.detach().contiguous().cpu() for k, v in state_dict.items()}
    meta = settings_to_metadata(settings) if settings is not None else {}
    if suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(state, str(path), metadata={_META_PREFIX + k: v for k, v in meta.items()})
    elif suffix in (".pt", ".pth"):
        torch.save({"state_dict": state, SETTINGS_KEY: meta} if meta else state, path)
    else:
        raise WeightsError(f"cannot save weights as {path}: use .safetensors, .pt or .pth")


def load_weights_file(
    path: Path, alpha: float, *, spec: str, overrides: Mapping[str, object] | None = None
) -> LoadedWeights:
    """Any supported weights file, with the settings its format implies (then the overrides)."""
    from .keras import load_keras_file
    from .timm import is_timm_layout, timm_to_ours

    if not path.exists():
        raise WeightsError(
            f"weights file {spec} does not exist; pass --weights imagenet, timm, random, or a "
            f"path to {_FORMATS_HINT}"
        )
    if path.is_dir():
        raise WeightsError(f"--weights {spec} is a directory; pass a path to {_FORMATS_HINT}")
    kind = sniff_format(path)
    suffix = path.suffix.lower()
    if kind == "hdf5" or (kind is None and suffix in KERAS_SUFFIXES):
        return load_keras_file(path, alpha, spec=spec, overrides=overrides)
    if kind is None and suffix not in STATE_DICT_SUFFIXES:
        raise WeightsError(
            f"{path} is not a weights file this tool reads (not HDF5, safetensors or a PyTorch "
            f"file); pass {_FORMATS_HINT}"
        )
    state, meta = read_state_dict_file(path)
    if is_timm_layout(state):
        state, settings, fmt = timm_to_ours(state), TIMM_SETTINGS, "timm"
    else:
        settings = settings_from_metadata(meta, str(path)) or OUR_SETTINGS
        fmt = "mnv1-coreml"
        state = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    settings = apply_overrides(settings, overrides or {})
    return LoadedWeights(state, "file", spec, file_sha256(path), settings, format=fmt, path=path)
