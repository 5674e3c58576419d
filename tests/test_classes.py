"""Your own classes (issue 10): labels files, and N-class checkpoints in every supported layout.

The Keras files here are written with h5py/zipfile in the exact layouts Keras 2 and Keras 3
write (checked against the library-written fixtures in ``test_weights.py``), at a width,
resolution and class count the fixtures do not have, so the format handling is shown to be
general rather than fitted to three files.
"""

from __future__ import annotations

import io
import json
import re
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from mnv1_coreml.errors import UserError, WeightsError
from mnv1_coreml.labels import (
    imagenet_labels,
    labels_sha256,
    read_labels,
    resolve_labels,
    write_labels,
)
from mnv1_coreml.model import BLOCKS, MobileNetConfig, build_model
from mnv1_coreml.summary import summarize
from mnv1_coreml.weights import KERAS_SETTINGS, TIMM_SETTINGS, load_weights
from mnv1_coreml.weights.layouts import ours_to_timm
from mnv1_coreml.weights.random_init import random_weights
from tests.conftest import assert_one_line, shared_fixture

ALPHA, RES, N = 0.5, 160, 7
UNICODE_LABELS = ["Löwchen", "柴犬", "crème brûlée", "ß", "🐕 dog", "Ωmega", "naïve café"]


# --- labels ------------------------------------------------------------------------------------


def test_text_labels_unicode_kept_exactly(tmp_path: Path) -> None:
    path = tmp_path / "labels.txt"
    body = "\n".join(f"{x} \t" for x in UNICODE_LABELS) + "\n\n"
    path.write_bytes(b"\xef\xbb\xbf" + body.replace("\n", "\r\n").encode("utf-8"))
    assert read_labels(path) == tuple(UNICODE_LABELS)
    assert read_labels(str(path)) == tuple(UNICODE_LABELS)


def test_json_labels_and_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "labels.json"
    path.write_text(json.dumps(UNICODE_LABELS, ensure_ascii=False), encoding="utf-8")
    assert read_labels(path) == tuple(UNICODE_LABELS)
    written = tmp_path / "out.txt"
    write_labels(written, UNICODE_LABELS)
    assert read_labels(written) == tuple(UNICODE_LABELS)
    assert labels_sha256(UNICODE_LABELS) == labels_sha256(read_labels(written))
    assert labels_sha256(UNICODE_LABELS) != labels_sha256(UNICODE_LABELS[::-1])


def test_imagenet_labels_only_for_1000_classes() -> None:
    assert resolve_labels(None, 1000) == imagenet_labels()
    with pytest.raises(UserError) as exc:
        resolve_labels(None, 7)
    assert_one_line(exc, "7 classes", "--labels")


@pytest.mark.parametrize(
    ("content", "needles"),
    [
        ("cat\ndog\ncat\n", ("'cat' appears twice", "labels 1 and 3")),
        ("cat\n\ndog\n", ("line 2 is empty",)),
        ("cat\n   \ndog\n", ("line 2 is empty",)),
        ('["cat", ""]', ("label 2 is empty",)),
        ('["cat", 3]', ("label 2 is int",)),
        ('{"0": "cat"}', ("JSON dict", "list of strings")),
        ("", ("holds no labels",)),
        ('["a", "a"]', ("'a' appears twice",)),
    ],
    ids=["duplicate", "empty-line", "blank-line", "json-empty", "json-int", "json-dict", "empty",
         "json-dup"],
)
def test_bad_labels_are_one_line(tmp_path: Path, content: str, needles: tuple[str, ...]) -> None:
    path = tmp_path / ("labels.json" if content.startswith("{") else "labels.txt")
    path.write_text(content, encoding="utf-8")
    with pytest.raises(UserError) as exc:
        read_labels(path)
    assert_one_line(exc, str(path), *needles)


