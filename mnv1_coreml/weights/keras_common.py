"""Leaf: what both Keras loaders share: the model config's structure, and building our tensors.

A Keras file describes its model in a JSON config (Keras 2 ``model_config`` attribute, Keras 3
``config.json``). Supported: a MobileNet V1 base (``conv1``, ``conv_dw_<n>``, ...), flat or
nested as one layer, followed by global average pooling (a layer, or the base's
``pooling="avg"``), optional Dropout/Reshape/Flatten, one classifier (``Dense(N)``, or the 1x1
``conv_preds`` of ``include_top=True``) with a linear or softmax activation, and optionally a
final softmax. Our model outputs the classifier's logits; the Core ML model applies softmax.
``Rescaling``/``Normalization(mean, variance)`` layers before the base become the input
normalisation, augmentation layers there are skipped, and a ``Dense(use_bias=False)`` head
gets a zero bias.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import WeightsError
from ..hashing import file_sha256
from ..images import Normalization
from ..model import BLOCKS, MobileNetConfig, alpha_from_channels, key_problems
from .layouts import (
    KerasTensor,
    keras_base_layout,
    keras_dense_layout,
    keras_to_ours,
    keras_top_layout,
    shape_fits,
    shown,
)
from .settings import KERAS_SETTINGS, LoadedWeights, apply_overrides

SUPPORTED_HEAD = (
    "supported: a MobileNet base (include_top=False) + global average pooling (a layer or "
    "pooling='avg') + optional Dropout + one Dense(N) with linear or softmax activation, or "
    "include_top=True (conv_preds)"
)
_POOLS = {"GlobalAveragePooling2D"}
_PASS_BEFORE = {"Dropout", "Reshape", "Flatten", "InputLayer"}
_SOFTMAX_AFTER = {"Activation", "Softmax", "Reshape"}
_NESTED = {"Functional", "Model", "Sequential"}
#: Layers that are the identity at inference (data augmentation), allowed before the base.
_IDENTITY_BEFORE = {
    "InputLayer", "RandomFlip", "RandomRotation", "RandomZoom", "RandomTranslation",
    "RandomContrast", "RandomBrightness", "RandomCrop", "Dropout", "GaussianNoise",
}


#: What a Keras reader returns: our state dict, the input size and the input normalisation
#: its config records (None when it records none).
KerasRead = tuple[dict[str, torch.Tensor], int | None, Normalization | None]


def to_snake_case(name: str) -> str:
    """Keras 3's ``naming.to_snake_case``: the generic path name of a layer class."""
    name = re.sub(r"\W+", "", name)
    name = re.sub("(.)([A-Z][a-z]+)", r"\1_\2", name)
    return re.sub("([a-z])([A-Z])", r"\1_\2", name).lower()


def base_layer_names() -> set[str]:
    """Names of the weighted layers of a Keras MobileNet base."""
    return {t.layer for t in keras_base_layout(1.0)}


def is_base_layer(name: str) -> bool:
    """A layer of Keras' MobileNet base, weighted or not (``conv_pad_2``, ``conv1_relu``, ...)."""
    return bool(re.fullmatch(r"conv1(_bn|_relu|_pad)?|conv_(dw|pw|pad)_\d+(_bn|_relu)?", name))


@dataclass(frozen=True)
class KerasModel:
    """What the config says: where the base is, the classifier layer, and the input size."""

    top: list[dict[str, Any]]  # the model's own layer configs, in model.layers order
    base_index: int | None  # index in ``top`` of a nested base model; None: the base is flat
    base_layers: list[dict[str, Any]]  # the nested base's layer configs (``top`` when flat)
    classifier: str  # layer name of the Dense or conv_preds
    classifier_class: str
    res: int | None
    #: Input normalisation from ``Rescaling`` layers in front of the base (raw 0-255 pixels
    #: in), or None when the model has none (the user applies ``preprocess_input``).
    normalization: Normalization | None = None
    #: False for a ``Dense(use_bias=False)`` head: its bias is zero.
    classifier_bias: bool = True


def _name(layer: Mapping[str, Any]) -> str:
    return str(layer.get("config", {}).get("name") or layer.get("name") or "")


