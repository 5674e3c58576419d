"""Weight importers against ground truth written by Keras and timm themselves, and their errors."""

from __future__ import annotations

import shutil
import sys
import types
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from mnv1_coreml.catalog import KERAS_VARIANTS, published_accuracy
from mnv1_coreml.errors import WeightsError
from mnv1_coreml.hashing import file_sha256
from mnv1_coreml.images import IMAGENET, INCEPTION
from mnv1_coreml.model import MobileNetConfig, MobileNetV1, weight_keys
from mnv1_coreml.weights import (
    KERAS_SETTINGS,
    TIMM_SETTINGS,
    ArchSettings,
    LoadedWeights,
    build_model,
    load_weights,
    save_state_dict_file,
)
from mnv1_coreml.weights.layouts import ours_to_timm, timm_key_map
from mnv1_coreml.weights.random_init import random_weights
from mnv1_coreml.weights.timm import TIMM_FILENAME, TIMM_REPO
from tests.conftest import assert_one_line

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "tests" / "data"
SHARED_FIXTURES = REPO.parent / "shared" / "fixtures"
KERAS_SMALL = DATA / "keras_mobilenet_0.25_128.h5"
TOLERANCE = 1e-4


def fixture_path(directory: Path, name: str) -> Path:
    path = directory / name
    if not path.exists():
        pytest.skip(f"{path} not present (../shared is only beside the repo in CI and dev)")
    return path


def logits(weights: LoadedWeights, alpha: float, res: int, images: np.ndarray) -> np.ndarray:
    model = build_model(alpha, res, weights)
    with torch.no_grad():
        return model(weights.settings.normalization.apply(images)).numpy()


# --- ground truth -------------------------------------------------------------------------------

SLOW = pytest.mark.slow  # 1.0-224
CASES = [
    # name, directory, weights file, alpha, res, format, settings
    pytest.param(
        "keras_mobilenet_0.25_128",
        DATA,
        "keras_mobilenet_0.25_128.h5",
        0.25,
        128,
        "keras-h5",
        KERAS_SETTINGS,
        id="keras_mobilenet_0.25_128",
    ),
    pytest.param(
        "keras_mobilenet_1.0_224",
        SHARED_FIXTURES,
        "keras_mobilenet_1.0_224.h5",
        1.0,
        224,
        "keras-h5",
        KERAS_SETTINGS,
        id="keras_mobilenet_1.0_224",
        marks=SLOW,
    ),
    pytest.param(
        "timm_mobilenetv1_100",
        SHARED_FIXTURES,
        "timm_mobilenetv1_100.safetensors",
        1.0,
        224,
        "timm",
        TIMM_SETTINGS,
        id="timm_mobilenetv1_100",
        marks=SLOW,
    ),
    # fine-tuned classifiers with their own classes (issue 10)
    pytest.param(
        "keras_transfer_0.25_128",
        SHARED_FIXTURES,
        "keras_transfer_0.25_128.h5",
        0.25,
        128,
        "keras-h5",
        KERAS_SETTINGS,
        id="keras_transfer_0.25_128",
    ),
    pytest.param(
        "keras3_transfer_0.25_128",
        SHARED_FIXTURES,
        "keras3_transfer_0.25_128.keras",
        0.25,
        128,
        "keras3",
        KERAS_SETTINGS,
        id="keras3_transfer_0.25_128",
    ),
    pytest.param(
        "timm_mobilenetv1_100_nc10",
        SHARED_FIXTURES,
        "timm_mobilenetv1_100_nc10.safetensors",
        1.0,
        224,
        "timm",
        TIMM_SETTINGS,
        id="timm_mobilenetv1_100_nc10",
        marks=SLOW,
    ),
]