def test_unreadable_labels_files(tmp_path: Path) -> None:
    cases: dict[str, Callable[[Path], object]] = {
        "does not exist": lambda p: None,
        "is a directory": lambda p: p.mkdir(),
        "not UTF-8": lambda p: p.write_bytes("Löwchen\n".encode("latin-1")),
        "binary": lambda p: p.write_bytes(b"PK\x03\x04\x00\x00junk"),
        "not valid JSON": lambda p: p.write_text('["a", ', encoding="utf-8"),
    }
    for i, (needle, make) in enumerate(cases.items()):
        path = tmp_path / f"labels{i}{'.json' if 'JSON' in needle else '.txt'}"
        make(path)
        with pytest.raises(UserError) as exc:
            read_labels(path)
        assert_one_line(exc, str(path), needle)


def test_label_count_mismatch_names_both_numbers(tmp_path: Path) -> None:
    path = tmp_path / "labels.txt"
    write_labels(path, ["a", "b", "c", "d", "e"])
    with pytest.raises(UserError) as exc:
        resolve_labels(path, 3)
    assert_one_line(exc, "has 5 labels", "3 classes")
    assert resolve_labels(["x", "y", "z"], 3) == ("x", "y", "z")


# --- Keras writers (the layouts Keras 2 and 3 write) -------------------------------------------


def keras_base_layers() -> Iterator[tuple[str, str]]:
    """(layer name, class) of keras.applications.MobileNet's base, in model.layers order."""
    yield "conv1", "Conv2D"
    yield "conv1_bn", "BatchNormalization"
    yield "conv1_relu", "ReLU"
    for n, (stride, _) in enumerate(BLOCKS, start=1):
        if stride == 2:
            yield f"conv_pad_{n}", "ZeroPadding2D"
        yield f"conv_dw_{n}", "DepthwiseConv2D"
        yield f"conv_dw_{n}_bn", "BatchNormalization"
        yield f"conv_dw_{n}_relu", "ReLU"
        yield f"conv_pw_{n}", "Conv2D"
        yield f"conv_pw_{n}_bn", "BatchNormalization"
        yield f"conv_pw_{n}_relu", "ReLU"


def keras_arrays(state: dict[str, torch.Tensor]) -> dict[str, list[tuple[str, np.ndarray]]]:
    """Our state dict as Keras layers' (weight name, array) lists, in Keras' variable order."""

    def a(key: str) -> np.ndarray:
        return state[key].numpy()

    def bn(prefix: str) -> list[tuple[str, np.ndarray]]:
        return [("gamma", a(f"{prefix}.weight")), ("beta", a(f"{prefix}.bias")),
                ("moving_mean", a(f"{prefix}.running_mean")),
                ("moving_variance", a(f"{prefix}.running_var"))]

    out = {"conv1": [("kernel", a("stem.conv.weight").transpose(2, 3, 1, 0))],
           "conv1_bn": bn("stem.bn")}
    for i in range(len(BLOCKS)):
        n = i + 1
        out[f"conv_dw_{n}"] = [
            ("depthwise_kernel", a(f"blocks.{i}.dw.conv.weight").transpose(2, 3, 0, 1))
        ]
        out[f"conv_dw_{n}_bn"] = bn(f"blocks.{i}.dw.bn")
        out[f"conv_pw_{n}"] = [("kernel", a(f"blocks.{i}.pw.conv.weight").transpose(2, 3, 1, 0))]
        out[f"conv_pw_{n}_bn"] = bn(f"blocks.{i}.pw.bn")
    return out


def layer_config(name: str, cls: str, **extra: Any) -> dict[str, Any]:
    config: dict[str, Any] = {"name": name, "trainable": True, **extra}
    if cls == "Conv2D":
        config.setdefault("kernel_size", [3, 3] if name == "conv1" else [1, 1])
        config.setdefault("use_bias", False)
        config.setdefault("activation", "linear")
    if cls == "DepthwiseConv2D":
        config.update(kernel_size=[3, 3], use_bias=False)
    return {"module": "keras.layers", "class_name": cls, "config": config, "name": name}