def _layers(model: Mapping[str, Any]) -> list[dict[str, Any]]:
    layers = model.get("config", {}).get("layers")
    if not isinstance(layers, list):
        raise TypeError("model config without a layer list")
    return [entry for entry in layers if isinstance(entry, dict)]


def _describe(layer: Mapping[str, Any]) -> str:
    cls, cfg = layer.get("class_name"), layer.get("config", {})
    extra = ""
    if cls == "Dense":
        extra = f"({cfg.get('units')}, activation={cfg.get('activation')})"
    elif cls == "Activation":
        extra = f"({cfg.get('activation')})"
    return f"{cls}{extra} '{_name(layer)}'"


def _why(layer: Mapping[str, Any]) -> str:
    """Why a layer we refuse is not part of MobileNet V1, where that is not obvious."""
    if layer.get("class_name") in ("GlobalMaxPooling2D", "MaxPooling2D"):
        return " (MobileNet V1 averages its last feature map; max pooling is another network)"
    return ""


def _input_res(layers: list[dict[str, Any]]) -> int | None:
    for layer in layers:
        cfg = layer.get("config", {})
        shape = cfg.get("batch_shape") or cfg.get("batch_input_shape")
        if isinstance(shape, list) and len(shape) == 4:
            h, w = shape[1], shape[2]
            if isinstance(h, int) and h == w:
                return h
    return None


def parse_model_config(config: Mapping[str, Any], label: str) -> KerasModel:
    """The supported structure of a Keras model config, or a one-line WeightsError why not."""
    try:
        return _parse(config, label)
    except (TypeError, AttributeError, KeyError) as exc:
        raise WeightsError(
            f"{label} has a Keras model config this tool cannot read ({exc})"
        ) from None


def _parse(config: Mapping[str, Any], label: str) -> KerasModel:
    top = _layers(config)
    names = [_name(la) for la in top]
    if "conv1" in names and "conv_pw_13" in names:  # the base's layers are the model's own
        base_index: int | None = None
        base_layers = top
        last = max(i for i, n in enumerate(names) if is_base_layer(n))
        head = top[last + 1:]
        before = top[:min(i for i, n in enumerate(names) if is_base_layer(n))]
        pooled = False
    else:
        nested = [
            (i, la) for i, la in enumerate(top)
            if la.get("class_name") in _NESTED
            and {"conv1", "conv_pw_13"} <= {_name(s) for s in _layers(la)}
        ]
        if len(nested) != 1:
            found = ", ".join(_describe(la) for la in top if la.get("class_name") != "InputLayer")
            raise WeightsError(
                f"{label}: no Keras MobileNet base (layers conv1 ... conv_pw_13) found; the model "
                f"has {found or 'no layers'}; {SUPPORTED_HEAD}"
            )
        base_index, base = nested[0]
        base_layers = _layers(base)
        inside = [la for la in base_layers if not is_base_layer(_name(la))
                  and la.get("class_name") != "InputLayer"]
        pooled = False
        for la in inside:
            if la.get("class_name") in _POOLS and not pooled:
                pooled = True
            else:
                raise WeightsError(
                    f"{label}: the MobileNet base ends in {_describe(la)}{_why(la)}; "
                    f"{SUPPORTED_HEAD}"
                )
        head = top[base_index + 1:]
        before = top[:base_index]
    name, cls = _classifier(head, pooled, label)
    use_bias = next(
        (la.get("config", {}).get("use_bias", True) for la in head if _name(la) == name), True
    )
    return KerasModel(top, base_index, base_layers, name, cls,
                      res=_input_res(top) or _input_res(base_layers),
                      normalization=_input_normalization(before, label),
                      classifier_bias=bool(use_bias))


def _channels(value: object, label: str, layer: Mapping[str, Any]) -> np.ndarray:
    """A Rescaling scale/offset (a number or one per RGB channel) as 3 floats."""
    array = np.asarray(value, dtype=np.float64).reshape(-1)
    if array.size not in (1, 3):
        raise WeightsError(f"{label}: {_describe(layer)} before the MobileNet base has "
                           f"{array.size} values; expected 1 or 3 (one per RGB channel)")
    return np.broadcast_to(array, (3,)).astype(np.float64)


