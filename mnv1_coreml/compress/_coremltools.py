"""coremltools, imported without its start-up noise.

On Linux it logs "Failed to load _MLModelProxy" and version-support warnings at import; they are
irrelevant to compression (which never loads a model), so the ``coremltools`` logger is raised to
ERROR first and import-time warnings are dropped.
"""

from __future__ import annotations

import logging
import warnings

logging.getLogger("coremltools").setLevel(logging.ERROR)
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    import coremltools as ct
    import coremltools.optimize.coreml as cto
    from coremltools.converters.mil.frontend.milproto.load import load as _load_milproto
    from coremltools.converters.mil.mil import Program

__all__ = ["Program", "ct", "cto", "load_program"]


def load_program(mlmodel: ct.models.MLModel) -> Program:
    """The MIL program of an ML Program model: the in-memory one if ct.convert left it, else
    parsed from the spec and its weight files (what coremltools' own compression passes do)."""
    prog = getattr(mlmodel, "_mil_program", None)
    if prog is not None:
        return prog
    spec = mlmodel.get_spec()
    if spec.WhichOneof("Type") != "mlProgram":
        raise ValueError(
            f"compression needs an ML Program (mlprogram) model, got {spec.WhichOneof('Type')}"
        )
    return _load_milproto(
        model_spec=spec,
        specification_version=spec.specificationVersion,
        file_weights_dir=mlmodel.weights_dir,
    )
