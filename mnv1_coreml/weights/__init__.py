"""Where the network's numbers come from: a weights spec resolves to a state dict in our layout.

Specs: ``imagenet`` (the published Keras Applications files, 16 alpha x res variants, downloaded
once into a verified cache), ``timm`` (timm's ImageNet weights, alpha 1.0, via huggingface_hub),
``random`` (seeded, He init, calibrated BatchNorm), or a path: a Keras ``.h5``, or a state dict
in our layout or timm's (``.safetensors``, or ``.pt``/``.pth`` read with ``weights_only=True``).
Each source also fixes the architecture settings its weights were trained with (padding,
activation, BN epsilon, input normalisation): :class:`ArchSettings`.
"""

from .catalog import KERAS_VARIANTS, KerasVariant, keras_variant, published_accuracy
from .core import (
    KERAS_SETTINGS,
    TIMM_SETTINGS,
    ArchSettings,
    LoadedWeights,
    build_model,
    check_state_dict,
    load_weights,
)
from .download import ProgressCallback, default_cache_dir, terminal_progress
from .files import save_state_dict_file

__all__ = [
    "KERAS_SETTINGS",
    "KERAS_VARIANTS",
    "TIMM_SETTINGS",
    "ArchSettings",
    "KerasVariant",
    "LoadedWeights",
    "ProgressCallback",
    "build_model",
    "check_state_dict",
    "default_cache_dir",
    "keras_variant",
    "load_weights",
    "published_accuracy",
    "save_state_dict_file",
    "terminal_progress",
]
