"""Keras Applications MobileNet weights (legacy HDF5), read with h5py alone.

Tensors are found by layer name and weight name (``conv_dw_3/depthwise_kernel:0``), never by
position: Keras 3 loads these files by order, which silently misassigns tensors as soon as a
file holds one layer more or less. Every expected tensor and shape is checked before anything
is used, which is also how a download is verified (Keras publishes no hashes).

Layout conversions: conv kernels HWIO -> OIHW, depthwise HWC1 -> (C, 1, H, W), and the
``conv_preds`` 1x1 conv (1, 1, Cin, K) + bias becomes the (K, Cin) classifier.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import torch

from ..errors import WeightsError
from ..model import BLOCKS, STEM_CHANNELS, scaled_channels
from .catalog import KERAS_BASE_URL, available_keras_variants, keras_variant
from .core import KERAS_SETTINGS, LoadedWeights, apply_overrides, key_problems
from .download import (
    DEFAULT_TIMEOUT,
    ProgressCallback,
    fetch_cached,
    resolve_base_url,
    resolve_cache_dir,
)

HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
BN_WEIGHTS: dict[str, str] = {
    "gamma": "weight",
    "beta": "bias",
    "moving_mean": "running_mean",
    "moving_variance": "running_var",
}
ANY = -1  # a dimension the file decides (the number of classes)


@dataclass(frozen=True)
class KerasTensor:
    """One expected dataset: Keras layer and weight name, our key, and the Keras shape."""

    layer: str
    weight: str  # base name without the ":0" suffix
    ours: str
    shape: tuple[int, ...]

    @property
    def name(self) -> str:
        return f"{self.layer}/{self.weight}:0"


def keras_layout(alpha: float) -> list[KerasTensor]:
    """Every tensor a Keras MobileNet(alpha, include_top=True) file holds, in our terms."""
    ch = [scaled_channels(STEM_CHANNELS, alpha)] + [scaled_channels(c, alpha) for _, c in BLOCKS]
    out = [KerasTensor("conv1", "kernel", "stem.conv.weight", (3, 3, 3, ch[0]))]
    out += _bn("conv1_bn", "stem.bn", ch[0])
    for i in range(len(BLOCKS)):
        n, cin, cout = i + 1, ch[i], ch[i + 1]
        out.append(
            KerasTensor(f"conv_dw_{n}", "depthwise_kernel", f"blocks.{i}.dw.conv.weight",
                        (3, 3, cin, 1))
        )
        out += _bn(f"conv_dw_{n}_bn", f"blocks.{i}.dw.bn", cin)
        out.append(
            KerasTensor(f"conv_pw_{n}", "kernel", f"blocks.{i}.pw.conv.weight", (1, 1, cin, cout))
        )
        out += _bn(f"conv_pw_{n}_bn", f"blocks.{i}.pw.bn", cout)
    out.append(KerasTensor("conv_preds", "kernel", "classifier.weight", (1, 1, ch[-1], ANY)))
    out.append(KerasTensor("conv_preds", "bias", "classifier.bias", (ANY,)))
    return out


def _bn(layer: str, prefix: str, channels: int) -> list[KerasTensor]:
    return [KerasTensor(layer, k, f"{prefix}.{v}", (channels,)) for k, v in BN_WEIGHTS.items()]


def _to_ours(t: KerasTensor, array: np.ndarray) -> torch.Tensor:
    if t.weight == "depthwise_kernel":
        array = array.transpose(2, 3, 0, 1)  # H W C 1 -> C 1 H W
    elif t.layer == "conv_preds" and t.weight == "kernel":
        array = array[0, 0].T  # 1 1 Cin K -> K Cin
    elif t.weight == "kernel":
        array = array.transpose(3, 2, 0, 1)  # H W I O -> O I H W
    return torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))


def _shape_fits(shape: tuple[int, ...], expected: tuple[int, ...]) -> bool:
    return len(shape) == len(expected) and all(
        e in (ANY, s) for s, e in zip(shape, expected, strict=True)
    )


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
            f"{label} is a Keras 3 .weights.h5 file, which stores weights by position; save them "
            "with tf_keras model.save_weights('x.h5') (legacy HDF5) or use the published "
            "mobilenet_*_tf.h5 files"
        )
    raise WeightsError(
        f"{label} is an HDF5 file but not Keras weights (no layer_names attribute); pass a Keras "
        "MobileNet .h5 saved by save_weights/save, or a .safetensors/.pt state dict"
    )


def _collect(root: h5py.Group) -> tuple[dict[tuple[str, str], h5py.Dataset], list[str]]:
    """Datasets by (layer, weight base name), and problems with the file's own index."""
    found: dict[tuple[str, str], h5py.Dataset] = {}
    broken: list[str] = []
    layers = _names(root.attrs.get("layer_names"))
    for layer in layers:
        group = root.get(layer)
        if not isinstance(group, h5py.Group):
            continue  # listed layer without a group: reported as missing if we need it
        if "weight_names" in group.attrs:
            names = _names(group.attrs["weight_names"])
        else:  # not written by Keras' saver, but the datasets may still be there
            names = _dataset_names(group)
        for full in names:
            base = full.rsplit("/", 1)[-1].split(":", 1)[0]
            ds = group.get(full)
            if not isinstance(ds, h5py.Dataset):
                broken.append(f"{layer}/{full} (listed in weight_names, absent)")
            elif (layer, base) in found:
                broken.append(f"{layer}/{full} (second '{base}' in the layer)")
            else:
                found[(layer, base)] = ds
    return found, broken