def input_layer(name: str, res: int, keras3: bool) -> dict[str, Any]:
    key = "batch_shape" if keras3 else "batch_input_shape"
    return layer_config(name, "InputLayer", **{key: [None, res, res, 3]})


def base_config(res: int, keras3: bool, pooling: bool) -> dict[str, Any]:
    layers = [input_layer("input_1", res, keras3)]
    layers += [layer_config(n, c) for n, c in keras_base_layers()]
    if pooling:
        layers.append(layer_config("global_average_pooling2d", "GlobalAveragePooling2D"))
    return {"module": "keras.src.models.functional", "class_name": "Functional",
            "config": {"name": f"mobilenet_{ALPHA:.2f}_{res}", "layers": layers},
            "name": f"mobilenet_{ALPHA:.2f}_{res}"}


def dense(name: str, units: int, activation: str = "softmax") -> dict[str, Any]:
    return layer_config(name, "Dense", units=units, activation=activation, use_bias=True)


def transfer_config(
    res: int, keras3: bool, head: list[dict[str, Any]], pooling: bool = False,
    cls: str = "Sequential",
) -> dict[str, Any]:
    layers = [input_layer("inputs", res, keras3), base_config(res, keras3, pooling), *head]
    return {"class_name": cls, "config": {"name": "model", "layers": layers}}


def standard_head(n: int) -> list[dict[str, Any]]:
    return [layer_config("global_average_pooling2d", "GlobalAveragePooling2D"),
            layer_config("dropout", "Dropout", rate=0.2), dense("predictions", n)]


def fc_arrays(state: dict[str, torch.Tensor]) -> list[tuple[str, np.ndarray]]:
    return [("kernel", state["classifier.weight"].numpy().T.copy()),
            ("bias", state["classifier.bias"].numpy())]


def write_keras2(
    path: Path, state: dict[str, torch.Tensor], config: dict[str, Any] | None,
    base: str = "mobilenet_0.50_160", head: str = "predictions",
    extra: dict[str, list[tuple[str, np.ndarray]]] | None = None,
) -> Path:
    """Keras 2 HDF5: ``model.save`` (with ``config``: under model_weights/) or save_weights."""
    layers = keras_arrays(state)
    top = {head: fc_arrays(state), **(extra or {})}
    with h5py.File(path, "w") as f:
        f.attrs["backend"] = "tensorflow"
        f.attrs["keras_version"] = "2.21.0"
        root: h5py.Group = f
        if config is not None:
            f.attrs["model_config"] = json.dumps(config)
            root = f.create_group("model_weights")
        names = [base, "global_average_pooling2d", "dropout", *top]
        root.attrs["layer_names"] = np.array([n.encode() for n in names])
        g = root.create_group(base)
        weight_names = []
        for layer, weights in reversed(list(layers.items())):  # storage order is irrelevant
            for w, array in weights:
                g.create_dataset(f"{layer}/{w}:0", data=array)
        for layer, weights in layers.items():
            weight_names += [f"{layer}/{w}:0".encode() for w, _ in weights]
        g.attrs["weight_names"] = np.array(weight_names)
        for name in ("global_average_pooling2d", "dropout"):
            root.create_group(name).attrs["weight_names"] = np.array([], dtype="S1")
        for name, weights in top.items():
            h = root.create_group(name)
            for w, array in weights:
                h.create_dataset(f"{name}/{w}:0", data=array)
            h.attrs["weight_names"] = np.array([f"{name}/{w}:0".encode() for w, _ in weights])
    return path


def snake(cls: str) -> str:
    s = re.sub("(.)([A-Z][a-z]+)", r"\1_\2", cls)
    return re.sub("([a-z])([A-Z])", r"\1_\2", s).lower()


