"""Integration: alpha 0.25 / res 128 packages, checked through their saved spec."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from mnv1_coreml.cli import main
from mnv1_coreml.coreml import ct
from mnv1_coreml.labels import imagenet_labels
from mnv1_coreml.metadata import META
from mnv1_coreml.modelspec import read_contract

REQUIRED_META = [
    "alpha", "resolution", "weights", "weights_source", "weights_sha256", "precision",
    "palettization", "quantization", "padding", "activation", "bn_eps", "normalization",
    "mult_adds", "params", "paper_mult_adds_millions", "version", "validation", "compression",
]


def program_ops(path: Path) -> list[tuple[str, str, str]]:
    """(op type, output name, output dtype) of every op in the saved ML Program."""
    spec = ct.utils.load_spec(str(path))
    fn = spec.mlProgram.functions["main"]
    block = fn.block_specializations[fn.opset]
    ops = []
    for op in block.operations:
        out = op.outputs[0]
        dtype = out.type.tensorType.dataType if out.type.HasField("tensorType") else -1
        ops.append((op.type, out.name, ct.proto.MIL_pb2.DataType.Name(dtype) if dtype >= 0 else ""))
    return ops


def weight_producers(path: Path) -> dict[str, str]:
    """For each conv/linear op: the type of the op that produces its weight."""
    spec = ct.utils.load_spec(str(path))
    fn = spec.mlProgram.functions["main"]
    block = fn.block_specializations[fn.opset]
    producer = {o.name: op.type for op in block.operations for o in op.outputs}
    result = {}
    for op in block.operations:
        if op.type in ("conv", "linear"):
            arg = op.inputs["weight"].arguments[0]
            result[op.outputs[0].name] = producer.get(arg.name, "inline")
    return result


@pytest.mark.parametrize("precision", ["fp16", "fp32"])
def test_spec_contract(small_packages: dict[str, Path], precision: str) -> None:
    path = small_packages[precision]
    c = read_contract(path)
    assert c.kind == "mlProgram"
    assert (c.input_name, c.input_kind, c.width, c.height, c.color_space) == (
        "image", "imageType", 128, 128, "RGB")
    assert c.label_output == "classLabel" and c.probs_output == "classLabelProbs"
    assert c.labels == list(imagenet_labels()) and len(set(c.labels)) == 1000
    assert "crane (bird)" in c.labels and "maillot (swimsuit)" in c.labels
    for key in REQUIRED_META:
        assert f"{META}{key}" in c.metadata, key
    assert c.metadata["com.apple.coreml.model.preview.type"] == "imageClassifier"
    assert c.metadata[f"{META}precision"] == precision
    assert c.metadata[f"{META}alpha"] == "0.25" and c.metadata[f"{META}resolution"] == "128"
    assert c.metadata[f"{META}mult_adds"] == "13570048"
    assert c.metadata[f"{META}validation"].startswith("validate PASS")
    assert json.loads(c.metadata[f"{META}normalization"])["std"] == [0.229, 0.224, 0.225]

    spec = ct.utils.load_spec(str(path))
    assert "RGB image, 128x128" in spec.description.input[0].shortDescription
    assert spec.description.metadata.author and spec.description.metadata.license
    assert spec.description.metadata.shortDescription.startswith("MobileNet V1")
    dtypes = {dt for t, _, dt in program_ops(path) if t == "conv"}
    assert dtypes == ({"FLOAT16"} if precision == "fp16" else {"FLOAT32"})
    kinds = [t for t, _, _ in program_ops(path)]
    assert "softmax" in kinds and kinds[-1] == "classify"


def repeated_constants(path: Path) -> list[list[str]]:
    """Names of numeric ``const`` ops that hold the same typed value, grouped (empty when all
    differ). coremltools never shares string and bool constants (``should_be_deduplicated``)."""
    spec = ct.utils.load_spec(str(path))
    fn = spec.mlProgram.functions["main"]
    unshared = {ct.proto.MIL_pb2.STRING, ct.proto.MIL_pb2.BOOL}
    by_value: dict[bytes, list[str]] = {}
    for op in fn.block_specializations[fn.opset].operations:
        if op.type == "const" and op.outputs[0].type.tensorType.dataType not in unshared:
            key = op.outputs[0].type.SerializeToString() + op.attributes["val"].SerializeToString()
            by_value.setdefault(key, []).append(op.outputs[0].name)
    return [names for names in by_value.values() if len(names) > 1]


@pytest.mark.parametrize("precision", ["fp16", "fp32"])
def test_repeated_constants_are_shared(small_packages: dict[str, Path], precision: str) -> None:
    """Strides, pads, groups... are one const each (coremltools alone shares only tensors of
    100+ elements), and the threshold it keeps in a class attribute is back to its default."""
    from coremltools.converters.mil.mil.passes.defs.cleanup.const_deduplication import (
        const_deduplication,
    )

    assert repeated_constants(small_packages[precision]) == []
    consts = [t for t, _, _ in program_ops(small_packages[precision])].count("const")
    assert consts < 110, consts  # 27 convs with 5 scalar/tuple constants each, unshared: 170+
    assert const_deduplication._const_threshold == 100


def test_palettized_every_weight(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "pal8.mlpackage"
    code = main(["convert", "--alpha", "0.25", "--res", "128", "--weights", "random",
                 "--palettize", "8", "-o", str(out)])
    text, err = capfd.readouterr()
    assert code == 0, err
    assert "target iOS16" in text and "compressed 28/28 conv/linear weights" in text
    assert "NOT compressed" not in text and "validate PASS" in text
    # defect 6: coremltools' own bars never reach the user (ours is the only display)
    for noise in ("Running compression pass", "Converting PyTorch Frontend", "Running MIL",
                  " ops/s]", "passes/s]"):
        assert noise not in err, (noise, err)
    assert repeated_constants(out) == []  # compression's new constants are shared too
    producers = weight_producers(out)
    assert len(producers) == 28  # stem + 13 x (dw, pw) + FC
    assert set(producers.values()) == {"constexpr_lut_to_dense"}, producers
    meta = read_contract(out).metadata
    assert meta[f"{META}palettization"].startswith("8-bit per-tensor")
    assert json.loads(meta[f"{META}compression"]) == {
        "mode": "palettize", "bits": 8, "granularity": "per-tensor", "group_size": None,
        "method": "optimal",
    }


def test_quiet_coremltools_restores_everything() -> None:
    import logging
    import warnings

    import tqdm
    from coremltools.optimize.coreml import _quantization_passes

    from mnv1_coreml.coreml import quiet_coremltools

    logger = logging.getLogger("coremltools")
    level, bar, filters = logger.level, _quantization_passes.tqdm, list(warnings.filters)
    with quiet_coremltools():
        assert logger.level == logging.ERROR
        assert _quantization_passes.tqdm is not bar
        assert _quantization_passes.tqdm([1], desc="x").disable
        with quiet_coremltools():  # re-entrant
            pass
        assert _quantization_passes.tqdm is not bar
    assert (logger.level, _quantization_passes.tqdm) == (level, bar)
    assert bar is tqdm.tqdm and warnings.filters == filters


def test_random_weights_have_real_spread(small_packages: dict[str, Path]) -> None:
    from mnv1_coreml.golden import torch_logits
    from mnv1_coreml.images import load_image_set
    from mnv1_coreml.weights import build_model, load_weights

    w = load_weights("random", 0.25, 128, seed=0)
    names, images = load_image_set(128, with_probes=False)
    logits = torch_logits(build_model(0.25, 128, w), w.settings.normalization, images)
    class_std = logits.std(axis=1)
    assert class_std.min() > 0.3  # fp16 noise on these logits is ~1e-3
    assert len({int(i) for i in logits.argmax(1)}) >= 2  # photos are told apart
    again = load_weights("random", 0.25, 128, seed=0)
    assert again.sha256 == w.sha256
    assert load_weights("random", 0.25, 128, seed=1).sha256 != w.sha256


def test_cli_convert_force_replaces_atomically(tmp_path: Path, capsys) -> None:
    out = tmp_path / "MobileNetV1.mlpackage"
    args = ["convert", "--alpha", "0.25", "--res", "128", "--weights", "random", "--precision",
            "fp32", "-o", str(out)]
    assert main(args) == 0
    text = capsys.readouterr().out
    assert "validate PASS" in text and f"wrote {out}" in text
    first = read_contract(out).metadata[f"{META}weights_sha256"]
    assert main([*args, "--force", "--seed", "3", "--no-validate"]) == 0
    assert read_contract(out).metadata[f"{META}weights_sha256"] != first
    assert sorted(p.name for p in tmp_path.iterdir()) == ["MobileNetV1.mlpackage"]


def test_probabilities_sum_to_one(small_packages: dict[str, Path]) -> None:
    from mnv1_coreml.backends import ReferenceBackend
    from mnv1_coreml.images import probe_images

    out = ReferenceBackend(small_packages["fp32"]).run(np.stack([a for _, a in probe_images(128)]))
    np.testing.assert_allclose(out.probabilities.sum(1), 1.0, atol=1e-5)
    assert out.class_label == [out.labels[i] for i in out.probabilities.argmax(1)]