def _dataset_names(group: h5py.Group) -> list[str]:
    names: list[str] = []
    group.visititems(lambda n, o: names.append(n) if isinstance(o, h5py.Dataset) else None)
    return names


def _infer_alpha(found: Mapping[tuple[str, str], h5py.Dataset]) -> tuple[float, str] | None:
    """The file's alpha from its channel counts (conv_pw_13 is the most precise), and why."""
    pw13, conv1 = found.get(("conv_pw_13", "kernel")), found.get(("conv1", "kernel"))
    if pw13 is not None and len(pw13.shape) == 4:
        c = int(pw13.shape[3])
        return round(c / BLOCKS[-1][1], 4), f"conv_pw_13 has {c} filters"
    if conv1 is not None and len(conv1.shape) == 4:
        c = int(conv1.shape[3])
        return round(c / STEM_CHANNELS, 4), f"conv1 has {c} filters"
    return None


def read_keras_h5(path: Path, alpha: float, *, label: str | None = None) -> dict[str, torch.Tensor]:
    """Our state dict from a Keras MobileNet HDF5 file, after a complete structure check.

    Raises one WeightsError listing every missing dataset, wrong shape and unexpected weight;
    a file of another alpha gets a message saying which alpha it holds. ``label`` names the file
    in messages (a URL for downloads).
    """
    label = label or str(path)
    try:
        f = h5py.File(path, "r")
    except (OSError, ValueError) as exc:
        raise WeightsError(
            f"{label} is not a readable HDF5 file (truncated or corrupt?): "
            f"{' '.join(str(exc).split())[:160]}"
        ) from None
    try:
        with f:
            root = _weights_root(f, label)
            found, broken = _collect(root)
            layout = keras_layout(alpha)
            _check_alpha(found, layout, alpha, label)
            missing, wrong = [], []
            for t in layout:
                ds = found.get((t.layer, t.weight))
                if ds is None:
                    missing.append(t.name)
                elif not _shape_fits(tuple(ds.shape), t.shape):
                    expected = tuple("K" if d == ANY else d for d in t.shape)
                    wrong.append(f"{t.name} {tuple(ds.shape)} (expected {expected})")
            wanted = {(t.layer, t.weight) for t in layout}
            unexpected = sorted(f"{la}/{w}:0" for la, w in found if (la, w) not in wanted)
            problems = key_problems(missing, unexpected, wrong)
            if missing and all(m.startswith("conv_preds/") for m in missing):
                problems[0] += " (an include_top=False '_no_top' file has no classifier)"
            if broken:
                problems.append(f"broken index {', '.join(broken)}")
            if problems:
                raise WeightsError(
                    f"{label} is not a Keras MobileNet V1 alpha={alpha:g} weights file: "
                    + "; ".join(problems)
                )
            state: dict[str, torch.Tensor] = {}
            for t in layout:
                array = np.asarray(found[(t.layer, t.weight)][()])
                if array.dtype.kind != "f":
                    raise WeightsError(f"{label}: {t.name} holds {array.dtype}, not floats")
                if not np.isfinite(array).all():
                    raise WeightsError(f"{label}: {t.name} contains NaN or infinite values")
                state[t.ours] = _to_ours(t, array)
            k = state["classifier.weight"].shape[0]
            if state["classifier.bias"].shape != (k,):
                raise WeightsError(
                    f"{label}: conv_preds bias has shape {tuple(state['classifier.bias'].shape)},"
                    f" expected ({k},) to match its kernel"
                )
            return state
    except WeightsError:
        raise
    except (OSError, ValueError, KeyError, RuntimeError) as exc:  # h5py reading a damaged file
        raise WeightsError(
            f"{label} is damaged (truncated or corrupt HDF5): {' '.join(str(exc).split())[:160]}"
        ) from None


