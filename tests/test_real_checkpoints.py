"""Checkpoint formats as the real libraries write them, beyond the shared fixtures.

The two files in tests/data were written by Keras 3 itself (see tests/data/PROVENANCE.md):
a ``.keras`` Sequential with ``Rescaling`` in front and a ``Dense(use_bias=False)`` head, and
a ``model.save_weights("x.weights.h5")`` file, which has generic paths and no config. The other
formats (Keras 3's legacy ``.h5`` naming, timm's ``mobilenetv1_100h``) are rewritten from files
whose logits we know, so each test checks logits or the exact refusal.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from mnv1_coreml.errors import WeightsError
from mnv1_coreml.images import INCEPTION, Normalization
from mnv1_coreml.model import MobileNetConfig, MobileNetV1
from mnv1_coreml.weights import LoadedWeights, build_model, load_weights, model_size
from mnv1_coreml.weights.keras_common import parse_model_config
from mnv1_coreml.weights.layouts import ours_to_timm
from tests.conftest import assert_one_line

DATA = Path(__file__).resolve().parent / "data"
KERAS2_SMALL = DATA / "keras_mobilenet_0.25_128.h5"
TOLERANCE = 1e-4


def expected(weights_file: Path) -> tuple[np.ndarray, np.ndarray]:
    name = weights_file.name.split(".weights.h5")[0].removesuffix(weights_file.suffix)
    with np.load(weights_file.with_name(f"{name}_expected.npz"), allow_pickle=False) as data:
        return data["images"], data["logits"]


def our_logits(path: Path, images: np.ndarray) -> tuple[np.ndarray, LoadedWeights]:
    """Our model's logits for ``images`` (uint8 RGB), loaded from ``path`` as a user would."""
    weights = load_weights(str(path))
    alpha, res = model_size(weights, None, images.shape[1])
    model = build_model(alpha, res, weights)
    with torch.no_grad():
        return model(weights.settings.normalization.apply(images)).numpy(), weights


def test_keras3_rescaling_and_dense_without_bias() -> None:
    """Rescaling(1/255) + RandomFlip in front, Dense(3, use_bias=False, softmax) head."""
    path = DATA / "keras3_rescale_nobias_0.25_128.keras"
    images, library = expected(path)
    got, weights = our_logits(path, images)
    assert got.shape == (4, 3)
    assert np.abs(got - library).max() <= TOLERANCE
    assert weights.settings.normalization == Normalization((0.0,) * 3, (1.0,) * 3)
    assert weights.res == 128
    assert not weights.state_dict["classifier.bias"].any()


def test_keras3_save_weights_file() -> None:
    """``model.save_weights('x.weights.h5')``: generic paths, no config, found by layer order."""
    path = DATA / "keras3_weights_0.25_128.weights.h5"
    images, library = expected(path)
    got, weights = our_logits(path, images)
    assert got.shape == (4, 4)
    assert np.abs(got - library).max() <= TOLERANCE
    assert weights.format == "keras3" and weights.settings.normalization == INCEPTION
    assert weights.res is None  # the file records no input size


def test_keras3_weights_file_with_a_hidden_dense_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "hidden.weights.h5"
    shutil.copyfile(DATA / "keras3_weights_0.25_128.weights.h5", path)
    with h5py.File(path, "r+") as f:
        f["layers/dense_1/vars/0"] = np.zeros((4, 2), np.float32)
    with pytest.raises(WeightsError) as exc:
        load_weights(str(path))
    assert_one_line(exc, "unsupported head", "dense, dense_1")


def _keras3_legacy_naming(src: Path, dst: Path, *, drop_bias: bool = False) -> Path:
    """``src`` (a Keras 2 save_weights file) as Keras 3's ``model.save('x.h5')`` names it:
    no ``:0``, and a depthwise kernel called ``kernel``; optionally without conv_preds' bias."""
    with h5py.File(src, "r") as f, h5py.File(dst, "w") as out:
        out.attrs["layer_names"] = f.attrs["layer_names"]
        out.attrs["keras_version"] = "3.15.1"
        for layer in f.attrs["layer_names"]:
            layer = layer.decode() if isinstance(layer, bytes) else layer
            group = out.create_group(layer)
            names = []
            for full in f[layer].attrs["weight_names"]:
                full = full.decode() if isinstance(full, bytes) else full
                if drop_bias and full == "conv_preds/bias:0":
                    continue
                new = full.split(":")[0].replace("depthwise_kernel", "kernel")
                group[new] = f[layer][full][()]
                names.append(new)
            group.attrs["weight_names"] = names
    return dst


