"""The one place that imports coremltools, quietly.

coremltools logs a warning for every missing native proxy on Linux, for any torch newer than it
was tested with and for scikit-learn, and draws tqdm bars during conversion. None of that is for
our users: they get one progress display and one-line errors.
"""

from __future__ import annotations

import functools
import importlib
import logging
import platform
import warnings

for _name in ("coremltools", "coremltools.models", "coremltools.converters"):
    logging.getLogger(_name).setLevel(logging.ERROR)
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    import coremltools as ct  # noqa: E402

# torch imports tqdm before we can set TQDM_DISABLE, so switch off the bars where they are drawn.
import tqdm as _tqdm  # noqa: E402

for _module, _attr in (
    ("coremltools.converters.mil.frontend.torch.ops", "_tqdm"),
    ("coremltools.converters.mil.mil.passes.pass_pipeline", "tqdm"),
):
    setattr(importlib.import_module(_module), _attr, functools.partial(_tqdm.tqdm, disable=True))

# Conversion passes warn about renamed outputs and the like; keep them out of user output.
warnings.filterwarnings("ignore", module=r"coremltools(\..*)?")

#: Targets the CLI accepts, weakest first; ML Programs start at iOS15.
TARGETS: dict[str, object] = {
    "iOS15": ct.target.iOS15,
    "iOS16": ct.target.iOS16,
    "iOS17": ct.target.iOS17,
    "iOS18": ct.target.iOS18,
}


def can_run_coreml() -> bool:
    """The Core ML runtime exists only on macOS; coremltools cannot predict anywhere else."""
    return platform.system() == "Darwin"


def target_name(target: object) -> str:
    for name, value in TARGETS.items():
        if value == target:
            return name
    raise ValueError(f"unknown deployment target {target!r}")


__all__ = ["TARGETS", "can_run_coreml", "ct", "target_name"]
