"""Reference ML Program interpreter: runs an ``.mlpackage`` op by op on any OS.

coremltools can convert and save on Linux but not predict; this package executes the saved
program itself (every op, stored weight and fp16 rounding), so a package can be validated
against PyTorch anywhere::

    from mnv1_coreml.mil import ReferenceModel
    m = ReferenceModel.load("MobileNetV1.mlpackage")
    res = m.predict(images_uint8, outputs=[m.logits_name, "classLabel"])
"""

from .errors import InterpreterError, UnsupportedOpError
from .interpreter import BatchPlan, Preprocessing, ReferenceModel
from .ops import supported_ops

__all__ = [
    "BatchPlan",
    "InterpreterError",
    "Preprocessing",
    "ReferenceModel",
    "UnsupportedOpError",
    "supported_ops",
]
