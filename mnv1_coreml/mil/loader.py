"""Read an ``.mlpackage`` back into a PyMIL program with coremltools' own MIL loader.

Using coremltools' deserializer (``milproto.load``) instead of parsing the protobuf ourselves
means the interpreter sees exactly the ops, types and weights coremltools wrote, including the
blob-stored weights, on any OS. This module also reads what the model *description* says
(image inputs and their colour space, output names), which the program alone does not carry.
"""

from __future__ import annotations

import json
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
    "corrupt_message", "from_program", "is_symbolic", "load_package", "read_spec", "types",
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
    """Load ``path`` (an ``.mlpackage`` directory) with ``milproto.load``; weights included.

    Every way a package can be broken ends in one :class:`InterpreterError` line that names the
    problem (see :func:`read_spec`); what only the loader finds (a truncated or garbled
    ``weight.bin``, an op reading an undefined value, types that do not infer) is reported as a
    corrupt package, never as coremltools' or protobuf's own exception.
    """
    pkg, spec = read_spec(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            program = _milproto_load(
                spec,
                specification_version=spec.specificationVersion,
                file_weights_dir=str(pkg / WEIGHTS_SUBDIR),
            )
    except Exception as exc:  # coremltools raises anything from KeyError to AssertionError
        raise InterpreterError(corrupt_message(pkg, exc)) from None
    return LoadedPackage(
        path=pkg,
        program=program,
        spec=spec,
        image_inputs=_image_inputs(spec),
        output_names=[o.name for o in spec.description.output],
        predicted_feature_name=spec.description.predictedFeatureName,
        predicted_probabilities_name=spec.description.predictedProbabilitiesName,
    )


def corrupt_message(pkg: Path, exc: BaseException) -> str:
    """The one line for a package whose spec reads but whose program or weights do not."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return (f"{pkg} is corrupt: its program or weights cannot be loaded "
            f"({type(exc).__name__}: {text[:300]}); convert it again")


def read_spec(path: str | os.PathLike[str]) -> tuple[Path, Any]:
    """The checked spec of the ML Program package at ``path``, for every reader of packages.

    The one place that turns a broken package into a clear error before anything reads it:
    the path (missing, a dangling or looping symlink, a file, unreadable), ``Manifest.json``
    and the files it points at, the spec protobuf, the model type (ML Programs only), the
    versions and opset, the ``main`` function, and whether the model description (inputs,
    outputs, classifier outputs) agrees with the program. coremltools' own errors for these
    are C++ or protobuf messages (or ``'NoneType' object has no attribute 'path'``).
    """
    pkg = Path(os.fspath(path))
    _check_path(pkg)
    spec = _load_spec(pkg)
    kind = spec.WhichOneof("Type")
    if kind is None:
        raise InterpreterError(
            f"{pkg} holds no model: its spec (model.mlmodel) is empty or not a Core ML model; "
            "convert it again"
        )
    if kind != "mlProgram":
        raise InterpreterError(
            f"{pkg} is a {kind} model, not an ML Program; only ML Programs are supported: "
            "convert the source model again as an ML Program (coremltools "
            "convert_to='mlprogram', or mnv1-coreml convert)"
        )
    _check_versions(pkg, spec)
    _check_description(pkg, spec)
    return pkg, spec


def _check_path(pkg: Path) -> None:
    if pkg.is_symlink() and not pkg.exists():
        raise InterpreterError(
            f"{pkg} is a symbolic link to {os.readlink(pkg)!r}, which does not exist or loops "
            "back on itself; pass the package itself"
        )
    if not pkg.exists():
        raise InterpreterError(f"{pkg}: no such model package; pass the path of a .mlpackage")
    if not pkg.is_dir():
        if pkg.suffix.lower() == ".mlmodel":
            raise InterpreterError(
                f"{pkg} is an .mlmodel file, not an .mlpackage directory: only ML Programs "
                "(saved as .mlpackage) are supported; convert the source model again as an ML "
                "Program (coremltools convert_to='mlprogram', or mnv1-coreml convert)"
            )
        raise InterpreterError(
            f"{pkg}: not an .mlpackage directory (ML Programs are saved as .mlpackage "
            "directories); pass the package directory"
        )
    if not os.access(pkg, os.R_OK | os.X_OK):
        raise InterpreterError(f"{pkg} cannot be read (permission denied); make it readable "
                               "(chmod -R u+rX) or pass a copy you can read")
    manifest = pkg / "Manifest.json"
    if not manifest.is_file():
        raise InterpreterError(
            f"{pkg} is not a Core ML package: it has no Manifest.json; pass an .mlpackage made "
            "by mnv1-coreml convert or coremltools (or convert the model again)"
        )
    try:
        doc = json.loads(manifest.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise InterpreterError(
            f"{manifest} is unreadable ({type(exc).__name__}: {' '.join(str(exc).split())}); "
            "the package is damaged: convert it again"
        ) from None
    entries = doc.get("itemInfoEntries") if isinstance(doc, dict) else None
    root = doc.get("rootModelIdentifier") if isinstance(doc, dict) else None
    if not isinstance(entries, dict) or not isinstance(root, str):
        raise InterpreterError(
            f"{manifest} is malformed (it needs itemInfoEntries and rootModelIdentifier); the "
            "package is damaged: convert it again"
        )
    for ident, entry in entries.items():
        rel = entry.get("path") if isinstance(entry, dict) else None
        if not isinstance(rel, str):
            raise InterpreterError(f"{manifest}: item {ident!r} has no path; the package is "
                                   "damaged: convert it again")
        target = pkg / "Data" / rel
        what = "model spec" if ident == root else f"item {entry.get('name', ident)!r}"
        if not target.exists() or (ident == root and not target.is_file()):
            state = "is not a file" if target.exists() else (
                "is a broken or looping symbolic link" if target.is_symlink() else "is missing")
            raise InterpreterError(
                f"{pkg}: the {what} that Manifest.json lists, Data/{rel}, {state}; the "
                "package is damaged: convert it again"
            )
        if target.exists() and not os.access(target, os.R_OK):
            raise InterpreterError(f"{target} cannot be read (permission denied); make the "
                                   "package readable (chmod -R u+rX)")
    if root not in entries:
        raise InterpreterError(
            f"{manifest}: its rootModelIdentifier {root!r} is not one of its items; the "
            "package is damaged: convert it again"
        )


def _load_spec(pkg: Path) -> Any:
    try:
        return ct.utils.load_spec(str(pkg))
    except Exception as exc:  # protobuf DecodeError, C++ package errors, OSError...
        text = " ".join(str(exc).split()) or type(exc).__name__
        raise InterpreterError(
            f"{pkg} is not a readable Core ML model ({text[:300]}); convert it again"
        ) from None


def _check_versions(pkg: Path, spec: Any) -> None:
    known = getattr(ct, "_OPSET", {})  # specification version -> opset name ("CoreML5"...)
    version = spec.specificationVersion
    if known and version not in known:
        raise InterpreterError(
            f"{pkg} declares specification version {version}, which coremltools "
            f"{ct.__version__} does not know ({min(known)}..{max(known)}); re-convert it for "
            "an older deployment target, or upgrade coremltools"
        )
    if spec.mlProgram.version != 1:
        raise InterpreterError(
            f"{pkg}: ML Program format version {spec.mlProgram.version} is not supported "
            "(only 1); convert it again"
        )
    if MAIN_FUNCTION not in spec.mlProgram.functions:
        found = ", ".join(sorted(spec.mlProgram.functions)) or "none"
        raise InterpreterError(
            f"{pkg}: the ML Program has no {MAIN_FUNCTION!r} function (functions: {found}); "
            "convert it again"
        )
    fn = spec.mlProgram.functions[MAIN_FUNCTION]
    if known and fn.opset not in known.values():
        raise InterpreterError(
            f"{pkg}: function {MAIN_FUNCTION!r} uses opset {fn.opset!r}, which is not a known "
            f"opset ({', '.join(sorted(set(known.values())))}); convert it again"
        )
    if fn.opset not in fn.block_specializations:
        raise InterpreterError(
            f"{pkg}: function {MAIN_FUNCTION!r} has no program for its opset {fn.opset!r}; "
            "the package is damaged: convert it again"
        )


def _check_description(pkg: Path, spec: Any) -> None:
    """The model description must describe the program: same inputs, outputs the program
    makes, fixed image sizes that are the program's, colour spaces we know."""
    desc = spec.description
    if desc.functions:  # a multifunction model describes each function separately
        desc = next((f for f in desc.functions if f.name == MAIN_FUNCTION), None)
        if desc is None:
            return
    fn = spec.mlProgram.functions[MAIN_FUNCTION]
    program_inputs = {i.name: i for i in fn.inputs}
    described = [f.name for f in desc.input] + [s.name for s in desc.state]
    fix = "; the model description does not match the program: convert it again"
    if not desc.input and not desc.state:
        raise InterpreterError(f"{pkg} describes no inputs{fix}")
    if set(described) != set(program_inputs):
        raise InterpreterError(
            f"{pkg}: described inputs {sorted(described)}, but the program's are "
            f"{sorted(program_inputs)}{fix}"
        )
    outputs = list(fn.block_specializations[fn.opset].outputs)
    missing = [o.name for o in desc.output if o.name not in outputs]
    if not desc.output or missing:
        raise InterpreterError(
            f"{pkg}: described outputs {[o.name for o in desc.output]}, but the program's are "
            f"{outputs}{fix}"
        )
    names = {o.name for o in desc.output}
    for field in ("predictedFeatureName", "predictedProbabilitiesName"):
        value = getattr(desc, field)
        if value and value not in names:
            raise InterpreterError(
                f"{pkg}: the classifier's {field} {value!r} is not one of its outputs "
                f"{sorted(names)}{fix}"
            )
    for feature in desc.input:
        if feature.type.WhichOneof("Type") != "imageType":
            continue
        image = feature.type.imageType
        if image.colorSpace not in COLOR_SPACES:
            raise InterpreterError(
                f"{pkg}: input {feature.name!r} has colour space {image.colorSpace}, not one "
                f"of {', '.join(COLOR_SPACES.values())}{fix}"
            )
        tensor = program_inputs[feature.name].type.tensorType
        dims = [d.constant.size if d.WhichOneof("dimension") == "constant" else None
                for d in tensor.dimensions]
        if len(dims) == 4 and None not in dims[2:] and (image.height, image.width) != (
            dims[2], dims[3]
        ):
            raise InterpreterError(
                f"{pkg}: input {feature.name!r} is described as {image.width}x{image.height} "
                f"but the program takes {dims[3]}x{dims[2]}{fix}"
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