def keras3_paths(layers: list[dict[str, Any]], prefix: str) -> dict[str, str]:
    """Layer name -> the generic path Keras 3's saving_lib gives it in its layer list."""
    counts: dict[str, int] = {}
    out = {}
    for layer in layers:
        base = snake(layer["class_name"])
        k = counts.get(base, -1) + 1
        counts[base] = k
        out[layer["config"]["name"]] = f"{prefix}layers/{base}" + (f"_{k}" if k else "")
    return out


def write_keras3(path: Path, state: dict[str, torch.Tensor], config: dict[str, Any],
                 head: str = "predictions", conv_head: bool = False) -> Path:
    """A Keras 3 ``.keras`` zip: config.json, metadata.json and model.weights.h5."""
    top = config["config"]["layers"]
    paths = keras3_paths(top, "")
    nested = next((la for la in top if la["class_name"] == "Functional"), None)
    if nested is not None:
        prefix = paths[nested["config"]["name"]] + "/"
        paths.update(keras3_paths(nested["config"]["layers"], prefix))
    fc = fc_arrays(state)
    if conv_head:  # include_top=True: conv_preds, a 1x1 conv with a bias
        layer_of = {la["config"]["name"]: la for la in top}
        layer_of[head]["config"]["use_bias"] = True
        fc = [("kernel", fc[0][1][None, None]), fc[1]]
    arrays = {**keras_arrays(state), head: fc}
    buf = io.BytesIO()
    with h5py.File(buf, "w") as f:
        for layer in sorted(set(arrays) & set(paths), reverse=True):
            for i, (_, array) in enumerate(arrays[layer]):
                f.create_dataset(f"{paths[layer]}/vars/{i}", data=array)
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("metadata.json", json.dumps({"keras_version": "3.15.1"}))
        z.writestr("config.json", json.dumps(config))
        z.writestr("model.weights.h5", buf.getvalue())
    return path


@pytest.fixture(scope="module")
def truth() -> dict[str, torch.Tensor]:
    """Seeded alpha 0.5, 7-class weights: what every synthetic file below must give back."""
    return random_weights(ALPHA, RES, seed=3, settings=KERAS_SETTINGS, num_classes=N).state_dict


def assert_same(weights_state: dict[str, torch.Tensor], truth: dict[str, torch.Tensor]) -> None:
    assert set(weights_state) == set(truth)
    for key, value in truth.items():
        assert torch.equal(weights_state[key], value), key


def assert_runs(weights: Any, res: int) -> None:
    """The built model has N outputs and computes with every tensor."""
    model = build_model(ALPHA, res, weights)
    assert model.cfg.num_classes == N and model.cfg.alpha == ALPHA
    x = torch.rand(2, 3, res, res)
    with torch.no_grad():
        assert model(x).shape == (2, N)


# --- N-class checkpoints in every layout -------------------------------------------------------


@pytest.mark.parametrize("saved", ["model.save", "save_weights"])
def test_keras2_transfer_model(tmp_path: Path, truth: dict[str, torch.Tensor], saved: str) -> None:
    config = transfer_config(RES, False, standard_head(N)) if saved == "model.save" else None
    path = write_keras2(tmp_path / "x.h5", truth, config)
    weights = load_weights(path)  # alpha and class count from the file, res from its config
    assert (weights.format, weights.alpha, weights.num_classes) == ("keras-h5", ALPHA, N)
    assert weights.res == (RES if config else None)
    assert weights.settings == KERAS_SETTINGS
    assert_same(weights.state_dict, truth)
    assert_runs(weights, RES)


