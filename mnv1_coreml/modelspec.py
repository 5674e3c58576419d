"""What a saved ``.mlpackage`` promises: read from its spec alone, without running it.

``validate`` checks this contract (input name, size, colour space, labels, metadata) before it
compares a single number, because a model that computes the right logits but labels them in
the wrong order is just as broken.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from .coreml import ct, quiet_coremltools
from .errors import UserError
from .fsutil import as_path


@dataclass(frozen=True)
class ModelContract:
    kind: str  # "mlProgram", "neuralNetworkClassifier", ...
    input_name: str
    input_kind: str  # "imageType", "multiArrayType", ...
    width: int
    height: int
    color_space: str  # "RGB" | "BGR" | "GRAYSCALE" | ""
    labels: list[str]
    label_output: str
    probs_output: str
    metadata: dict[str, str]
    spec_version: int


def _classify_labels(spec: object) -> list[str]:
    """Class labels of an ML Program: the ``classes`` input of its ``classify`` op."""
    fn = spec.mlProgram.functions["main"]  # type: ignore[attr-defined]
    block = fn.block_specializations[fn.opset]
    consts = {op.outputs[0].name: op for op in block.operations if op.type == "const"}
    for op in block.operations:
        if op.type != "classify":
            continue
        arg = op.inputs["classes"].arguments[0]
        value = arg.value if arg.HasField("value") else consts[arg.name].attributes["val"]
        items = value.immediateValue.list.values
        return [
            (v.immediateValue.tensor.strings.values[0] if v.immediateValue.tensor.strings.values
             else str(v.immediateValue.tensor.longInts.values[0]))
            for v in items
        ]
    return []


def read_contract(path: str | os.PathLike[str]) -> ModelContract:
    """Parse the spec of ``path``; a missing, unreadable or inconsistent package (anything
    :func:`mnv1_coreml.mil.loader.read_spec` refuses) is a one-line user error."""
    from .mil.loader import read_spec

    path = as_path(path)
    with quiet_coremltools():
        _, spec = read_spec(path)
    desc = spec.description
    inp = desc.input[0]
    kind = inp.type.WhichOneof("Type") or ""
    width = height = 0
    color = ""
    if kind == "imageType":
        width, height = inp.type.imageType.width, inp.type.imageType.height
        color = ct.proto.FeatureTypes_pb2.ImageFeatureType.ColorSpace.Name(
            inp.type.imageType.colorSpace
        )
    model_kind = spec.WhichOneof("Type") or ""
    try:
        labels = _classify_labels(spec) if model_kind == "mlProgram" else []
    except (KeyError, IndexError, AttributeError, ValueError, TypeError) as exc:
        raise UserError(
            f"{path}: the ML Program's classifier is malformed ({exc!r}); convert it again"
        ) from None
    return ModelContract(
        kind=model_kind,
        input_name=inp.name,
        input_kind=kind,
        width=width,
        height=height,
        color_space=color,
        labels=labels,
        label_output=desc.predictedFeatureName,
        probs_output=desc.predictedProbabilitiesName,
        metadata=dict(desc.metadata.userDefined),
        spec_version=spec.specificationVersion,
    )
