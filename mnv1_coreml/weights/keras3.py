"""Loader: Keras 3 ``.keras`` files (a zip of ``config.json`` and ``model.weights.h5``).

Keras 3's ``saving_lib`` stores each layer's variables under a generic path made of its class
name in snake case, numbered per layer list in the order of ``model.layers``:
``layers/functional/layers/conv2d_3/vars/0`` is the 4th ``Conv2D`` of the nested base model.
So which tensor belongs to which MobileNet layer follows from the layer list in
``config.json`` (the same order), never from the weight file's own (alphabetical) order; then
every shape is verified. Variables within a layer are in creation order: a conv's kernel (then
bias), BatchNormalization's gamma, beta, moving mean, moving variance (gamma and beta only
when ``scale``/``center``), a Dense's kernel and bias.
"""

from __future__ import annotations

import io
import json
import os
import zipfile
from collections.abc import Mapping
from typing import Any

import h5py

from ..errors import WeightsError, one_line
from .keras_common import (
    KerasModel,
    build_state,
    check_alpha,
    head_layout,
    infer_keras_alpha,
    keras_loaded,
    parse_model_config,
    to_snake_case,
)
from .layouts import KerasTensor, keras_base_layout
from .settings import LoadedWeights
from .sniff import KERAS3_CONFIG, KERAS3_WEIGHTS

#: Variable names of each layer class, in Keras 3's creation order (before optional ones drop).
_VARS: dict[str, tuple[str, ...]] = {
    "Conv2D": ("kernel", "bias"),
    "DepthwiseConv2D": ("depthwise_kernel", "bias"),
    "Dense": ("kernel", "bias"),
    "BatchNormalization": ("gamma", "beta", "moving_mean", "moving_variance"),
}


def _var_names(layer: Mapping[str, Any]) -> tuple[str, ...]:
    cls, cfg = layer.get("class_name", ""), layer.get("config", {})
    names = _VARS.get(str(cls), ())
    drop = set()
    if cls in ("Conv2D", "DepthwiseConv2D", "Dense") and not cfg.get("use_bias", True):
        drop.add("bias")
    if cls == "BatchNormalization":
        if not cfg.get("scale", True):
            drop.add("gamma")
        if not cfg.get("center", True):
            drop.add("beta")
    return tuple(n for n in names if n not in drop)


def _name_layers(
    layers: list[dict[str, Any]], prefix: str, out: dict[str, tuple[str, tuple[str, ...]]]
) -> list[str]:
    """Record each layer's generic path (numbered per class within this list); return them."""
    used: dict[str, int] = {}
    paths = []
    for layer in layers:
        generic = to_snake_case(str(layer.get("class_name", "")))
        if generic in used:
            used[generic] += 1
            generic = f"{generic}_{used[generic]}"
        else:
            used[generic] = 0
        path = f"{prefix}layers/{generic}"
        out[str(layer.get("config", {}).get("name", ""))] = (path, _var_names(layer))
        paths.append(path)
    return paths


def generic_paths(model: KerasModel) -> dict[str, tuple[str, tuple[str, ...]]]:
    """Layer name -> (its path in ``model.weights.h5``, its variable names), per saving_lib."""
    out: dict[str, tuple[str, tuple[str, ...]]] = {}
    top = _name_layers(model.top, "", out)
    if model.base_index is not None:
        _name_layers(model.base_layers, top[model.base_index] + "/", out)
    return out


def read_keras3(
    path: str | os.PathLike[str], alpha: float | None, *, label: str | None = None
) -> tuple[dict[str, Any], int | None]:
    """Our state dict from a ``.keras`` zip, and the input size its config records."""
    label = label or str(path)
    try:
        with zipfile.ZipFile(path) as z:
            config = json.loads(z.read(KERAS3_CONFIG).decode("utf-8"))
            weights = z.read(KERAS3_WEIGHTS)
    except (OSError, KeyError, ValueError, zipfile.BadZipFile, UnicodeDecodeError) as exc:
        raise WeightsError(
            f"{label} is not a readable Keras 3 .keras file (truncated or corrupt?): "
            f"{one_line(exc, 160)}"
        ) from None
    if not isinstance(config, dict):
        raise WeightsError(f"{label}: config.json does not describe a Keras model")
    model = parse_model_config(config, label)
    paths = generic_paths(model)
    try:
        with h5py.File(io.BytesIO(weights), "r") as f:

            def get(t: KerasTensor) -> h5py.Dataset | None:
                where = paths.get(t.layer)
                if where is None or t.weight not in where[1]:
                    return None
                ds = f.get(f"{where[0]}/vars/{where[1].index(t.weight)}")
                return ds if isinstance(ds, h5py.Dataset) else None

            def shape_of(layer: str) -> tuple[int, ...] | None:
                ds = get(KerasTensor(layer, "kernel", "", ()))
                return tuple(ds.shape) if ds is not None else None

            alpha = check_alpha(infer_keras_alpha(shape_of), alpha, label)
            kernel = get(KerasTensor(model.classifier, "kernel", "", ()))
            layout = keras_base_layout(alpha) + head_layout(
                model.classifier, len(kernel.shape) if kernel is not None else 2, alpha
            )
            used = {f"{paths[t.layer][0]}/vars/{paths[t.layer][1].index(t.weight)}"
                    for t in layout if get(t) is not None}
            stored: list[str] = []
            f.visititems(lambda n, o: stored.append(n) if isinstance(o, h5py.Dataset) else None)
            unexpected = sorted(n for n in stored if n not in used)
            state = build_state(layout, get, label, alpha, unexpected=unexpected)
    except WeightsError:
        raise
    except (OSError, ValueError, KeyError, RuntimeError, TypeError) as exc:
        raise WeightsError(
            f"{label}: model.weights.h5 is damaged (truncated or corrupt HDF5): "
            f"{one_line(exc, 160)}"
        ) from None
    return state, model.res


def load_keras3_file(
    path: str | os.PathLike[str],
    alpha: float | None,
    *,
    spec: str,
    overrides: Mapping[str, object] | None = None,
) -> LoadedWeights:
    """A local Keras 3 ``.keras`` model (MobileNet base + supported head)."""
    return keras_loaded(path, alpha, read_keras3, spec=spec, fmt="keras3", overrides=overrides)