@pytest.mark.parametrize(
    "variant", ["sequential", "functional-pooling-avg", "flat", "softmax", "include-top"]
)
def test_keras3_transfer_model(
    tmp_path: Path, truth: dict[str, torch.Tensor], variant: str
) -> None:
    if variant == "sequential":
        config = transfer_config(RES, True, standard_head(N))
    elif variant == "functional-pooling-avg":  # pooling inside the base, a Dense named "logits"
        config = transfer_config(
            RES, True, [layer_config("dropout", "Dropout", rate=0.1), dense("logits", N, "linear")],
            pooling=True, cls="Functional",
        )
    elif variant == "flat":  # Model(base.input, head(base.output)): one layer list
        layers = [input_layer("input_1", RES, True)]
        layers += [layer_config(n, c) for n, c in keras_base_layers()]
        layers += standard_head(N)
        config = {"class_name": "Functional", "config": {"name": "m", "layers": layers}}
    elif variant == "softmax":  # Dense without activation followed by a Softmax layer
        head = standard_head(N)[:2] + [dense("predictions", N, "linear"),
                                       layer_config("softmax", "Softmax")]
        config = transfer_config(RES, True, head)
    else:  # keras.applications.MobileNet(include_top=True, classes=N): one flat layer list
        layers = [input_layer("input_1", RES, True)]
        layers += [layer_config(n, c) for n, c in keras_base_layers()]
        layers += [layer_config("global_average_pooling2d", "GlobalAveragePooling2D",
                                keepdims=True),
                   layer_config("dropout", "Dropout", rate=1e-3),
                   layer_config("conv_preds", "Conv2D", kernel_size=[1, 1], filters=N),
                   layer_config("reshape_2", "Reshape", target_shape=[N]),
                   layer_config("predictions", "Activation", activation="softmax")]
        config = {"class_name": "Functional", "config": {"name": "m", "layers": layers}}
    head_name = {"functional-pooling-avg": "logits", "include-top": "conv_preds"}.get(
        variant, "predictions")
    path = write_keras3(tmp_path / "x.keras", truth, config, head=head_name,
                        conv_head=variant == "include-top")
    weights = load_weights(path)
    assert (weights.format, weights.alpha, weights.num_classes, weights.res) == (
        "keras3", ALPHA, N, RES)
    assert_same(weights.state_dict, truth)
    assert_runs(weights, RES)


def test_keras2_include_top_with_n_classes(tmp_path: Path, truth: dict[str, torch.Tensor]) -> None:
    """``MobileNet(include_top=True, classes=N)``: conv_preds is a 1x1 conv with N filters."""
    path = tmp_path / "top.h5"
    layers = keras_arrays(truth)
    layers["conv_preds"] = [
        ("kernel", truth["classifier.weight"].numpy().T[None, None].copy()),
        ("bias", truth["classifier.bias"].numpy()),
    ]
    with h5py.File(path, "w") as f:
        f.attrs["layer_names"] = np.array([n.encode() for n in layers])
        for layer, ws in layers.items():
            g = f.create_group(layer)
            for w, array in ws:
                g.create_dataset(f"{layer}/{w}:0", data=array)
            g.attrs["weight_names"] = np.array([f"{layer}/{w}:0".encode() for w, _ in ws])
    weights = load_weights(path, ALPHA, RES)
    assert weights.num_classes == N
    assert_same(weights.state_dict, truth)


@pytest.mark.parametrize("alpha", [0.75, 1.25])  # 1.25: timm's mobilenetv1_125
def test_timm_layout_with_dozens_of_classes(tmp_path: Path, alpha: float) -> None:
    w = random_weights(alpha, 128, seed=5, settings=TIMM_SETTINGS, num_classes=42)
    path = tmp_path / "timm_nc42.safetensors"
    save_file(ours_to_timm(w.state_dict), str(path))
    weights = load_weights(path)
    assert (weights.format, weights.alpha, weights.num_classes) == ("timm", alpha, 42)
    assert weights.settings == TIMM_SETTINGS
    model = build_model(alpha, 128, weights)
    assert model.cfg.num_classes == 42
    labels = [f"{name}-{i}" for i, name in enumerate(UNICODE_LABELS * 6)]
    labels_file = tmp_path / "labels.txt"
    write_labels(labels_file, labels)
    assert resolve_labels(labels_file, weights.num_classes) == tuple(labels)
    with pytest.raises(UserError) as exc:
        resolve_labels(labels_file, 41)
    assert_one_line(exc, "has 42 labels", "41 classes")


