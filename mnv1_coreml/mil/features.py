"""coremltools' ``MLModel.predict`` contract, for :meth:`ReferenceModel.predict` on a dict.

Test code written for ``ct.models.MLModel(path).predict({...})`` on a Mac runs unchanged
against the interpreter on any OS: the same input dict (PIL images for image inputs, arrays
or torch tensors for multi-arrays), the same checks (unknown input names are a ``KeyError``,
image inputs must be ``PIL.Image.Image`` in the mode the colour space needs: ``RGB`` for RGB
and BGR, ``L`` for GRAYSCALE, ``F`` for GRAYSCALE_FLOAT16, all as coremltools'
``_verify_input_dict`` raises them), and the same result: ``{output name: value}`` with
multi-arrays as NumPy arrays in the dtype the model description declares (float16 for FLOAT16),
a classifier's label as ``str`` (``int`` for integer labels) and its probabilities as
``{label: float}``. A list of dicts gives a list of results (coremltools' batch prediction).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from .errors import InterpreterError
from .loader import ImageInput

#: Model-description multi-array types -> the NumPy dtype Core ML hands back.
_ARRAY_DTYPES = {"FLOAT32": np.float32, "FLOAT16": np.float16, "DOUBLE": np.float64,
                 "INT32": np.int32, "INT8": np.int8}
_PIL_MODES = {"RGB": "RGB", "BGR": "RGB", "GRAYSCALE": "L", "GRAYSCALE_FLOAT16": "F"}


def is_feature_dict(data: object) -> bool:
    """True for coremltools-style input: a dict, or a non-empty list of dicts."""
    if isinstance(data, Mapping):
        return True
    return (isinstance(data, (list, tuple)) and len(data) > 0
            and all(isinstance(d, Mapping) for d in data))


def _as_array(value: Any) -> np.ndarray:
    """coremltools' ``_convert_tensor_to_numpy`` and its fp16 -> fp32 input widening."""
    if hasattr(value, "detach") and hasattr(value, "numpy"):  # a torch tensor
        value = value.detach().cpu().numpy()
    arr = np.asarray(value)
    return arr.astype(np.float32) if arr.dtype == np.float16 else arr


def _image_pixels(name: str, image: ImageInput, value: Any) -> np.ndarray:
    """A PIL image as the (1, C, H, W) float32 pixels Core ML feeds the program."""
    try:
        from PIL import Image
    except ImportError:  # pragma: no cover - Pillow is a dependency
        raise InterpreterError("image inputs need Pillow (pip install pillow)") from None
    if not isinstance(value, Image.Image):
        raise TypeError(f"Image input, '{name}' must be of type PIL.Image.Image in the input dict")
    mode = _PIL_MODES[image.color_layout]
    if value.mode != mode:
        raise TypeError(f"{image.color_layout} image input, '{name}', must be of type "
                        f"PIL.Image.Image with mode=='{mode}'")
    if value.size != (image.width, image.height):
        raise InterpreterError(
            f"image input {name!r} is {image.width}x{image.height} (width x height); got a "
            f"{value.size[0]}x{value.size[1]} image: resize it first"
        )
    if mode == "F":
        # GRAYSCALE_FLOAT16: Core ML takes the values as they are, in fp16
        pixels = np.asarray(value, np.float32).astype(np.float16).astype(np.float32)
        return pixels[None, None]
    arr = np.asarray(value, np.uint8)
    if mode == "L":
        return arr.astype(np.float32)[None, None]
    x = arr.transpose(2, 0, 1).astype(np.float32)
    return np.ascontiguousarray(x[::-1] if image.color_layout == "BGR" else x)[None]


def to_feeds(model: Any, data: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """The program inputs for one coremltools-style input dict."""
    inputs = list(model._inputs)  # program inputs, i.e. the model description's inputs
    for given in data:
        if given not in inputs:
            raise KeyError(f'Provided key "{given}", in the input dict, does not match any of '
                           f"the model input name(s), which are: {set(inputs)}")
    missing = [name for name in inputs if name not in data]
    if missing:
        raise InterpreterError(f"input dict lacks {missing}; the model's inputs are {inputs}")
    images = model.package.image_inputs
    return {
        name: _image_pixels(name, images[name], data[name]) if name in images
        else _as_array(data[name])
        for name in inputs
    }


def _description(model: Any) -> Any:
    spec = model.package.spec
    if spec is None:
        raise InterpreterError("an in-memory program has no model description: use run()")
    return spec.description


def to_features(model: Any, results: Mapping[str, Any]) -> dict[str, Any]:
    """One sample's :meth:`ReferenceModel.run` results, as Core ML returns them."""
    desc = _description(model)
    labels = model.class_labels
    out: dict[str, Any] = {}
    for feature in desc.output:
        value = results[feature.name]
        kind = feature.type.WhichOneof("Type")
        if kind == "dictionaryType":  # the classifier's probabilities, one float per label
            probs = np.asarray(value, np.float64).reshape(-1)
            keys = labels if labels is not None else range(len(probs))
            out[feature.name] = {k: float(p) for k, p in zip(keys, probs, strict=True)}
        elif kind in ("stringType", "int64Type"):
            label = value[0] if isinstance(value, list) else np.asarray(value).reshape(-1)[0]
            out[feature.name] = str(label) if kind == "stringType" else int(label)
        elif kind == "multiArrayType":
            array_type = feature.type.multiArrayType
            dtype = _ARRAY_DTYPES.get(array_type.ArrayDataType.Name(array_type.dataType))
            arr = np.asarray(value)
            out[feature.name] = arr if dtype is None else arr.astype(dtype)
        else:
            out[feature.name] = value
    return out


def predict_features(
    model: Any, data: Mapping[str, Any] | Sequence[Mapping[str, Any]],
    state: dict[str, np.ndarray] | None = None,
) -> dict[str, Any] | list[dict[str, Any]]:
    """coremltools' ``MLModel.predict(data, state)`` on the interpreter (see the module
    docstring); ``state`` (``make_state()``) is for single predictions, as in coremltools."""
    _description(model)
    if isinstance(data, Mapping):
        return to_features(model, model.run(to_feeds(model, data), state=state))
    if state is not None:
        raise InterpreterError("State can only be used for unbatched predictions")
    return [to_features(model, model.run(to_feeds(model, item))) for item in data]
