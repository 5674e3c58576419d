"""Where the network's numbers come from: a weights spec resolves to a state dict in our layout.

Specs: ``random`` (seeded, He init, calibrated BatchNorm), or a path to a state dict in our
layout (``.safetensors``, or ``.pt``/``.pth`` read with ``weights_only=True``).
Each source also fixes the architecture settings its weights were trained with (padding,
activation, BN epsilon, input normalisation): :class:`ArchSettings`.
"""

from .core import ArchSettings, LoadedWeights, build_model, check_state_dict, load_weights

__all__ = ["ArchSettings", "LoadedWeights", "build_model", "check_state_dict", "load_weights"]