def test_summary_counts_the_classifier_for_n() -> None:
    full = summarize(MobileNetConfig(alpha=1.0, res=224))
    small = summarize(MobileNetConfig(alpha=1.0, res=224, num_classes=10))
    assert full.params - small.params == 990 * 1024 + 990
    assert full.macs - small.macs == 990 * 1024
    assert small.layers[-1].output_shape == (10,)


# --- what is refused, in one line --------------------------------------------------------------


def test_hidden_dense_is_unsupported(tmp_path: Path, truth: dict[str, torch.Tensor]) -> None:
    c = MobileNetConfig.channel_counts(ALPHA)[-1]
    hidden = [("kernel", np.zeros((c, 32), np.float32)), ("bias", np.zeros(32, np.float32))]
    head = standard_head(N)
    head.insert(1, dense("hidden", 32, "relu"))
    with_config = write_keras2(tmp_path / "a.h5", truth, transfer_config(RES, False, head),
                               extra={"hidden": hidden})
    weights_only = write_keras2(tmp_path / "b.h5", truth, None, extra={"hidden": hidden})
    for path in (with_config, weights_only):
        with pytest.raises(WeightsError) as exc:
            load_weights(path)
        assert_one_line(exc, str(path), "unsupported head", "hidden", "supported:", "Dense(N)")


@pytest.mark.parametrize(
    ("head", "needle"),
    [
        ([layer_config("flatten", "Flatten"), dense("predictions", N)], "Flatten 'flatten'"),
        ([layer_config("gmp", "GlobalMaxPooling2D"), dense("predictions", N)],
         "GlobalMaxPooling2D"),
        ([layer_config("gap", "GlobalAveragePooling2D"), dense("predictions", N, "sigmoid")],
         "activation=sigmoid"),
        ([layer_config("gap", "GlobalAveragePooling2D"), layer_config("dropout", "Dropout")],
         "no classifier"),
    ],
    ids=["flatten", "max-pool", "sigmoid", "no-dense"],
)
def test_unsupported_keras3_heads(
    tmp_path: Path, truth: dict[str, torch.Tensor], head: list[dict[str, Any]], needle: str
) -> None:
    path = write_keras3(tmp_path / "x.keras", truth, transfer_config(RES, True, head))
    with pytest.raises(WeightsError) as exc:
        load_weights(path)
    assert_one_line(exc, str(path), needle, "supported:")


def test_keras3_shape_mismatch_is_named(tmp_path: Path, truth: dict[str, torch.Tensor]) -> None:
    """A config whose layer order does not match the weights fails shape verification."""
    config = transfer_config(RES, True, standard_head(N))
    path = write_keras3(tmp_path / "x.keras", truth, config)
    base = config["config"]["layers"][1]["config"]["layers"]
    i, j = (next(k for k, la in enumerate(base) if la["config"]["name"] == n)
            for n in ("conv_pw_1", "conv_pw_2"))
    base[i]["config"]["name"], base[j]["config"]["name"] = "conv_pw_2", "conv_pw_1"
    with zipfile.ZipFile(path) as z:
        weights_h5 = z.read("model.weights.h5")
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("config.json", json.dumps(config))
        z.writestr("model.weights.h5", weights_h5)
    with pytest.raises(WeightsError) as exc:
        load_weights(path)
    assert_one_line(exc, "wrong shape conv_pw_1/kernel:0")


