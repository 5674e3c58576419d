"""Reading state-dict files safely: safetensors, or torch files with ``weights_only=True``."""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path

import torch

from ..errors import WeightsError

STATE_DICT_SUFFIXES = (".safetensors", ".pt", ".pth")


def load_state_dict_file(path: Path) -> dict[str, torch.Tensor]:
    """Tensors by name from ``path``; never unpickles arbitrary objects."""
    suffix = path.suffix.lower()
    if suffix not in STATE_DICT_SUFFIXES:
        raise WeightsError(
            f"{path}: unknown weights format {suffix or '(no suffix)'}; "
            f"use one of {', '.join(STATE_DICT_SUFFIXES)}"
        )
    try:
        if suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, ValueError, EOFError, pickle.UnpicklingError,
            zipfile.BadZipFile) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise WeightsError(f"{path} is not a readable {suffix} weights file ({first[:200]})") from exc
    except Exception as exc:  # safetensors raises its own SafetensorError type
        if type(exc).__name__ == "SafetensorError":
            raise WeightsError(f"{path} is not a readable safetensors file ({exc})") from exc
        raise
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()
    ):
        raise WeightsError(f"{path} does not hold a state dict (a mapping of names to tensors)")
    return state
