"""Leaf: reading and writing state-dict files (safetensors, or PyTorch read with weights_only).

Files written by :func:`save_state_dict_file` carry the architecture settings (safetensors
metadata, or a ``mnv1_coreml_settings`` entry in a .pt file), so they round-trip exactly.
Reading never unpickles arbitrary objects. Training checkpoints are unwrapped the way timm's
``load_state_dict`` does it: the EMA weights (``state_dict_ema``, ``model_ema``) if present,
else ``state_dict`` or ``model``; a ``module.`` (DataParallel/DDP) or ``_orig_mod.``
(``torch.compile``) prefix on every key is removed. timm's ``train.py`` stores its
``argparse.Namespace`` in the checkpoint; that one class is allowed through the
``weights_only`` unpickler (it only sets attributes).
"""

from __future__ import annotations

import argparse
import os
import pickle
import re
import tempfile
import zipfile
from collections.abc import Mapping
from pathlib import Path

import torch

from ..errors import WeightsError
from .settings import ArchSettings, settings_to_metadata
from .sniff import sniff_format

#: Key of the settings dict in .pt files; safetensors metadata keys carry this prefix + ".".
SETTINGS_KEY = "mnv1_coreml_settings"
META_PREFIX = "mnv1_coreml."
FORMATS_HINT = (
    "a Keras .h5 or .keras file, or a .safetensors/.pt/.pth state dict in this tool's or "
    "timm's layout"
)


#: Where training checkpoints keep the weights, in timm's order of preference.
STATE_KEYS = ("state_dict_ema", "model_ema", "state_dict", "model")
#: Wrapper prefixes on every key: DataParallel/DDP, torch.compile.
WRAPPER_PREFIXES = ("module.", "_orig_mod.")


def _torch_load(path: Path) -> object:
    """``torch.load(weights_only=True)``, letting timm's ``argparse.Namespace`` through."""
    allow = getattr(torch.serialization, "safe_globals", None)  # torch >= 2.5
    if allow is None:
        torch.serialization.add_safe_globals([argparse.Namespace])
        return torch.load(path, map_location="cpu", weights_only=True)
    with allow([argparse.Namespace]):
        return torch.load(path, map_location="cpu", weights_only=True)


def _is_tensor_dict(value: object) -> bool:
    return isinstance(value, dict) and bool(value) and all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in value.items()
    )


def unwrap_checkpoint(state: object) -> object:
    """The weights inside a training checkpoint (see the module docstring), unprefixed."""
    if isinstance(state, dict) and not _is_tensor_dict(state):
        state = next((state[k] for k in STATE_KEYS if _is_tensor_dict(state.get(k))), state)
    if _is_tensor_dict(state):
        for prefix in WRAPPER_PREFIXES:
            while all(k.startswith(prefix) for k in state):  # type: ignore[union-attr]
                state = {k[len(prefix):]: v for k, v in state.items()}  # type: ignore[union-attr]
    return state


def one_line(exc: BaseException) -> str:
    """An exception's first line, whitespace collapsed, for a one-line message."""
    lines = str(exc).strip().splitlines()
    return " ".join((lines[0] if lines else type(exc).__name__).split())[:200]


def read_state_dict_file(
    path: str | os.PathLike[str],
) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors by name from a safetensors or torch file, and the settings metadata it carries.

    Raises a one-line WeightsError for an unreadable, truncated or non-state-dict file.
    """
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    kind = sniff_format(path)
    if kind not in ("safetensors", "torch"):
        raise WeightsError(
            f"{path} is neither a safetensors nor a PyTorch file (truncated or corrupt?); pass "
            f"{FORMATS_HINT}"
        )
    meta: dict[str, str] = {}
    try:
        if kind == "safetensors":
            with safe_open(str(path), framework="pt", device="cpu") as f:
                state = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - not a dict
                meta = {
                    k[len(META_PREFIX):]: v
                    for k, v in (f.metadata() or {}).items()
                    if k.startswith(META_PREFIX)
                }
        else:
            state = _torch_load(path)
    except pickle.UnpicklingError as exc:
        found = re.search(r"Unsupported global: GLOBAL (\S+)", str(exc))
        if found:
            raise WeightsError(
                f"{path} holds pickled Python objects ({found.group(1)}), which are never loaded "
                "since that could run code; save model.state_dict() instead"
            ) from None
        raise WeightsError(
            f"{path} is not a readable PyTorch weights file, truncated or corrupt? "
            f"({one_line(exc)})"
        ) from None
    except (OSError, RuntimeError, ValueError, EOFError, KeyError, zipfile.BadZipFile,
            SafetensorError) as exc:
        raise WeightsError(
            f"{path} is not a readable {kind} weights file, truncated or corrupt? ({one_line(exc)})"
        ) from None
    if isinstance(state, dict) and isinstance(state.get(SETTINGS_KEY), dict):
        meta = {str(k): str(v) for k, v in state[SETTINGS_KEY].items()}
    state = unwrap_checkpoint(state)
    if not _is_tensor_dict(state):
        raise WeightsError(f"{path} does not hold a state dict (a mapping of names to tensors)")
    assert isinstance(state, dict)
    bad = next((k for k, v in state.items() if v.is_floating_point()
                and not bool(torch.isfinite(v).all())), None)
    if bad is not None:
        raise WeightsError(f"{path}: {bad} contains NaN or infinite values")
    return state, meta


def save_state_dict_file(
    path: str | os.PathLike[str],
    state_dict: Mapping[str, torch.Tensor],
    settings: ArchSettings | None = None,
) -> None:
    """Write a state dict in our layout (.safetensors, or .pt/.pth), with its settings.

    Any class count works: the classifier's shape is the checkpoint's class count. The file
    appears complete or not at all (temporary sibling, then a rename).
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".safetensors", ".pt", ".pth"):
        raise WeightsError(f"cannot save weights as {path}: use .safetensors, .pt or .pth")
    state = {k: v.detach().contiguous().cpu() for k, v in state_dict.items()}
    meta = settings_to_metadata(settings) if settings is not None else {}
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        if suffix == ".safetensors":
            from safetensors.torch import save_file

            save_file(state, str(tmp), metadata={META_PREFIX + k: v for k, v in meta.items()})
        else:
            torch.save({"state_dict": state, SETTINGS_KEY: meta} if meta else state, tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
