"""The values the library accepts, as plain tuples: the one place the CLI builds its choices from.

A leaf module (no torch, no coremltools), so the CLI can define its options without loading
either. Compression choices live with the configs, in :mod:`mnv1_coreml.compress.config`.
"""

from __future__ import annotations

PRECISIONS: tuple[str, ...] = ("fp16", "fp32")
#: Deployment targets, weakest first; ML Programs start at iOS15.
TARGET_NAMES: tuple[str, ...] = ("iOS15", "iOS16", "iOS17", "iOS18")
PADDINGS: tuple[str, ...] = ("torch", "tf")
ACTIVATIONS: tuple[str, ...] = ("relu", "relu6")
BACKENDS: tuple[str, ...] = ("auto", "coreml", "reference")
COMPUTE_UNITS: tuple[str, ...] = ("all", "cpu", "cpu-gpu", "cpu-ne")
DEFAULT_ALPHA = 1.0
DEFAULT_RES = 224
DEFAULT_WEIGHTS = "imagenet"
DEFAULT_OUTPUT = "MobileNetV1.mlpackage"
PACKAGE_SUFFIX = ".mlpackage"
#: What the convert pipeline reports to ``on_step``, in order ("validate" only when validating).
STEPS: tuple[str, ...] = ("build", "trace", "convert", "compress", "save", "validate")