@pytest.mark.parametrize(
    ("name", "directory", "filename", "alpha", "res", "fmt", "settings"), CASES
)
def test_logits_match_the_library(
    name: str, directory: Path, filename: str, alpha: float, res: int, fmt: str,
    settings: ArchSettings,
) -> None:
    path = fixture_path(directory, filename)
    expected = np.load(fixture_path(directory, f"{name}_expected.npz"))
    weights = load_weights(str(path), alpha, res)
    assert (weights.source, weights.format, weights.settings) == ("file", fmt, settings)
    assert weights.settings.normalization == INCEPTION  # Keras x/127.5-1 and timm mean=std=0.5
    assert weights.sha256 == file_sha256(path)
    assert weights.num_classes == expected["logits"].shape[1]
    assert weights.alpha == alpha
    got = logits(weights, alpha, res, expected["images"])
    err = float(np.abs(got - expected["logits"]).max())
    print(f"{name}: max abs logit error {err:.3g}")
    assert err <= TOLERANCE, err
    # the check can fail: the same images in BGR order miss by far more than the tolerance
    swapped = logits(weights, alpha, res, np.ascontiguousarray(expected["images"][..., ::-1]))
    assert np.abs(swapped - expected["logits"]).max() > 100 * TOLERANCE


@pytest.mark.parametrize(
    "override",
    [{"padding": "torch"}, {"bn_eps": 1e-5}, {"normalization": IMAGENET},
     {"activation": "relu"}],
    ids=["padding", "bn_eps", "normalization", "activation"],
)
def test_every_setting_matters(override: dict[str, object]) -> None:
    """The ground-truth test can fail: each wrong setting moves the logits past 10x 1e-4.

    BN epsilon is the subtlest (1e-3 vs 1e-5 moves the small fixture's logits by about 2e-3).
    """
    expected = np.load(DATA / "keras_mobilenet_0.25_128_expected.npz")
    weights = load_weights(str(KERAS_SMALL), 0.25, 128, overrides=override)
    err = np.abs(logits(weights, 0.25, 128, expected["images"]) - expected["logits"]).max()
    assert err > 10 * TOLERANCE, (override, err)


def rewrite_h5(src: Path, dst: Path, edit) -> Path:  # noqa: ANN001 - a callback on the copy
    shutil.copyfile(src, dst)
    with h5py.File(dst, "r+") as f:
        edit(f)
    return dst


def test_keras_mapping_is_by_name_not_by_order(tmp_path: Path) -> None:
    """Reversed layer order and reversed weight order inside every layer: same logits."""

    def shuffle(f: h5py.File) -> None:
        f.attrs["layer_names"] = f.attrs["layer_names"][::-1]
        for layer in f.attrs["layer_names"]:
            g = f[layer]
            names = g.attrs["weight_names"]
            if len(names):
                g.attrs["weight_names"] = names[::-1]

    path = rewrite_h5(KERAS_SMALL, tmp_path / "shuffled.h5", shuffle)
    expected = np.load(DATA / "keras_mobilenet_0.25_128_expected.npz")
    got = logits(load_weights(str(path), 0.25, 128), 0.25, 128, expected["images"])
    assert np.abs(got - expected["logits"]).max() <= TOLERANCE


def test_keras_full_model_file_and_bytes_attributes(tmp_path: Path) -> None:
    """model.save() puts the layers under model_weights; old files store names as bytes."""
    path = tmp_path / "full_model.bin"  # the format is sniffed, not taken from the suffix
    with h5py.File(KERAS_SMALL, "r") as src, h5py.File(path, "w") as dst:
        root = dst.create_group("model_weights")
        for key in src:
            src.copy(src[key], root, name=key)
        root.attrs["layer_names"] = np.array([n.encode() for n in src.attrs["layer_names"]])
        for name in src.attrs["layer_names"]:
            wn = src[name].attrs["weight_names"]
            root[name].attrs["weight_names"] = np.array([w.encode() for w in wn], dtype="S")
    expected = np.load(DATA / "keras_mobilenet_0.25_128_expected.npz")
    weights = load_weights(str(path), 0.25, 128)
    assert weights.format == "keras-h5"
    assert np.abs(logits(weights, 0.25, 128, expected["images"]) - expected["logits"]).max() \
        <= TOLERANCE