def _input_normalization(before: list[dict[str, Any]], label: str) -> Normalization | None:
    """What ``Rescaling``/``Normalization`` layers in front of the base do to raw pixels, as
    our Normalization.

    ``x = scale * p + offset`` (composed over several layers) is ``(p/255 - mean) / std`` with
    ``std = 1 / (255 scale)`` and ``mean = -offset * std``. Augmentation layers are the
    identity at inference; any other layer there (an adapted Normalization keeps its statistics
    in weights, not the config) is refused, since we could not reproduce it.
    """
    scale, offset, seen = np.ones(3), np.zeros(3), False
    for la in before:
        cls, cfg = la.get("class_name"), la.get("config", {})
        if cls in _IDENTITY_BEFORE:
            continue
        if cls == "Rescaling":
            s = _channels(cfg.get("scale", 1.0), label, la)
            o = _channels(cfg.get("offset", 0.0), label, la)
        elif cls == "Normalization" and cfg.get("mean") is not None and (
            cfg.get("variance") is not None and not cfg.get("invert", False)
        ):  # Keras: (x - mean) / max(sqrt(variance), epsilon 1e-7)
            sd = np.maximum(np.sqrt(_channels(cfg["variance"], label, la)), 1e-7)
            s, o = 1.0 / sd, -_channels(cfg["mean"], label, la) / sd
        else:
            raise WeightsError(
                f"{label}: unsupported layer {_describe(la)} before the MobileNet base; only "
                "Rescaling, Normalization(mean=..., variance=...) and augmentation layers "
                "(RandomFlip, ...) may come before it"
            )
        scale, offset, seen = scale * s, offset * s + o, True
    if not seen:
        return None
    if not (scale > 0).all():
        raise WeightsError(f"{label}: the Rescaling before the MobileNet base has scale "
                           f"{scale.tolist()}; only a positive scale maps to an image input")
    std = 1.0 / (255.0 * scale)
    mean = -offset * std
    return Normalization(tuple(float(v) for v in mean), tuple(float(v) for v in std))


def _classifier(head: list[dict[str, Any]], pooled: bool, label: str) -> tuple[str, str]:
    """(name, class) of the one classifier layer after checking the head's layer sequence."""
    what = ", ".join(_describe(la) + _why(la) for la in head) or "nothing"
    unsupported = f"{label}: unsupported head after the MobileNet base: {what}; {SUPPORTED_HEAD}"
    classifier: dict[str, Any] | None = None
    for la in head:
        cls, cfg = la.get("class_name"), la.get("config", {})
        if classifier is None:
            if cls in _POOLS and not pooled:
                pooled = True
            elif cls in _PASS_BEFORE and (pooled or cls in ("Dropout", "InputLayer")):
                continue
            elif cls == "Dense" or (cls == "Conv2D" and list(cfg.get("kernel_size", [])) == [1, 1]):
                if not pooled or cfg.get("activation") not in (None, "linear", "softmax"):
                    raise WeightsError(unsupported)
                classifier = la
            else:
                raise WeightsError(unsupported)
        elif cls not in _SOFTMAX_AFTER or (
            cls == "Activation" and cfg.get("activation") not in ("softmax", "linear")
        ):
            raise WeightsError(unsupported)
    if classifier is None:
        raise WeightsError(
            f"{label}: no classifier after the MobileNet base (found {what}); an include_top=False "
            f"base alone cannot classify; {SUPPORTED_HEAD}"
        )
    return _name(classifier), str(classifier.get("class_name"))


def head_layout(layer: str, ndim: int, alpha: float) -> list[KerasTensor]:
    """The classifier tensors: a Dense kernel (2-D) or a 1x1 conv kernel (4-D), plus bias."""
    if ndim == 4:
        return [KerasTensor(layer, t.weight, t.ours, t.shape) for t in keras_top_layout(alpha)]
    return keras_dense_layout(layer, alpha)


def infer_keras_alpha(shape_of: Callable[[str], tuple[int, ...] | None]) -> float | None:
    """The file's alpha from the filters of ``conv1`` and every ``conv_pw_<n>`` kernel.

    When they fit no single alpha, ``conv_pw_13``'s decides, and the complete shape check
    later names every layer that disagrees.
    """
    shapes = [shape_of("conv1")] + [shape_of(f"conv_pw_{n}") for n in range(1, len(BLOCKS) + 1)]
    if all(s is not None and len(s) == 4 for s in shapes):
        exact = alpha_from_channels([int(s[3]) for s in shapes if s is not None])
        if exact is not None:
            return exact
    last = shapes[-1]  # inconsistent widths: the last layer's, so the shape check names the rest
    if last is not None and len(last) == 4 and last[3] > 0:
        return round(int(last[3]) / BLOCKS[-1][1], 4)
    return None


