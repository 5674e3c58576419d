"""Loader: Keras 2 HDF5 files (``save_weights`` or ``model.save``), and the ImageNet downloads.

Tensors are found by layer and weight name (``conv_dw_3/depthwise_kernel:0``), never by
position: Keras 3 loads these files by order, which silently misassigns tensors as soon as a
file holds one layer more or less. A full-model save keeps its weights under
``model_weights/``, with a nested base model as one layer group whose weight names carry the
inner layer (``mobilenet_0.25_128/conv1/kernel:0``); its ``model_config`` attribute is checked
for a supported head. Every expected tensor and shape is checked before anything is used, which
is also how a download is verified (Keras publishes no hashes).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping

import h5py
import numpy as np

from ..catalog import KERAS_BASE_URL, available_keras_variants, keras_variant
from ..errors import WeightsError, one_line
from .download import (
    DEFAULT_TIMEOUT,
    ProgressCallback,
    fetch_cached,
    resolve_base_url,
    resolve_cache_dir,
)
from .keras_common import (
    SUPPORTED_HEAD,
    KerasModel,
    KerasRead,
    base_layer_names,
    build_state,
    check_alpha,
    head_layout,
    infer_keras_alpha,
    keras_loaded,
    parse_model_config,
)
from .layouts import keras_base_layout
from .settings import KERAS_SETTINGS, LoadedWeights, apply_overrides

Found = dict[tuple[str, str], h5py.Dataset]


def _text(value: object) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def _names(attr: object) -> list[str]:
    """An HDF5 string-array attribute as a list of str (Keras wrote bytes or str)."""
    if attr is None:
        return []
    array = np.asarray(attr)
    if array.size == 0 or array.dtype.kind not in "OSU":
        return []
    return [_text(v) for v in array.reshape(-1)]


def _weights_root(f: h5py.File, label: str) -> h5py.Group:
    """The group holding the per-layer groups: the file, or ``model_weights`` of a full save."""
    if "layer_names" in f.attrs:
        return f
    if isinstance(f.get("model_weights"), h5py.Group) and "layer_names" in f["model_weights"].attrs:
        return f["model_weights"]
    if "layers" in f or "vars" in f:
        raise WeightsError(
            f"{label} is a Keras 3 .weights.h5 file (generic layer paths, no layer_names), "
            "which load_weights reads with the Keras 3 loader, not this Keras 2 one"
        )
    raise WeightsError(
        f"{label} is an HDF5 file but not Keras weights (no layer_names attribute); pass a Keras "
        "MobileNet .h5 saved by save_weights/save, or a .safetensors/.pt state dict"
    )


def _collect(root: h5py.Group) -> tuple[Found, list[str]]:
    """Datasets by (inner layer, weight base name), and problems with the file's own index.

    The inner layer is the weight name's second-last part, so a nested base model's
    ``conv1/kernel:0`` is found as ``("conv1", "kernel")`` just like a flat file's. Keras 3's
    legacy ``model.save("x.h5")`` drops the ``:0`` and names a depthwise kernel ``kernel``.
    """
    found: Found = {}
    broken: list[str] = []
    for group_name in _names(root.attrs.get("layer_names")):
        group = root.get(group_name)
        if not isinstance(group, h5py.Group):
            continue  # listed layer without a group: reported as missing if we need it
        if "weight_names" in group.attrs:
            names = _names(group.attrs["weight_names"])
        else:  # not written by Keras' saver, but the datasets may still be there
            names = _dataset_names(group)
        for full in names:
            parts = full.split("/")
            layer = parts[-2] if len(parts) >= 2 else group_name
            base = parts[-1].split(":", 1)[0]
            if base == "kernel" and re.fullmatch(r"conv_dw_\d+", layer):
                base = "depthwise_kernel"  # Keras 3's legacy .h5 names every kernel 'kernel'
            ds = group.get(full)
            if not isinstance(ds, h5py.Dataset):
                broken.append(f"{group_name}/{full} (listed in weight_names, absent)")
            elif (layer, base) in found:
                broken.append(f"{group_name}/{full} (second '{layer}/{base}')")
            else:
                found[(layer, base)] = ds
    return found, broken


def _dataset_names(group: h5py.Group) -> list[str]:
    names: list[str] = []
    group.visititems(lambda n, o: names.append(n) if isinstance(o, h5py.Dataset) else None)
    return names


def _model_config(f: h5py.File, label: str) -> KerasModel | None:
    raw = f.attrs.get("model_config")
    if raw is None:
        return None
    try:
        config = json.loads(_text(raw))
    except ValueError as exc:
        raise WeightsError(f"{label} has an unreadable model_config ({exc})") from None
    return parse_model_config(config, label)


def _head_from_weights(found: Found, label: str) -> str:
    """The classifier layer of a file without a model config: the one non-base weighted layer."""
    base = base_layer_names()
    extra = sorted({layer for layer, _ in found if layer not in base})
    if "conv_preds" in extra:  # include_top=True; any other layer is reported as unexpected
        return "conv_preds"
    if len(extra) == 1:
        return extra[0]
    if not extra:
        raise WeightsError(
            f"{label} has no classifier: an include_top=False ('_no_top') base alone cannot "
            f"classify; {SUPPORTED_HEAD}"
        )
    shapes = ", ".join(
        f"{la} kernel {tuple(found[(la, 'kernel')].shape)}" if (la, "kernel") in found else la
        for la in extra
    )
    raise WeightsError(
        f"{label}: unsupported head after the MobileNet base: {len(extra)} weighted layers "
        f"({shapes}); {SUPPORTED_HEAD}"
    )


def read_keras_h5(
    path: str | os.PathLike[str], alpha: float | None, *, label: str | None = None
) -> KerasRead:
    """Our state dict from a Keras HDF5 file, and the input size and normalisation its config
    records.

    ``alpha`` None takes the file's own width; another explicit alpha is a one-line error
    naming the file's. Raises one WeightsError listing every missing dataset, wrong shape and
    unexpected weight. ``label`` names the file in messages (a URL for downloads).
    """
    label = label or str(path)
    try:
        f = h5py.File(path, "r")
    except (OSError, ValueError) as exc:
        raise WeightsError(
            f"{label} is not a readable HDF5 file (truncated or corrupt?): "
            f"{one_line(exc, 160)}"
        ) from None
    try:
        with f:
            root = _weights_root(f, label)
            model = _model_config(f, label)
            found, broken = _collect(root)
            alpha = check_alpha(
                infer_keras_alpha(lambda la: _shape(found, la)), alpha, label
            )
            head = model.classifier if model is not None else _head_from_weights(found, label)
            kernel = found.get((head, "kernel"))
            layout = keras_base_layout(alpha) + head_layout(
                head, len(kernel.shape) if kernel is not None else 2, alpha
            )
            wanted = {(t.layer, t.weight) for t in layout}
            unexpected = sorted(f"{la}/{w}:0" for la, w in found if (la, w) not in wanted)
            # Keras writes every weight a layer has: a kernel without a bias is use_bias=False
            bias = model.classifier_bias if model is not None else (
                kernel is None or (head, "bias") in found
            )
            state = build_state(
                layout, lambda t: found.get((t.layer, t.weight)), label, alpha,
                unexpected=unexpected, broken=broken, classifier_bias=bias,
            )
            if model is None:
                return state, None, None
            return state, model.res, model.normalization
    except WeightsError:
        raise
    except (OSError, ValueError, KeyError, RuntimeError, TypeError) as exc:  # damaged file
        raise WeightsError(
            f"{label} is damaged (truncated or corrupt HDF5): {one_line(exc, 160)}"
        ) from None


def _shape(found: Found, layer: str) -> tuple[int, ...] | None:
    ds = found.get((layer, "kernel"))
    return tuple(ds.shape) if ds is not None else None


def load_keras_file(
    path: str | os.PathLike[str],
    alpha: float | None,
    *,
    spec: str,
    overrides: Mapping[str, object] | None = None,
) -> LoadedWeights:
    """A local Keras 2 ``.h5`` (any resolution: the conv weights do not depend on it)."""
    return keras_loaded(path, alpha, read_keras_h5, spec=spec, fmt="keras-h5", overrides=overrides)


def load_imagenet(
    alpha: float,
    res: int,
    *,
    overrides: Mapping[str, object] | None = None,
    sha256: str | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    base_url: str | None = None,
    progress: ProgressCallback | None = None,
    timeout: float = DEFAULT_TIMEOUT,
) -> LoadedWeights:
    """The published Keras ImageNet weights for (alpha, res), fetched once into the cache."""
    variant = keras_variant(alpha, res)
    if variant is None:
        raise WeightsError(
            f"no published ImageNet weights for alpha={alpha:g} res={res}: Keras publishes "
            f"{available_keras_variants()}; pick one of those, or use --weights random or "
            "--weights PATH (e.g. a .h5 of another resolution)"
        )
    url = resolve_base_url(base_url, KERAS_BASE_URL) + variant.filename
    dest = resolve_cache_dir(cache_dir) / variant.filename
    fetched = fetch_cached(
        url, dest, lambda p, label: read_keras_h5(p, alpha, label=label)[0],
        sha256=sha256, timeout=timeout, progress=progress,
    )
    settings = apply_overrides(KERAS_SETTINGS, overrides or {})
    return LoadedWeights(
        fetched.value, "imagenet", "imagenet", fetched.sha256, settings,
        format="keras-h5", path=fetched.path, url=url,
    )

