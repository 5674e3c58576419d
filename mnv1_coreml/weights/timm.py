"""timm's MobileNet V1 weights: key names mapped to ours by name, fetched via huggingface_hub.

timm groups the 13 depthwise-separable blocks into 5 stages (1, 2, 2, 6, 2 blocks), named
``blocks.<stage>.<j>`` with ``conv_dw``/``bn1`` (depthwise) and ``conv_pw``/``bn2``
(pointwise); the stem is ``conv_stem``/``bn1`` and the FC is ``classifier``. Keys this map does
not know are passed through unchanged, so the strict check names them as unexpected.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path

import torch

from ..errors import WeightsError
from .core import TIMM_SETTINGS, LoadedWeights, apply_overrides, file_sha256

TIMM_REPO = "timm/mobilenetv1_100.ra4_e3600_r224_in1k"
TIMM_FILENAME = "model.safetensors"
TIMM_URL = f"https://huggingface.co/{TIMM_REPO}/resolve/main/{TIMM_FILENAME}"
#: Blocks per stage in timm's mobilenetv1_100 (sums to the paper's 13).
TIMM_STAGES: tuple[int, ...] = (1, 2, 2, 6, 2)

_BN = ("weight", "bias", "running_mean", "running_var")


def timm_key_map() -> dict[str, str]:
    """timm key -> our key, for every tensor of the architecture."""
    m = {"conv_stem.weight": "stem.conv.weight"}
    m.update({f"bn1.{p}": f"stem.bn.{p}" for p in _BN})
    i = 0
    for stage, n in enumerate(TIMM_STAGES):
        for j in range(n):
            t, o = f"blocks.{stage}.{j}", f"blocks.{i}"
            m[f"{t}.conv_dw.weight"] = f"{o}.dw.conv.weight"
            m[f"{t}.conv_pw.weight"] = f"{o}.pw.conv.weight"
            m.update({f"{t}.bn1.{p}": f"{o}.dw.bn.{p}" for p in _BN})
            m.update({f"{t}.bn2.{p}": f"{o}.pw.bn.{p}" for p in _BN})
            i += 1
    m["classifier.weight"] = "classifier.weight"
    m["classifier.bias"] = "classifier.bias"
    return m


def is_timm_layout(keys: object) -> bool:
    """True for a state dict with timm's names (its stem is ``conv_stem``)."""
    return "conv_stem.weight" in keys  # type: ignore[operator]


def timm_to_ours(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename timm keys to ours; ``num_batches_tracked`` is dropped, unknown keys kept as-is."""
    mapping = timm_key_map()
    return {
        mapping.get(k, k): v for k, v in state_dict.items() if not k.endswith("num_batches_tracked")
    }


def ours_to_timm(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The inverse rename, for writing a checkpoint timm can load."""
    inverse = {v: k for k, v in timm_key_map().items()}
    return {inverse.get(k, k): v for k, v in state_dict.items()}


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
        reason = " ".join(str(exc).split())[:200] or type(exc).__name__
        raise WeightsError(
            f"cannot fetch {TIMM_FILENAME} from the Hugging Face repo {TIMM_REPO} ({reason}); "
            f"offline? download {TIMM_URL} elsewhere and pass --weights PATH to it"
        ) from None


def load_timm(alpha: float, *, overrides: Mapping[str, object] | None = None) -> LoadedWeights:
    """timm's ImageNet MobileNet V1 (75% top-1), which exists for alpha 1.0 only."""
    from .files import read_state_dict_file

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
