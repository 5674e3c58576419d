"""Where the network's numbers come from: a weights spec resolves to a state dict in our layout.

Specs: ``imagenet`` (the published Keras Applications files, 16 alpha x res variants, downloaded
once into a verified cache), ``timm`` (timm's ImageNet weights, alpha 1.0, via huggingface_hub),
``random`` (seeded, He init, calibrated BatchNorm), or a path: a Keras 2 ``.h5``, a Keras 3
``.keras``, or a state dict in our layout or timm's (``.safetensors``, or ``.pt``/``.pth`` read
with ``weights_only=True``), with any number of classes. Each source also fixes the
architecture settings its weights were trained with (padding, activation, BN epsilon, input
normalisation): :class:`ArchSettings`.

Layers (no cycles): leaves ``settings``, ``sniff``, ``layouts``, ``checkpoint``, ``download``
and ``keras_common``; loaders ``files``, ``keras``, ``keras3``, ``timm``, ``random_init``, each
importing only leaves; ``resolve`` maps a spec to a loader through a table.
``build_model`` lives beside the model (:mod:`mnv1_coreml.model`) and is re-exported here.
"""

from ..model import build_model, check_state_dict
from .checkpoint import read_state_dict_file, save_state_dict_file
from .download import ProgressCallback, default_cache_dir
from .resolve import KEYWORD_SPECS, load_weights, model_size
from .settings import KERAS_SETTINGS, TIMM_SETTINGS, ArchSettings, LoadedWeights

__all__ = [
    "KERAS_SETTINGS",
    "KEYWORD_SPECS",
    "TIMM_SETTINGS",
    "ArchSettings",
    "LoadedWeights",
    "ProgressCallback",
    "build_model",
    "check_state_dict",
    "default_cache_dir",
    "load_weights",
    "model_size",
    "read_state_dict_file",
    "save_state_dict_file",
]