# --- error reporting ----------------------------------------------------------------------------


def test_keras_missing_unexpected_and_wrong_shape_in_one_error(tmp_path: Path) -> None:
    def damage(f: h5py.File) -> None:
        del f["conv_pw_7"]
        f.attrs["layer_names"] = [n for n in f.attrs["layer_names"] if n != "conv_pw_7"]
        del f["conv_dw_5_bn/conv_dw_5_bn/gamma:0"]
        f["conv_dw_5_bn"].attrs["weight_names"] = [
            n for n in f["conv_dw_5_bn"].attrs["weight_names"] if "gamma" not in n
        ]
        del f["conv_dw_3/conv_dw_3/depthwise_kernel:0"]
        f.create_dataset("conv_dw_3/conv_dw_3/depthwise_kernel:0", data=np.zeros((5, 5, 32, 1)))
        g = f.create_group("extra_dense")
        g.create_dataset("extra_dense/kernel:0", data=np.zeros((4, 4), np.float32))
        g.attrs["weight_names"] = ["extra_dense/kernel:0"]
        f.attrs["layer_names"] = [*f.attrs["layer_names"], "extra_dense"]

    path = rewrite_h5(KERAS_SMALL, tmp_path / "damaged.h5", damage)
    with pytest.raises(WeightsError) as exc:
        load_weights(str(path), 0.25, 128)
    assert_one_line(
        exc, str(path), "missing conv_dw_5_bn/gamma:0, conv_pw_7/kernel:0",
        "unexpected extra_dense/kernel:0",
        "wrong shape conv_dw_3/depthwise_kernel:0 (5, 5, 32, 1) (expected (3, 3, 32, 1))",
    )


def test_keras_file_without_classifier(tmp_path: Path) -> None:
    def no_top(f: h5py.File) -> None:
        del f["conv_preds"]
        f.attrs["layer_names"] = [n for n in f.attrs["layer_names"] if n != "conv_preds"]

    path = rewrite_h5(KERAS_SMALL, tmp_path / "no_top.h5", no_top)
    with pytest.raises(WeightsError) as exc:
        load_weights(str(path), 0.25, 128)
    assert_one_line(exc, "has no classifier", "_no_top", "Dense(N)")


def test_keras_file_of_another_alpha() -> None:
    with pytest.raises(WeightsError) as exc:
        load_weights(str(KERAS_SMALL), 0.5, 128)
    assert_one_line(exc, "holds MobileNet V1 alpha=0.25", "not alpha=0.5", "--alpha 0.25")


def test_state_dict_of_another_alpha(tmp_path: Path) -> None:
    model = MobileNetV1(MobileNetConfig(alpha=0.75, res=128))
    path = tmp_path / "a075.safetensors"
    save_file({k: v for k, v in model.state_dict().items() if k in weight_keys(model)}, str(path))
    weights = load_weights(str(path), 1.0, 128)
    with pytest.raises(WeightsError) as exc:
        build_model(1.0, 128, weights)
    assert_one_line(exc, "alpha=0.75", "--alpha 0.75", "blocks.12.pw.conv.weight has 768 filters")


def test_state_dict_missing_unexpected_and_wrong_shape_in_one_error(tmp_path: Path) -> None:
    model = MobileNetV1(MobileNetConfig(alpha=0.25, res=128))
    state = {k: v for k, v in model.state_dict().items() if k in weight_keys(model)}
    del state["blocks.3.dw.bn.running_mean"], state["blocks.7.pw.conv.weight"]
    state["head.extra.weight"] = torch.zeros(3)
    state["blocks.2.dw.conv.weight"] = torch.zeros(32, 1, 5, 5)
    state["classifier.bias"] = torch.zeros(10)
    path = tmp_path / "bad.pt"
    torch.save(state, path)
    weights = load_weights(str(path), 0.25, 128)
    with pytest.raises(WeightsError) as exc:
        build_model(0.25, 128, weights)
    assert_one_line(
        exc, "missing blocks.3.dw.bn.running_mean, blocks.7.pw.conv.weight",
        "unexpected head.extra.weight",
        "blocks.2.dw.conv.weight (32, 1, 5, 5) (expected (32, 1, 3, 3))",
        "classifier.bias (10,) (expected (1000,))",
    )