def check_alpha(held: float | None, alpha: float | None, label: str) -> float:
    """The alpha to build: the file's; a different explicit ``alpha`` is a one-line error."""
    if held is None:
        if alpha is None:
            raise WeightsError(
                f"{label}: cannot tell the width multiplier (conv1 or a conv_pw_<n> kernel is "
                "missing or not 4-D); not a complete Keras MobileNet V1"
            )
        return alpha
    if alpha is not None and not math.isclose(held, alpha, rel_tol=0, abs_tol=1e-9) and (
        MobileNetConfig.channel_counts(held) != MobileNetConfig.channel_counts(alpha)
    ):
        c = MobileNetConfig.channel_counts(held)[-1]
        raise WeightsError(
            f"{label} holds MobileNet V1 alpha={held:g} weights (conv_pw_13 has {c} filters), not "
            f"alpha={alpha:g}: pass --alpha {held:g}"
        )
    return held if alpha is None else alpha


def build_state(
    layout: list[KerasTensor],
    get: Callable[[KerasTensor], Any],
    label: str,
    alpha: float,
    *,
    unexpected: Sequence[str] = (),
    broken: Sequence[str] = (),
    classifier_bias: bool = True,
) -> dict[str, torch.Tensor]:
    """Our state dict from ``get(tensor) -> array-like | None``, after checking every shape.

    Raises one WeightsError listing every missing tensor, wrong shape and unexpected weight.
    ``classifier_bias`` False (a ``Dense(use_bias=False)`` head) expects no classifier bias
    and uses zeros, which computes exactly what Keras does.
    """
    if not classifier_bias:
        layout = [t for t in layout if t.ours != "classifier.bias"]
    missing, wrong = [], []
    arrays: dict[str, Any] = {}
    for t in layout:
        ds = get(t)
        if ds is None:
            missing.append(t.name)
        elif not shape_fits(tuple(ds.shape), t.shape):
            wrong.append(f"{t.name} {tuple(ds.shape)} (expected {shown(t.shape)})")
        else:
            arrays[t.ours] = (t, ds)
    problems = key_problems(missing, list(unexpected), wrong)
    if broken:
        problems.append(f"broken index {', '.join(broken)}")
    if problems:
        raise WeightsError(
            f"{label} is not a Keras MobileNet V1 alpha={alpha:g} model: " + "; ".join(problems)
        )
    state: dict[str, torch.Tensor] = {}
    for ours, (t, ds) in arrays.items():
        array = np.asarray(ds[()])
        if array.dtype.kind != "f":
            raise WeightsError(f"{label}: {t.name} holds {array.dtype}, not floats")
        if not np.isfinite(array).all():
            raise WeightsError(f"{label}: {t.name} contains NaN or infinite values")
        state[ours] = keras_to_ours(t, array)
    k = state["classifier.weight"].shape[0]
    if not classifier_bias:
        state["classifier.bias"] = torch.zeros(k, dtype=torch.float32)
    if tuple(state["classifier.bias"].shape) != (k,):
        raise WeightsError(
            f"{label}: the classifier bias has shape {tuple(state['classifier.bias'].shape)}, "
            f"expected ({k},) to match its kernel"
        )
    return state



def keras_loaded(
    path: str | os.PathLike[str],
    alpha: float | None,
    read: Callable[[Path, float | None], KerasRead],
    *,
    spec: str,
    fmt: str,
    overrides: Mapping[str, object] | None = None,
) -> LoadedWeights:
    """A local Keras file read by ``read`` (Keras 2 ``.h5`` or Keras 3 ``.keras``), with the
    settings every Keras MobileNet was trained with, unless overridden."""
    path = Path(path)
    state, res, normalization = read(path, alpha)
    settings = KERAS_SETTINGS
    if normalization is not None:  # the model rescales raw pixels itself
        settings = replace(settings, normalization=normalization)
    settings = apply_overrides(settings, overrides or {})
    return LoadedWeights(
        state, "file", spec, file_sha256(path), settings, format=fmt, path=path, res=res
    )
