"""Loader: Keras 3 ``.keras`` files (a zip of ``config.json`` and ``model.weights.h5``).

Keras 3's ``saving_lib`` stores each layer's variables under a generic path made of its class
name in snake case, numbered per layer list in the order of ``model.layers``:
``layers/functional/layers/conv2d_3/vars/0`` is the 4th ``Conv2D`` of the nested base model.
So which tensor belongs to which MobileNet layer follows from the layer list in
``config.json`` (the same order), never from the weight file's own (alphabetical) order; then
every shape is verified. Variables within a layer are in creation order: a conv's kernel (then
bias), BatchNormalization's gamma, beta, moving mean, moving variance (gamma and beta only
when ``scale``/``center``), a Dense's kernel and bias. A ``save_weights("x.weights.h5")``
file has the same paths but no config; its layers follow from the fixed order in which Keras'
``MobileNet`` creates them.
"""

from __future__ import annotations

import io
import json
import os
import zipfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import h5py

from ..errors import WeightsError, one_line
from ..model import BLOCKS
from .keras_common import (
    SUPPORTED_HEAD,
    KerasModel,
    KerasRead,
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


@contextmanager
def _damaged_hdf5(what: str) -> Iterator[None]:
    """h5py's errors on a truncated or corrupt file as one ``WeightsError`` line."""
    try:
        yield
    except WeightsError:
        raise
    except (OSError, ValueError, KeyError, RuntimeError, TypeError) as exc:
        raise WeightsError(
            f"{what} (truncated or corrupt HDF5): {one_line(exc, 160)}"
        ) from None

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


Paths = dict[str, tuple[str, tuple[str, ...]]]


def _state(
    f: h5py.File, paths: Paths, classifier: str, bias: bool, alpha: float | None, label: str
) -> dict[str, Any]:
    """Our state dict from Keras 3 variables at ``paths``, after checking every shape."""

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
    kernel = get(KerasTensor(classifier, "kernel", "", ()))
    layout = keras_base_layout(alpha) + head_layout(
        classifier, len(kernel.shape) if kernel is not None else 2, alpha
    )
    used = {f"{paths[t.layer][0]}/vars/{paths[t.layer][1].index(t.weight)}"
            for t in layout if get(t) is not None}
    stored: list[str] = []
    f.visititems(lambda n, o: stored.append(n) if isinstance(o, h5py.Dataset) else None)
    unexpected = sorted(n for n in stored if n not in used)
    return build_state(layout, get, label, alpha, unexpected=unexpected, classifier_bias=bias)


def is_keras3_weights(f: h5py.File) -> bool:
    """A Keras 3 ``save_weights("x.weights.h5")`` file: generic ``layers/...`` groups, no index."""
    return "layer_names" not in f.attrs and isinstance(f.get("layers"), h5py.Group)


def _base_paths(prefix: str) -> Paths:
    """The generic paths of a Keras MobileNet base's weighted layers under ``prefix``.

    ``MobileNet`` creates its layers in one fixed order (conv1, conv1_bn, then per block
    conv_dw_n, its BN, conv_pw_n, its BN), and saving_lib numbers them per class in that
    order, so ``conv2d_<n>`` is ``conv_pw_<n>`` and ``batch_normalization_<2n>`` is its BN.
    """
    def numbered(generic: str, i: int) -> str:
        return f"{prefix}layers/{generic}" + (f"_{i}" if i else "")

    bn = _VARS["BatchNormalization"]
    paths: Paths = {"conv1": (numbered("conv2d", 0), ("kernel",)),
                    "conv1_bn": (numbered("batch_normalization", 0), bn)}
    for n in range(1, len(BLOCKS) + 1):
        paths[f"conv_dw_{n}"] = (numbered("depthwise_conv2d", n - 1), ("depthwise_kernel",))
        paths[f"conv_dw_{n}_bn"] = (numbered("batch_normalization", 2 * n - 1), bn)
        paths[f"conv_pw_{n}"] = (numbered("conv2d", n), ("kernel",))
        paths[f"conv_pw_{n}_bn"] = (numbered("batch_normalization", 2 * n), bn)
    return paths


def _weighted(group: h5py.Group) -> list[str]:
    """Names of the sub-groups of ``group/layers`` that hold variables (or nested layers)."""
    layers = group.get("layers")
    if not isinstance(layers, h5py.Group):
        return []
    return [name for name, g in layers.items() if isinstance(g, h5py.Group) and (
        (isinstance(g.get("vars"), h5py.Group) and len(g["vars"]) > 0)
        or isinstance(g.get("layers"), h5py.Group)
    )]


def _paths_from_weights(f: h5py.File, label: str) -> tuple[Paths, str, bool]:
    """(paths, classifier layer, has bias) of a config-less Keras 3 weights file.

    Supported: a MobileNet base, flat or nested as one model, plus exactly one weighted layer:
    ``include_top=True``'s ``conv_preds`` or one ``Dense``. As for a Keras 2 ``save_weights``
    file, the pooling between them is taken to be the global average pooling of MobileNet V1.
    """
    top = _weighted(f)
    nested = [n for n in top if isinstance(f.get(f"layers/{n}/layers/depthwise_conv2d"),
                                           h5py.Group)]
    if "depthwise_conv2d" in top:
        paths = _base_paths("")
        base = {v[0].rsplit("/", 1)[1] for v in paths.values()}
        head = [n for n in top if n not in base]
    elif len(nested) == 1:
        paths = _base_paths(f"layers/{nested[0]}/")
        inner = set(_weighted(f[f"layers/{nested[0]}"]))
        extra = sorted(inner - {v[0].rsplit("/", 1)[1] for v in paths.values()})
        if extra:
            raise WeightsError(
                f"{label}: the nested MobileNet base holds extra weighted layers "
                f"{', '.join(extra)}; {SUPPORTED_HEAD}"
            )
        head = [n for n in top if n != nested[0]]
    else:
        raise WeightsError(
            f"{label}: a Keras 3 weights file without a MobileNet base (no depthwise_conv2d "
            f"layers, flat or in one nested model; found {', '.join(top) or 'no layers'}); "
            "not a Keras MobileNet V1"
        )
    if len(head) != 1 or not (head[0] == "conv2d_14" or head[0].startswith("dense")):
        raise WeightsError(
            f"{label}: unsupported head after the MobileNet base: weighted layers "
            f"{', '.join(head) or 'none'}; {SUPPORTED_HEAD}"
        )
    where = f"layers/{head[0]}"  # the head is a layer of the outer model
    bias = len(f[f"{where}/vars"]) >= 2  # Keras saves every variable: one means use_bias=False
    paths[head[0]] = (where, ("kernel", "bias") if bias else ("kernel",))
    return paths, head[0], bias


def read_keras3_weights(
    path: str | os.PathLike[str], alpha: float | None, *, label: str | None = None
) -> KerasRead:
    """Our state dict from a Keras 3 ``model.save_weights("x.weights.h5")`` file.

    Its paths are generic and it has no config, so the layers are found by the fixed creation
    order of Keras' MobileNet (see :func:`_base_paths`) and every shape is verified. It
    records no input size or preprocessing.
    """
    label = label or str(path)
    with _damaged_hdf5(f"{label} is a damaged Keras 3 weights file"), h5py.File(path, "r") as f:
        paths, head, bias = _paths_from_weights(f, label)
        state = _state(f, paths, head, bias, alpha, label)
    return state, None, None


def load_keras3_weights_file(
    path: str | os.PathLike[str],
    alpha: float | None,
    *,
    spec: str,
    overrides: Mapping[str, object] | None = None,
) -> LoadedWeights:
    """A local Keras 3 ``.weights.h5`` (MobileNet base + ``conv_preds`` or one Dense)."""
    return keras_loaded(
        path, alpha, read_keras3_weights, spec=spec, fmt="keras3", overrides=overrides
    )


def read_keras3(
    path: str | os.PathLike[str], alpha: float | None, *, label: str | None = None
) -> KerasRead:
    """Our state dict from a ``.keras`` zip, and the input size and normalisation its config
    records."""
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
    with (_damaged_hdf5(f"{label}: model.weights.h5 is damaged"),
          h5py.File(io.BytesIO(weights), "r") as f):
        state = _state(f, paths, model.classifier, model.classifier_bias, alpha, label)
    return state, model.res, model.normalization


def load_keras3_file(
    path: str | os.PathLike[str],
    alpha: float | None,
    *,
    spec: str,
    overrides: Mapping[str, object] | None = None,
) -> LoadedWeights:
    """A local Keras 3 ``.keras`` model (MobileNet base + supported head)."""
    return keras_loaded(path, alpha, read_keras3, spec=spec, fmt="keras3", overrides=overrides)