@pytest.mark.parametrize("fraction", [0.01, 0.5, 0.99])
def test_truncated_h5(tmp_path: Path, fraction: float) -> None:
    data = KERAS_SMALL.read_bytes()
    path = tmp_path / "truncated.h5"
    path.write_bytes(data[: int(len(data) * fraction)])
    with pytest.raises(WeightsError) as exc:
        load_weights(str(path), 0.25, 128)
    assert_one_line(exc, str(path))


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
@pytest.mark.parametrize("fraction", [0.0001, 0.5, 0.999])
def test_truncated_state_dict_files(tmp_path: Path, suffix: str, fraction: float) -> None:
    model = MobileNetV1(MobileNetConfig(alpha=0.25, res=128))
    whole = tmp_path / f"whole{suffix}"
    save_state_dict_file(whole, model.state_dict())
    data = whole.read_bytes()
    path = tmp_path / f"truncated{suffix}"
    path.write_bytes(data[: max(int(len(data) * fraction), 1)])
    with pytest.raises(WeightsError) as exc:
        load_weights(str(path), 0.25, 128)
    assert_one_line(exc, str(path))


@pytest.mark.parametrize("suffix", [".h5", ".safetensors", ".pt", ".pth", ".bin", ""])
def test_garbage_bytes(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"garbage{suffix}"
    path.write_bytes(np.random.default_rng(0).bytes(4096))
    with pytest.raises(WeightsError) as exc:
        load_weights(str(path), 0.25, 128)
    assert_one_line(exc, str(path))


def test_damaged_dataset_inside_a_complete_h5(tmp_path: Path) -> None:
    """Bytes of a weight overwritten in place: HDF5 opens, the value check catches NaNs."""
    def poison(f: h5py.File) -> None:
        f["conv_pw_4/conv_pw_4/kernel:0"][0, 0, 0, 0] = np.nan

    path = rewrite_h5(KERAS_SMALL, tmp_path / "nan.h5", poison)
    with pytest.raises(WeightsError) as exc:
        load_weights(str(path), 0.25, 128)
    assert_one_line(exc, "conv_pw_4/kernel:0", "NaN")


def test_hdf5_that_is_not_keras(tmp_path: Path) -> None:
    plain = tmp_path / "plain.h5"
    with h5py.File(plain, "w") as f:
        f["x"] = np.zeros(3)
    with pytest.raises(WeightsError) as exc:
        load_weights(str(plain), 0.25, 128)
    assert_one_line(exc, "not Keras weights")
    keras3 = tmp_path / "model.weights.h5"
    with h5py.File(keras3, "w") as f:
        f.create_group("layers/conv1/vars")["0"] = np.zeros((3, 3, 3, 8), np.float32)
    with pytest.raises(WeightsError) as exc:
        load_weights(str(keras3), 0.25, 128)
    assert_one_line(exc, "Keras 3 weights file without a MobileNet base", "conv1")


def test_pickled_objects_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "model.pt"
    torch.save(MobileNetV1(MobileNetConfig(alpha=0.25, res=128)), path)  # a whole module
    with pytest.raises(WeightsError) as exc:
        load_weights(str(path), 0.25, 128)
    assert_one_line(exc, str(path), "mnv1_coreml.model.MobileNetV1", "save model.state_dict()")


def test_timm_training_checkpoint_prefers_ema_like_timm(tmp_path: Path) -> None:
    """What timm's train.py writes (CheckpointSaver): the weights under ``state_dict`` and
    ``state_dict_ema``, its argparse.Namespace, optimizer state, epoch and metric."""
    import argparse

    live = random_weights(0.25, 128, seed=1, settings=TIMM_SETTINGS, num_classes=7).state_dict
    ema = random_weights(0.25, 128, seed=2, settings=TIMM_SETTINGS, num_classes=7).state_dict
    fc = torch.nn.Linear(2, 2)
    optimizer = torch.optim.SGD(fc.parameters(), lr=0.1, momentum=0.9)
    fc(torch.ones(1, 2)).sum().backward()
    optimizer.step()
    checkpoint = {
        "epoch": 3, "arch": "mobilenetv1_100", "version": 2, "metric": 71.2,
        "args": argparse.Namespace(model="mobilenetv1_100", num_classes=7, lr=0.1),
        "optimizer": optimizer.state_dict(),
        "state_dict": ours_to_timm(live), "state_dict_ema": ours_to_timm(ema),
    }
    path = tmp_path / "model_best.pth.tar"
    torch.save(checkpoint, path)
    weights = load_weights(str(path), 0.25, 128)
    assert (weights.format, weights.num_classes, weights.settings) == ("timm", 7, TIMM_SETTINGS)
    assert torch.equal(weights.state_dict["classifier.weight"], ema["classifier.weight"])
    del checkpoint["state_dict_ema"]
    torch.save(checkpoint, path)
    weights = load_weights(str(path), 0.25, 128)
    assert torch.equal(weights.state_dict["classifier.weight"], live["classifier.weight"])


@pytest.mark.parametrize("prefix", ["module.", "_orig_mod.", "module._orig_mod."])
def test_wrapper_prefixes_are_removed(tmp_path: Path, prefix: str) -> None:
    truth = random_weights(0.25, 128, seed=4, settings=KERAS_SETTINGS).state_dict
    path = tmp_path / "ddp.pth"
    torch.save({"model": {prefix + k: v for k, v in truth.items()}}, path)
    weights = load_weights(str(path), 0.25, 128)
    assert weights.format == "mnv1-coreml"
    assert set(weights.state_dict) == set(truth)
    assert all(torch.equal(weights.state_dict[k], v) for k, v in truth.items())


def test_foreign_key_names_are_named(tmp_path: Path) -> None:
    path = tmp_path / "resnet.pth"
    torch.save({"conv1.weight": torch.zeros(8, 3, 7, 7), "fc.weight": torch.zeros(10, 8)}, path)
    with pytest.raises(WeightsError) as exc:
        load_weights(str(path), 0.25, 128)
    assert_one_line(exc, "neither this tool's key names", "conv1.weight, fc.weight")


def test_other_pickled_objects_in_a_checkpoint_are_still_refused(tmp_path: Path) -> None:
    path = tmp_path / "ckpt.pth"
    torch.save({"state_dict": {}, "scheduler": types.SimpleNamespace(step=1)}, path)
    with pytest.raises(WeightsError) as exc:
        load_weights(str(path), 0.25, 128)
    assert_one_line(exc, "types.SimpleNamespace", "never loaded")


def test_missing_file_and_directory(tmp_path: Path) -> None:
    with pytest.raises(WeightsError) as exc:
        load_weights(str(tmp_path / "nope.h5"), 0.25, 128)
    assert_one_line(exc, "does not exist", "imagenet")
    with pytest.raises(WeightsError) as exc:
        load_weights(str(tmp_path), 0.25, 128)
    assert_one_line(exc, "is a directory")


@pytest.mark.parametrize(("alpha", "res"), [(0.35, 224), (1.0, 256), (2.0, 224), (0.5, 96)])
def test_unknown_imagenet_variant(alpha: float, res: int, tmp_path: Path) -> None:
    with pytest.raises(WeightsError) as exc:
        load_weights("imagenet", alpha, res, cache_dir=tmp_path, base_url="http://127.0.0.1:9/")
    assert_one_line(
        exc, f"alpha={alpha:g} res={res}", "alpha 0.25, 0.5, 0.75, 1 at res 128, 160, 192, 224",
        "--weights random", "--weights PATH",
    )
    assert list(tmp_path.iterdir()) == []


# --- our layout, overrides, pins ----------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".safetensors", ".pt", ".pth"])
def test_our_layout_round_trip(tmp_path: Path, suffix: str) -> None:
    keras = load_weights(str(KERAS_SMALL), 0.25, 128)
    path = tmp_path / f"ours{suffix}"
    save_state_dict_file(path, keras.state_dict, keras.settings)
    again = load_weights(str(path), 0.25, 128)
    assert (again.format, again.settings, again.sha256) == (
        "mnv1-coreml", keras.settings, file_sha256(path)
    )
    assert again.state_dict.keys() == keras.state_dict.keys()
    for k, v in keras.state_dict.items():
        assert torch.equal(again.state_dict[k], v), k
    images = np.load(DATA / "keras_mobilenet_0.25_128_expected.npz")["images"]
    np.testing.assert_array_equal(
        logits(again, 0.25, 128, images), logits(keras, 0.25, 128, images)
    )


def test_plain_state_dict_gets_our_defaults_and_overrides(tmp_path: Path) -> None:
    model = MobileNetV1(MobileNetConfig(alpha=0.25, res=128))
    path = tmp_path / "plain.pth"
    torch.save(model.state_dict(), path)  # with num_batches_tracked, no settings
    plain = load_weights(str(path), 0.25, 128)
    assert plain.settings == ArchSettings() and plain.format == "mnv1-coreml"
    build_model(0.25, 128, plain)
    forced = load_weights(
        str(path), 0.25, 128,
        overrides={"padding": "tf", "activation": "relu", "bn_eps": 1e-3,
                   "normalization_parts": (None, (0.25, 0.25, 0.25))},
    )
    assert forced.settings == ArchSettings(
        "tf", "relu", 1e-3, type(IMAGENET)(IMAGENET.mean, (0.25, 0.25, 0.25))
    )
    with pytest.raises(WeightsError) as exc:
        load_weights(str(path), 0.25, 128, overrides={"padding": "same"})
    assert_one_line(exc, "padding override")


def test_sha256_pin(tmp_path: Path) -> None:
    digest = file_sha256(KERAS_SMALL)
    assert load_weights(str(KERAS_SMALL), 0.25, 128, sha256=digest.upper()).sha256 == digest
    with pytest.raises(WeightsError) as exc:
        load_weights(str(KERAS_SMALL), 0.25, 128, sha256="0" * 64)
    assert_one_line(exc, "SHA-256 mismatch", digest, "0" * 64)
    with pytest.raises(WeightsError) as exc:
        load_weights(str(KERAS_SMALL), 0.25, 128, sha256="abc")
    assert_one_line(exc, "64 hex digits")


# --- timm ---------------------------------------------------------------------------------------


def test_timm_key_map_covers_the_model_by_name() -> None:
    ours = weight_keys(MobileNetV1(MobileNetConfig(alpha=1.0, res=224)))
    mapping = timm_key_map()
    assert sorted(mapping.values()) == sorted(ours)
    assert mapping["blocks.3.5.conv_pw.weight"] == "blocks.10.pw.conv.weight"
    assert mapping["blocks.4.1.bn1.running_var"] == "blocks.12.dw.bn.running_var"
    assert mapping["bn1.weight"] == "stem.bn.weight"


def test_timm_without_huggingface_hub(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)  # import raises ImportError
    with pytest.raises(WeightsError) as exc:
        load_weights("timm", 1.0, 224)
    assert_one_line(exc, 'pip install "mnv1-coreml[hub]"', "model.safetensors", "--weights PATH")


def test_timm_only_for_alpha_1() -> None:
    with pytest.raises(WeightsError) as exc:
        load_weights("timm", 0.5, 224)
    assert_one_line(exc, "alpha 1.0 only", "--weights imagenet")


def fake_hub(monkeypatch: pytest.MonkeyPatch, download) -> list[dict[str, str]]:  # noqa: ANN001
    calls: list[dict[str, str]] = []

    def hf_hub_download(repo_id: str, filename: str, **kw: object) -> str:
        calls.append({"repo_id": repo_id, "filename": filename})
        return download()

    module = types.ModuleType("huggingface_hub")
    module.hf_hub_download = hf_hub_download  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "huggingface_hub", module)
    return calls