def _check_alpha(
    found: Mapping[tuple[str, str], h5py.Dataset],
    layout: list[KerasTensor],
    alpha: float,
    label: str,
) -> None:
    """A file of another width fails with the alpha it holds, not with 80 wrong shapes."""
    expected = {(t.layer, t.weight): t.shape for t in layout}
    for key in (("conv1", "kernel"), ("conv_pw_13", "kernel")):
        ds = found.get(key)
        if ds is None or len(ds.shape) != 4:
            continue
        if ds.shape[3] != expected[key][3]:
            inferred = _infer_alpha(found)
            assert inferred is not None
            file_alpha, why = inferred
            raise WeightsError(
                f"{label} holds MobileNet V1 alpha={file_alpha:g} weights ({why}), not "
                f"alpha={alpha:g} (wrong shape {key[0]}/{key[1]}:0 {tuple(ds.shape)}, expected "
                f"{expected[key]}): pass --alpha {file_alpha:g}"
            )


def is_hdf5(path: Path) -> bool:
    """True when the file starts with the HDF5 signature (at 0 or a power-of-two userblock)."""
    try:
        with open(path, "rb") as f:
            offset = 0
            while True:
                f.seek(offset)
                head = f.read(8)
                if head == HDF5_SIGNATURE:
                    return True
                if len(head) < 8 or offset >= 1 << 20:
                    return False
                offset = 512 if offset == 0 else offset * 2
    except OSError:
        return False


def load_keras_file(
    path: Path, alpha: float, *, spec: str, overrides: Mapping[str, object] | None = None
) -> LoadedWeights:
    """A local Keras .h5 (any resolution: the weights do not depend on it)."""
    from .core import file_sha256

    state = read_keras_h5(path, alpha)
    settings = apply_overrides(KERAS_SETTINGS, overrides or {})
    return LoadedWeights(
        state, "file", spec, file_sha256(path), settings, format="keras-h5", path=path
    )


def load_imagenet(
    alpha: float,
    res: int,
    *,
    overrides: Mapping[str, object] | None = None,
    sha256: str | None = None,
    cache_dir: str | Path | None = None,
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
        url, dest, lambda p, label: read_keras_h5(p, alpha, label=label),
        sha256=sha256, timeout=timeout, progress=progress,
    )
    settings = apply_overrides(KERAS_SETTINGS, overrides or {})
    return LoadedWeights(
        fetched.value, "imagenet", "imagenet", fetched.sha256, settings,
        format="keras-h5", path=fetched.path, url=url,
    )