@pytest.mark.parametrize("drop_bias", [False, True])
def test_keras3_legacy_h5(tmp_path: Path, drop_bias: bool) -> None:
    """Keras 3's legacy HDF5 names; a 1x1 head whose bias Keras did not write gets zeros."""
    path = _keras3_legacy_naming(KERAS2_SMALL, tmp_path / "legacy.h5", drop_bias=drop_bias)
    images, library = expected(KERAS2_SMALL)
    got, _ = our_logits(path, images)
    if drop_bias:
        with h5py.File(KERAS2_SMALL, "r") as f:
            library = library - f["conv_preds/conv_preds/bias:0"][()]
    assert np.abs(got - library).max() <= TOLERANCE


def test_timm_head_conv_variant_is_refused(tmp_path: Path) -> None:
    """timm's mobilenetv1_100h has conv_head + bn2 before the classifier: not the paper's."""
    state = ours_to_timm(MobileNetV1(MobileNetConfig(num_classes=5)).state_dict())
    state["conv_head.weight"] = torch.zeros(1024, 1024, 1, 1)
    state.update({f"bn2.{k}": torch.ones(1024) for k in
                  ("weight", "bias", "running_mean", "running_var")})
    path = tmp_path / "mobilenetv1_100h.safetensors"
    save_file(state, str(path))
    with pytest.raises(WeightsError) as exc:
        load_weights(str(path))
    assert_one_line(exc, "mobilenetv1_100h", "conv_head (1024, 1024, 1, 1)",
                    "not MobileNet V1 as the paper")
    other = ours_to_timm(MobileNetV1(MobileNetConfig(num_classes=5)).state_dict())
    other["blocks.1.0.conv_pwl.weight"] = torch.zeros(24, 96, 1, 1)  # a MobileNet V2 block
    save_file(other, str(path))
    with pytest.raises(WeightsError) as exc:
        load_weights(str(path))
    assert_one_line(exc, "not timm's MobileNet V1", "blocks.1.0.conv_pwl.weight")


def _config(before: list[dict]) -> dict:
    base = [{"class_name": "Conv2D", "config": {"name": n}} for n in ("conv1", "conv_pw_13")]
    return {"class_name": "Sequential", "config": {"layers": [
        *before,
        {"class_name": "Functional", "config": {"name": "mobilenet", "layers": base}},
        {"class_name": "GlobalAveragePooling2D", "config": {"name": "gap"}},
        {"class_name": "Dense", "config": {"name": "d", "units": 3, "use_bias": False}},
    ]}}


def test_input_layers_become_normalization() -> None:
    """Normalization(mean, variance) then Rescaling compose into our mean/std on 0..1 pixels."""
    model = parse_model_config(_config([
        {"class_name": "Normalization",
         "config": {"name": "n", "mean": [127.5, 127.5, 127.5], "variance": [4.0, 4.0, 4.0]}},
        {"class_name": "Rescaling", "config": {"name": "r", "scale": 2.0, "offset": 0.0}},
    ]), "cfg")
    assert model.normalization is not None and not model.classifier_bias
    # x = ((p - 127.5) / 2) * 2 = p - 127.5 = (p/255 - 0.5) / (1/255)
    assert np.allclose(model.normalization.mean, 0.5) and np.allclose(
        model.normalization.std, 1 / 255)
    with pytest.raises(WeightsError) as exc:
        parse_model_config(_config([{"class_name": "Resizing", "config": {"name": "rs"}}]), "cfg")
    assert_one_line(exc, "unsupported layer Resizing 'rs' before the MobileNet base")


def test_max_pooling_is_refused_with_reason() -> None:
    config = _config([])
    config["config"]["layers"][2]["class_name"] = "GlobalMaxPooling2D"
    with pytest.raises(WeightsError) as exc:
        parse_model_config(config, "cfg")
    assert_one_line(exc, "GlobalMaxPooling2D", "averages its last feature map")
