"""The one coremltools shim: its import, deployment targets, program loading, and quiet output.

coremltools logs a warning for every missing native proxy on Linux, for any torch newer than it
was tested with and for scikit-learn, emits Python warnings from its passes, and draws tqdm bars
during conversion and compression. None of that is for our users, who get one progress display
and one-line errors. Nothing here changes global state for longer than a ``with`` block:
:func:`quiet_coremltools` silences coremltools and restores everything on exit, and the library
wraps each coremltools call in it (the CLI may also hold it for a whole command).
"""

from __future__ import annotations

import functools
import importlib
import logging
import platform
import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from .choices import TARGET_NAMES

#: Loggers coremltools writes to (children inherit the level unless they set their own).
_LOGGERS = ("coremltools", "coremltools.models", "coremltools.converters", "coremltools.optimize")
#: Module attributes through which coremltools draws tqdm bars (module, attribute name).
_TQDM_SITES = (
    ("coremltools.converters.mil.frontend.torch.ops", "_tqdm"),
    ("coremltools.converters.mil.mil.passes.pass_pipeline", "tqdm"),
    # "Running compression pass palettize_weights / linear_quantize_weights: ..."
    ("coremltools.optimize.coreml._quantization_passes", "tqdm"),
    ("coremltools.optimize.coreml._post_training_quantization", "tqdm"),
    # "Running compression pass linear_quantize_activations" (activation calibration)
    ("coremltools.optimize.coreml.experimental._post_training_quantization", "tqdm"),
)


@contextmanager
def quiet_coremltools() -> Iterator[None]:
    """Silence coremltools (logs below ERROR, its warnings, its tqdm bars) inside the block.

    Re-entrant; logger levels, warning filters and the patched tqdm attributes are restored on
    exit. Entering it before the first ``import coremltools`` also hides the import-time noise.
    """
    levels = {name: logging.getLogger(name).level for name in _LOGGERS}
    patched: list[tuple[Any, str, Any]] = []
    try:
        for name in _LOGGERS:
            logging.getLogger(name).setLevel(logging.ERROR)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", module=r"coremltools(\..*)?")
            # import-time warnings come from the modules coremltools imports (sklearn, torch...)
            if "coremltools" not in sys.modules:
                warnings.simplefilter("ignore")
            import tqdm

            for module_name, attr in _TQDM_SITES:
                try:
                    module = importlib.import_module(module_name)
                except ImportError:
                    continue
                original = getattr(module, attr, None)
                if original is None or isinstance(original, functools.partial):
                    continue  # absent, or already silenced by an enclosing block
                patched.append((module, attr, original))
                setattr(module, attr, functools.partial(tqdm.tqdm, disable=True))
            yield
    finally:
        for module, attr, original in reversed(patched):
            setattr(module, attr, original)
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)


with quiet_coremltools():
    import coremltools as ct
    import coremltools.optimize.coreml as cto
    from coremltools.converters.mil.frontend.milproto.load import load as _load_milproto
    from coremltools.converters.mil.mil import Program

@contextmanager
def shared_constants() -> Iterator[None]:
    """Let coremltools' ``common::const_deduplication`` share every repeated constant inside
    the block, not only tensors of 100+ elements (its default).

    A MobileNet program repeats small constants (strides, pads, dilations, groups, each
    compression op's zero points, each quantize op's dtype, each quantize/dequantize pair's
    scale), each serialized as its own const op of about 110 bytes. Sharing them is one var
    per value in MIL, the same program to the runtime: 12.3 kB (2.2%) less at int8 0.25-128.
    The threshold is a class attribute in coremltools, so it is restored on exit.
    """
    from coremltools.converters.mil.mil.passes.defs.cleanup.const_deduplication import (
        const_deduplication,
    )

    saved = const_deduplication._const_threshold
    const_deduplication._const_threshold = 0
    try:
        yield
    finally:
        const_deduplication._const_threshold = saved


#: Deployment targets by name, weakest first.
TARGETS: dict[str, Any] = {name: getattr(ct.target, name) for name in TARGET_NAMES}


def can_run_coreml() -> bool:
    """The Core ML runtime exists only on macOS; coremltools cannot predict anywhere else."""
    return platform.system() == "Darwin"


def target_name(spec_version: int) -> str:
    """``iOS16`` for a spec version (or ``ct.target`` member), as the CLI and metadata spell it."""
    version = getattr(spec_version, "value", spec_version)
    for name, target in TARGETS.items():
        if target.value == version:
            return name
    return f"specification version {version}"


def load_program(mlmodel: Any) -> Program:
    """The MIL program of an ML Program model: the in-memory one if ct.convert left it, else
    parsed from the spec and its weight files (what coremltools' own compression passes do)."""
    prog = getattr(mlmodel, "_mil_program", None)
    if prog is not None:
        return prog
    spec = mlmodel.get_spec()
    if spec.WhichOneof("Type") != "mlProgram":
        from .errors import UserError

        raise UserError(
            f"compression needs an ML Program (mlprogram) model, got {spec.WhichOneof('Type')}"
        )
    with quiet_coremltools():
        return _load_milproto(
            model_spec=spec,
            specification_version=spec.specificationVersion,
            file_weights_dir=mlmodel.weights_dir,
        )


__all__ = [
    "TARGETS", "Program", "can_run_coreml", "ct", "cto", "load_program", "quiet_coremltools",
    "shared_constants", "target_name",
]
