"""Loader: timm's ImageNet MobileNet V1 weights, fetched via huggingface_hub.

timm checkpoints on disk (any width, any class count) are read by :mod:`.files`; this module
is the ``timm`` spec, the published ``mobilenetv1_100`` file.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path

from ..errors import WeightsError, one_line
from ..hashing import file_sha256
from .checkpoint import read_state_dict_file
from .layouts import is_timm_layout, timm_to_ours
from .settings import TIMM_SETTINGS, LoadedWeights, apply_overrides

TIMM_REPO = "timm/mobilenetv1_100.ra4_e3600_r224_in1k"
TIMM_FILENAME = "model.safetensors"
TIMM_URL = f"https://huggingface.co/{TIMM_REPO}/resolve/main/{TIMM_FILENAME}"


def hub_download() -> Path:
    """timm's ``model.safetensors`` via huggingface_hub (its own cache, ``$HF_HOME``)."""
    try:
        from huggingface_hub import hf_hub_download
    except ImportError:
        raise WeightsError(
            "--weights timm needs huggingface_hub: pip install \"mnv1-coreml[hub]\"; or download "
            f"{TIMM_URL} elsewhere and pass --weights PATH to it"
        ) from None
    try:
        return Path(hf_hub_download(repo_id=TIMM_REPO, filename=TIMM_FILENAME))
    except KeyboardInterrupt:
        raise
    except Exception as exc:  # network, auth, offline-cache misses: all one-line user errors
        reason = one_line(exc, 200)
        raise WeightsError(
            f"cannot fetch {TIMM_FILENAME} from the Hugging Face repo {TIMM_REPO} ({reason}); "
            f"offline? download {TIMM_URL} elsewhere and pass --weights PATH to it"
        ) from None


def load_timm(alpha: float, *, overrides: Mapping[str, object] | None = None) -> LoadedWeights:
    """timm's ImageNet MobileNet V1 (75% top-1), which exists for alpha 1.0 only."""
    if not math.isclose(alpha, 1.0, rel_tol=0, abs_tol=1e-9):
        raise WeightsError(
            f"timm publishes MobileNet V1 ImageNet weights for alpha 1.0 only, got alpha={alpha:g};"
            " use --alpha 1.0, --weights imagenet (alpha 0.25-1.0), or --weights random"
        )
    path = hub_download()
    state, _ = read_state_dict_file(path)
    if not is_timm_layout(state):
        raise WeightsError(f"{path} from {TIMM_REPO} does not hold timm MobileNet V1 key names")
    settings = apply_overrides(TIMM_SETTINGS, overrides or {})
    return LoadedWeights(
        timm_to_ours(state), "timm", "timm", file_sha256(path), settings,
        format="timm", path=path, url=TIMM_URL,
    )
