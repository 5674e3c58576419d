"""Errors of the reference interpreter.

They derive from :class:`mnv1_coreml.errors.UserError`, so the CLI reports them as one line:
a package the interpreter cannot run is a problem with the input model, not a crash.
"""

from __future__ import annotations

from ..errors import UserError


class InterpreterError(UserError):
    """The package or the inputs cannot be run by the reference interpreter."""


class UnsupportedOpError(InterpreterError):
    """An op type (or an op parameter value) the interpreter has no kernel for.

    Raised when the program is loaded, never skipped: a reference that silently ignored an op
    would "validate" a model it did not run.
    """

    def __init__(self, op_type: str, op_name: str, detail: str = "") -> None:
        self.op_type = op_type
        self.op_name = op_name
        self.detail = detail
        msg = f"unsupported op {op_type!r} (op name {op_name!r})"
        if detail:
            msg += f": {detail}"
        super().__init__(msg)


class PredictionError(InterpreterError, RuntimeError):
    """The program ran into an input the Core ML runtime refuses while predicting (an index out
    of range where the op asks for validation, ...). Also a ``RuntimeError``, which is what
    coremltools' ``MLModel.predict`` raises for a failed prediction."""

    def __init__(self, detail: str) -> None:
        super().__init__(f"Unable to compute the prediction using ML Program: {detail}")
