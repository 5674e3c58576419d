"""Loader: a state-dict file (safetensors or PyTorch) in our layout or timm's, any class count,
plain or inside a training checkpoint (:func:`.checkpoint.unwrap_checkpoint`).

The layout is told apart by key names (timm's stem is ``conv_stem``); settings come from the
file's own metadata when this tool wrote it, timm's for timm names, else our defaults.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from ..errors import WeightsError
from ..hashing import file_sha256
from .checkpoint import FORMATS_HINT, read_state_dict_file
from .layouts import is_timm_layout, refuse_timm_variant, timm_to_ours
from .settings import (
    OUR_SETTINGS,
    TIMM_SETTINGS,
    LoadedWeights,
    apply_overrides,
    settings_from_metadata,
)


def load_state_dict_weights(
    path: str | os.PathLike[str], *, spec: str, overrides: Mapping[str, object] | None = None
) -> LoadedWeights:
    """Weights from a ``.safetensors``/``.pt``/``.pth`` state dict, with the implied settings."""
    path = Path(path)
    state, meta = read_state_dict_file(path)
    if is_timm_layout(state):
        refuse_timm_variant(state, path)
        state, settings, fmt = timm_to_ours(state), TIMM_SETTINGS, "timm"
    elif "stem.conv.weight" not in state:
        first = ", ".join(list(state)[:3])
        raise WeightsError(
            f"{path} holds neither this tool's key names (stem.conv.weight, ...) nor timm's "
            f"(conv_stem.weight, ...) but {first}, ...; pass {FORMATS_HINT}"
        )
    else:
        settings = settings_from_metadata(meta, str(path)) or OUR_SETTINGS
        fmt = "mnv1-coreml"
        state = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    settings = apply_overrides(settings, overrides or {})
    return LoadedWeights(state, "file", spec, file_sha256(path), settings, format=fmt, path=path)
