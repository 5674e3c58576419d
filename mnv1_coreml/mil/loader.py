"""Read an ``.mlpackage`` back into a PyMIL program with coremltools' own MIL loader.

Using coremltools' deserializer (``milproto.load``) instead of parsing the protobuf ourselves
means the interpreter sees exactly the ops, types and weights coremltools wrote, including the
blob-stored weights, on any OS. This module also reads what the model *description* says
(image inputs and their colour space, output names), which the program alone does not carry.
"""

from __future__ import annotations

import logging
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import InterpreterError

# coremltools logs "Failed to load _MLModelProxy" and scikit-learn / torch version warnings at
# import time; none of it is for our users. Silenced for the import only: logger levels and
# warning filters are restored after it (nothing global is left behind).
_LOGGERS = ("coremltools", "coremltools.models", "coremltools.converters")
_levels = {name: logging.getLogger(name).level for name in _LOGGERS}
try:
    for _name in _LOGGERS:
        logging.getLogger(_name).setLevel(logging.ERROR)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import coremltools as ct
        from coremltools.converters.mil.frontend.milproto.load import load as _milproto_load
        from coremltools.converters.mil.mil import Function, Operation, Program, Var, types
        from coremltools.converters.mil.mil.types.symbolic import is_symbolic
finally:
    for _name, _level in _levels.items():
        logging.getLogger(_name).setLevel(_level)

__all__ = [
    "Function", "ImageInput", "LoadedPackage", "Operation", "Program", "Var", "ct",
    "from_program", "is_symbolic", "load_package", "types",
]

WEIGHTS_SUBDIR = Path("Data") / "com.apple.CoreML" / "weights"
MAIN_FUNCTION = "main"

#: Model-description colour spaces (``ImageFeatureType.ColorSpace``) that predict() can feed.
COLOR_SPACES = {10: "GRAYSCALE", 20: "RGB", 30: "BGR", 40: "GRAYSCALE_FLOAT16"}


@dataclass(frozen=True)
class ImageInput:
    """What the model description says about an image input (Core ML feeds it as pixels)."""

    name: str
    height: int
    width: int
    color_layout: str  # "RGB" | "BGR" | "GRAYSCALE" | "GRAYSCALE_FLOAT16"


@dataclass
class LoadedPackage:
    """A deserialized ML Program plus the parts of its model description the interpreter needs."""

    path: Path | None
    program: Program
    spec: Any | None  # coremltools.proto.Model_pb2.Model, None for in-memory programs
    image_inputs: dict[str, ImageInput]
    output_names: list[str]  # model outputs in description order
    #: A classifier's ``predictedFeatureName`` / ``predictedProbabilitiesName`` ("" if unset).
    #: ML Programs keep the labels themselves only in the ``classify`` op's ``classes`` input.
    predicted_feature_name: str = ""
    predicted_probabilities_name: str = ""

    @property
    def main(self) -> Function:
        return self.program.functions[MAIN_FUNCTION]


def load_package(path: str | os.PathLike[str]) -> LoadedPackage:
    """Load ``path`` (an ``.mlpackage`` directory) with ``milproto.load``; weights included."""
    pkg = Path(path)
    if not pkg.exists():
        raise InterpreterError(f"{pkg}: no such model package")
    if not pkg.is_dir():
        raise InterpreterError(
            f"{pkg}: not an .mlpackage directory (ML Programs are saved as .mlpackage)"
        )
    try:
        spec = ct.utils.load_spec(str(pkg))
    except Exception as exc:  # protobuf / manifest errors: report them as one line
        raise InterpreterError(f"{pkg}: cannot read the model spec: {exc}") from exc
    if spec.WhichOneof("Type") != "mlProgram":
        raise InterpreterError(
            f"{pkg}: model type is {spec.WhichOneof('Type')!r}, not an ML Program (mlProgram)"
        )
    if MAIN_FUNCTION not in spec.mlProgram.functions:
        raise InterpreterError(f"{pkg}: the ML Program has no {MAIN_FUNCTION!r} function")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = _milproto_load(
            spec,
            specification_version=spec.specificationVersion,
            file_weights_dir=str(pkg / WEIGHTS_SUBDIR),
        )
    return LoadedPackage(
        path=pkg,
        program=program,
        spec=spec,
        image_inputs=_image_inputs(spec),
        output_names=[o.name for o in spec.description.output],
        predicted_feature_name=spec.description.predictedFeatureName,
        predicted_probabilities_name=spec.description.predictedProbabilitiesName,
    )


def from_program(program: Program) -> LoadedPackage:
    """Wrap an in-memory PyMIL program (e.g. from ``mb.program``); it has no description."""
    if MAIN_FUNCTION not in program.functions:
        raise InterpreterError(f"the program has no {MAIN_FUNCTION!r} function")
    main = program.functions[MAIN_FUNCTION]
    return LoadedPackage(
        path=None,
        program=program,
        spec=None,
        image_inputs={},
        output_names=[v.name for v in main.outputs],
    )


def _image_inputs(spec: Any) -> dict[str, ImageInput]:
    found: dict[str, ImageInput] = {}
    for feature in spec.description.input:
        if feature.type.WhichOneof("Type") != "imageType":
            continue
        image = feature.type.imageType
        layout = COLOR_SPACES.get(image.colorSpace)
        if layout is None:
            raise InterpreterError(
                f"input {feature.name!r}: unsupported image colour space {image.colorSpace}"
            )
        found[feature.name] = ImageInput(feature.name, image.height, image.width, layout)
    return found