def test_damaged_keras3_files(tmp_path: Path, truth: dict[str, torch.Tensor]) -> None:
    good = write_keras3(tmp_path / "good.keras", truth,
                        transfer_config(RES, True, standard_head(N))).read_bytes()
    truncated = tmp_path / "truncated.keras"
    truncated.write_bytes(good[: len(good) // 2])
    no_weights = tmp_path / "no_weights.keras"
    with zipfile.ZipFile(no_weights, "w") as z:
        z.writestr("config.json", "{}")
    bad_json = tmp_path / "bad_json.keras"
    with zipfile.ZipFile(bad_json, "w") as z:
        z.writestr("config.json", "{not json")
        z.writestr("model.weights.h5", b"")
    bad_h5 = tmp_path / "bad_h5.keras"
    with zipfile.ZipFile(bad_h5, "w") as z:
        z.writestr("config.json", json.dumps(transfer_config(RES, True, standard_head(N))))
        z.writestr("model.weights.h5", b"\x89HDF\r\n\x1a\n" + b"\x00" * 64)
    for path in (truncated, no_weights, bad_json, bad_h5):
        with pytest.raises(WeightsError) as exc:
            load_weights(path)
        assert_one_line(exc, str(path))


def test_classifier_that_disagrees_with_its_features(tmp_path: Path) -> None:
    w = random_weights(0.25, 128, seed=1, settings=TIMM_SETTINGS, num_classes=5)
    state = dict(w.state_dict)
    state["classifier.weight"] = torch.zeros(5, 512)
    path = tmp_path / "bad_head.pt"
    torch.save(state, path)
    weights = load_weights(path)
    with pytest.raises(WeightsError) as exc:
        build_model(0.25, 128, weights)
    assert_one_line(exc, "classifier.weight has shape (5, 512)", "256 channels")


def test_explicit_alpha_must_match_the_file(
    tmp_path: Path, truth: dict[str, torch.Tensor]
) -> None:
    path = write_keras3(tmp_path / "x.keras", truth, transfer_config(RES, True, standard_head(N)))
    with pytest.raises(WeightsError) as exc:
        load_weights(path, 0.25, RES)
    assert_one_line(exc, "alpha=0.5", "--alpha 0.5")


def test_library_fixtures_with_their_labels() -> None:
    for name, ext, n in [("keras_transfer_0.25_128", ".h5", 3),
                         ("keras3_transfer_0.25_128", ".keras", 4)]:
        weights = load_weights(shared_fixture(name + ext))
        labels = resolve_labels(shared_fixture(name + ".labels.txt"), weights.num_classes)
        assert len(labels) == n == weights.num_classes and weights.res == 128
        with pytest.raises(UserError):
            resolve_labels(None, weights.num_classes)


# --- the CLI: every bad input exits 2 with one line and writes nothing -------------------------


@pytest.fixture(scope="module")
def cli_inputs(
    tmp_path_factory: pytest.TempPathFactory, truth: dict[str, torch.Tensor]
) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("cli_inputs")
    c = MobileNetConfig.channel_counts(ALPHA)[-1]
    hidden = [("kernel", np.zeros((c, 32), np.float32)), ("bias", np.zeros(32, np.float32))]
    bad_head = dict(random_weights(0.25, 128, seed=1, settings=TIMM_SETTINGS,
                                   num_classes=5).state_dict)
    bad_head["classifier.weight"] = torch.zeros(5, 512)
    torch.save(bad_head, d / "bad_head.pt")
    files = {
        "model": write_keras2(d / "seven.h5", truth, transfer_config(RES, False, standard_head(N))),
        "hidden": write_keras2(d / "hidden.h5", truth, None, extra={"hidden": hidden}),
        "bad_head": d / "bad_head.pt",
        "good": d / "good.txt", "short": d / "short.txt", "dup": d / "dup.txt",
        "empty": d / "empty.txt",
    }
    write_labels(files["good"], UNICODE_LABELS)
    write_labels(files["short"], UNICODE_LABELS[:5])
    files["dup"].write_text("\n".join(UNICODE_LABELS[:6] + ["Löwchen"]) + "\n", encoding="utf-8")
    files["empty"].write_text("\n".join(UNICODE_LABELS[:3] + [""] + UNICODE_LABELS[4:]) + "\n",
                              encoding="utf-8")
    return files


CLI_CASES = [
    ("model", None, ("7 classes", "--labels")),
    ("model", "short", ("has 5 labels", "7 classes")),
    ("model", "dup", ("'Löwchen' appears twice",)),
    ("model", "empty", ("line 4 is empty",)),
    ("model", "missing", ("does not exist",)),
    ("hidden", "good", ("unsupported head", "hidden")),
    ("bad_head", None, ("classifier.weight has shape (5, 512)",)),
]


@pytest.mark.parametrize("command", ["convert", "golden"])
@pytest.mark.parametrize(("weights", "labels", "needles"), CLI_CASES,
                         ids=[f"{w}-{label}" for w, label, _ in CLI_CASES])
def test_cli_bad_input(
    command: str, weights: str, labels: str | None, needles: tuple[str, ...],
    cli_inputs: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    from mnv1_coreml.cli import main

    out_dir = tmp_path / "out"
    out_dir.mkdir()
    out = out_dir / ("m.mlpackage" if command == "convert" else "golden")
    args = [command, "--weights", str(cli_inputs[weights]), "-o", str(out)]
    if labels is not None:
        args += ["--labels", str(cli_inputs.get(labels, tmp_path / "missing.txt"))]
    code = main(args)
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert code == 2 and len(err) == 1 and err[0].startswith("mnv1-coreml: error: "), err
    for needle in needles:
        assert needle in err[0], (needle, err[0])
    assert list(out_dir.iterdir()) == []


def test_cli_golden_with_unicode_labels(
    cli_inputs: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from mnv1_coreml.cli import main
    from mnv1_coreml.golden import read_golden

    out = tmp_path / "golden"
    assert main(["golden", "--weights", str(cli_inputs["model"]), "--labels",
                 str(cli_inputs["good"]), "-o", str(out)]) == 0
    golden = read_golden(out)
    assert golden.labels == UNICODE_LABELS and golden.logits.shape[1] == N
    assert (golden.alpha, golden.res) == (ALPHA, RES)  # from the file's shapes and config
    manifest = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["num_classes"] == N
    assert manifest["labels_sha256"] == labels_sha256(UNICODE_LABELS)


def test_few_classes_are_judged_by_max_abs_not_cosine_or_psnr() -> None:
    """A 4-class head with logits spread by 0.3: fp16-sized errors (0.02) pass on max abs;
    the same relative error over 1000 classes still fails on cosine and PSNR."""
    from mnv1_coreml.validation import compare_image, tolerances_for

    tol = tolerances_for("fp16", "reference")
    rng = np.random.default_rng(0)
    golden = np.array([0.1, -0.2, 0.05, 0.12])
    noisy = golden + rng.choice([-0.02, 0.02], size=4)
    small = compare_image("x", golden, noisy, False, int(np.argmax(noisy)), list("abcd"), tol)
    assert small.cosine < tol.min_cosine and small.psnr < tol.min_psnr  # would have failed
    assert small.status in ("pass", "ambiguous"), small.reasons
    wrong = compare_image("x", golden, golden + 0.2 * np.array([1, -1, 1, -1]), False,
                          int(np.argmax(golden)), list("abcd"), tol)
    assert wrong.status == "FAIL" and any("max abs" in r for r in wrong.reasons)
    big_golden = rng.normal(0, 0.1, 1000)
    big = compare_image("x", big_golden, big_golden + rng.choice([-0.02, 0.02], 1000), False,
                        int(np.argmax(big_golden)), [str(i) for i in range(1000)], tol)
    assert big.status == "FAIL" and any("cosine" in r for r in big.reasons)