def test_timm_via_the_hub(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    model = MobileNetV1(MobileNetConfig(alpha=1.0, res=224))
    for p in model.parameters():
        torch.nn.init.normal_(p)
    state = {k: v for k, v in model.state_dict().items() if k in weight_keys(model)}
    path = tmp_path / "model.safetensors"
    save_file(ours_to_timm(state), str(path))
    calls = fake_hub(monkeypatch, lambda: str(path))
    weights = load_weights("timm", 1.0, 160)  # res is free for timm
    assert calls == [{"repo_id": TIMM_REPO, "filename": TIMM_FILENAME}]
    assert (weights.source, weights.format, weights.settings) == ("timm", "timm", TIMM_SETTINGS)
    assert weights.sha256 == file_sha256(path)
    for k, v in state.items():
        assert torch.equal(weights.state_dict[k], v), k
    build_model(1.0, 160, weights)


def test_timm_hub_failure_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    def offline() -> str:
        raise OSError("We could not connect to 'https://huggingface.co'.\nCheck your connection.")

    fake_hub(monkeypatch, offline)
    with pytest.raises(WeightsError) as exc:
        load_weights("timm", 1.0, 224)
    assert_one_line(exc, TIMM_REPO, "could not connect", "--weights PATH")


# --- catalog ------------------------------------------------------------------------------------


def test_keras_variants() -> None:
    assert len(KERAS_VARIANTS) == 16
    assert len({v.filename for v in KERAS_VARIANTS}) == 16
    alpha, res, filename, url = KERAS_VARIANTS[0]
    assert (alpha, res, filename) == (1.0, 224, "mobilenet_1_0_224_tf.h5")
    assert url == (
        "https://storage.googleapis.com/tensorflow/keras-applications/mobilenet/"
        "mobilenet_1_0_224_tf.h5"
    )
    names = {(v.alpha, v.res): v.filename for v in KERAS_VARIANTS}
    assert names[(0.25, 128)] == "mobilenet_2_5_128_tf.h5"
    assert names[(0.75, 192)] == "mobilenet_7_5_192_tf.h5"
    assert names[(0.5, 160)] == "mobilenet_5_0_160_tf.h5"


def test_published_accuracy() -> None:
    top = published_accuracy(1.0, 224)
    assert top is not None
    assert (top["paper_top1"], top["keras_top1"], top["slim2018_top5"]) == (70.6, 70.424, 89.9)
    small = published_accuracy(0.25, 128)
    assert small is not None
    assert small["paper_top1"] is None and small["keras_top1"] is None
    assert small["slim2017_top1"] == 41.3
    assert all(published_accuracy(v.alpha, v.res) is not None for v in KERAS_VARIANTS)
    assert published_accuracy(0.35, 224) is None and published_accuracy(1.0, 256) is None


def test_random_weights_do_not_depend_on_thread_count() -> None:
    """Goldens are found by the weights' SHA-256: a 1-thread zoo worker must make the same."""
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        two = load_weights("random", 0.25, 128).sha256
        torch.set_num_threads(1)
        one = load_weights("random", 0.25, 128).sha256
    finally:
        torch.set_num_threads(threads)
    assert one == two
    manifest = (Path(__file__).parent.parent / "golden" / "random-0_0.25_128" / "manifest.json")
    assert f'"weights_sha256": "{one}"' in manifest.read_text()
