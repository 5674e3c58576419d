"""W8A8: int8 activations and int8 weights, calibrated with the reference interpreter.

coremltools 9.0 builds W8A8 models with ``linear_quantize_activations``: it measures each
activation's range on sample inputs, then graph passes put ``quantize``/``dequantize`` pairs
around conv, linear, add and pooling ops with scales from those ranges. Only the measuring step
(``_get_activation_calibration_stats``) needs the Core ML runtime, so only a Mac can do it. Here
the reference interpreter (:mod:`mnv1_coreml.mil`) runs the fp16 program instead and produces
the same ``{var_name: {"rmin", "rmax"}}`` dict; everything else is coremltools' own passes, run
the way its function runs them (:data:`COREMLTOOLS_PASSES`). Weights are then int8 linear
symmetric per-channel, as ``--quantize int8`` makes them.

What coremltools' statistics cover, reproduced by :func:`calibration_var_names`: every output
of a non-const op that the block outputs depend on, whose dtype a model output can have (fp16,
fp32, fp64, int32), except the model's outputs; plus each input, keyed by its name; concat
inputs and outputs then share one range. One deliberate difference: coremltools 9.0 overwrites
each range with the latest sample's (a bug, apple/coremltools#2704, fixed upstream by #2724),
so its scales depend on the last calibration image alone. We take the min and max over all
images (``accumulate=True``); ``accumulate=False`` reproduces 9.0, for comparing the two.

Everything private in coremltools that this relies on is named here and pinned by
``tests/test_w8a8.py``.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..coreml import Program, ct, cto, load_program, quiet_coremltools

__all__ = [
    "COREMLTOOLS_PASSES",
    "QUANTIZED_OP_TYPES",
    "ActivationQuantization",
    "Calibration",
    "activation_config",
    "apply_activation_passes",
    "calibrate",
    "calibration_images",
    "calibration_var_names",
    "conv_input_coverage",
    "coremltools_accumulates",
    "describe_activations",
    "fused_activations",
    "image_size",
    "quantize_w8a8",
]

#: The graph passes of coremltools 9.0's ``linear_quantize_activations``, in its order; the
#: first two take ``PassOption("config", ...)`` and ``PassOption("activation_stats", ...)``.
COREMLTOOLS_PASSES = (
    "compression::insert_prefix_quantize_dequantize_pair",
    "compression::insert_suffix_quantize_dequantize_pair",
    "common::dequantize_quantize_pair_elimination",
)
#: Ops whose activation inputs (prefix pass) and outputs (suffix pass, possibly after one
#: relu/relu6/sigmoid/tanh-like activation) coremltools quantizes.
QUANTIZED_OP_TYPES = ("conv", "linear", "add", "avg_pool", "max_pool")
#: Batch of images per interpreter run while calibrating (bounds memory at 1.0-224).
CHUNK = 4


def _stat_dtypes() -> tuple[Any, ...]:
    # ModelDebugger.get_output_feature_type: the dtypes a model output may have; other vars
    # (bool, str, dict) cannot be appended as outputs, so they get no statistics.
    from coremltools.converters.mil.mil import types

    return (types.fp16, types.fp32, types.fp64, types.int32)


def activation_config() -> cto.OptimizationConfig:
    """int8 linear symmetric for every op: the config coremltools documents for W8A8."""
    return cto.OptimizationConfig(
        global_config=cto.OpLinearQuantizerConfig(mode="linear_symmetric", dtype="int8")
    )


def _main(program: Program) -> Any:
    return program.functions["main"]


def calibration_var_names(program: Program, output_names: Iterable[str]) -> list[str]:
    """The intermediate vars coremltools records ranges for, in program order.

    ``output_names`` are the model description's outputs, which it leaves out.
    """
    from coremltools.converters.mil.mil import types

    fn = _main(program)
    needed: set[Any] = set()
    stack = [op for op in (v.op for v in fn.outputs) if op is not None]
    while stack:
        op = stack.pop()
        if op in needed:
            continue
        needed.add(op)
        for val in op.inputs.values():
            for var in val if isinstance(val, (list, tuple)) else (val,):
                if var.op is not None and var.op not in needed:
                    stack.append(var.op)
    excluded = set(output_names)
    allowed = _stat_dtypes()
    names = []
    for op in fn.operations:
        if op.op_type == "const" or op not in needed:
            continue
        for var in op.outputs:
            if var.name in excluded or not types.is_tensor(var.sym_type):
                continue
            if var.dtype in allowed:
                names.append(var.name)
    return names


def _concat_groups(program: Program) -> list[list[str]]:
    """``[inputs..., output]`` names of each concat (ModelDebugger._get_concat_op_info)."""
    return [
        [v.name for v in op.inputs["values"]] + [op.outputs[0].name]
        for op in _main(program).operations
        if op.op_type == "concat"
    ]


@dataclass(frozen=True)
class Calibration:
    """Activation ranges measured on ``images`` calibration images, and how long it took."""

    stats: dict[str, dict[str, float]]
    images: int
    seconds: float
    source: str
    accumulate: bool = True


def calibration_images(
    res: int, directory: str | os.PathLike[str] | None = None
) -> tuple[np.ndarray, str]:
    """uint8 (N, res, res, 3) images prepared as for the golden, and where they came from.

    ``directory``: any photos (centre-cropped and resized); default: the packaged photos and
    the synthetic probes, the same set validation uses.
    """
    from ..errors import UserError
    from ..images import load_image_set

    path = None if directory is None else Path(directory)
    if path is not None and not path.is_dir():
        raise UserError(f"--calibration {path}: not a directory")
    try:
        _, images = load_image_set(res, path, with_probes=path is None)
    except UserError as exc:
        raise UserError(f"--calibration: {exc}") from None
    return images, str(path) if path is not None else "packaged photos and probes"


def calibrate(
    mlmodel: ct.models.MLModel,
    images: np.ndarray,
    *,
    source: str = "",
    accumulate: bool = True,
) -> Calibration:
    """Run the model's program through the reference interpreter and record activation ranges.

    ``images``: uint8 (N, H, W, 3) RGB at the model's input size. Produces what coremltools'
    ``_get_activation_calibration_stats`` would, except that ranges span all images unless
    ``accumulate=False`` (coremltools 9.0: the last image's range; see the module docstring).
    """
    from coremltools.optimize.coreml.experimental._post_training_quantization import (
        _adjust_concat_surrounding_activation_stats,
    )

    from ..mil import ReferenceModel
    from ..mil.loader import LoadedPackage, _image_inputs

    t0 = time.perf_counter()
    program = load_program(mlmodel)
    spec = mlmodel.get_spec()
    outputs = [o.name for o in spec.description.output]
    names = calibration_var_names(program, outputs)
    # the package's description tells the interpreter how pixels enter the image input
    model = ReferenceModel(LoadedPackage(None, program, spec, _image_inputs(spec), outputs))
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim != 4 or len(images) == 0:
        raise ValueError(f"images must be uint8 (N, H, W, 3) with N >= 1, got {images.shape}")
    used = images if accumulate else images[-1:]
    lo: dict[str, float] = {}
    hi: dict[str, float] = {}

    def update(name: str, value: np.ndarray) -> None:
        # torch's fused min/max is several times faster than NumPy's on fp16
        vmin_t, vmax_t = torch.aminmax(torch.from_numpy(np.ascontiguousarray(value)))
        vmin, vmax = float(vmin_t), float(vmax_t)
        lo[name] = min(vmin, lo.get(name, vmin))
        hi[name] = max(vmax, hi.get(name, vmax))

    for name in _main(program).inputs:  # coremltools records each input's data range too
        update(name, used)
    for start in range(0, len(used), CHUNK):
        values = model.predict(used[start : start + CHUNK], outputs=names)
        for name in names:
            update(name, values[name])
    stats = {name: {"rmin": lo[name], "rmax": hi[name]} for name in lo}
    _adjust_concat_surrounding_activation_stats(_concat_groups(program), stats)
    return Calibration(stats, len(used), time.perf_counter() - t0, source, accumulate)


def coremltools_accumulates() -> bool:
    """Whether the installed coremltools keeps min/max across calibration samples (False for
    9.0, which keeps the last sample's range: apple/coremltools#2704). The macOS comparison
    with its own ``linear_quantize_activations`` calibrates ours the same way."""
    from collections import defaultdict

    from coremltools.optimize.coreml.experimental._model_debugger import ModelDebugger

    stats: dict[str, dict[str, Any]] = defaultdict(dict)
    ModelDebugger.record_intermediate_output(np.array([0.0, 4.0]), "v", stats)
    ModelDebugger.record_intermediate_output(np.array([1.0, 2.0]), "v", stats)
    return float(stats["v"]["rmax"]) == 4.0


def apply_activation_passes(
    mlmodel: ct.models.MLModel,
    stats: Mapping[str, Mapping[str, float]],
    config: cto.OptimizationConfig | None = None,
) -> ct.models.MLModel:
    """coremltools' ``linear_quantize_activations`` after its calibration step, verbatim."""
    from coremltools import _SPECIFICATION_VERSION_IOS_17
    from coremltools.converters.mil.frontend.milproto import load as milproto_load
    from coremltools.converters.mil.mil.passes.graph_pass import PassOption
    from coremltools.converters.mil.mil.passes.pass_registry import PASS_REGISTRY
    from coremltools.models import utils as model_utils

    config = config or activation_config()
    stats = {k: dict(v) for k, v in stats.items()}
    graph_passes = []
    for name in COREMLTOOLS_PASSES[:2]:
        graph_pass = PASS_REGISTRY[name]
        graph_pass.set_options(
            [PassOption("config", config), PassOption("activation_stats", stats)]
        )
        graph_passes.append(graph_pass)
    graph_passes.append(PASS_REGISTRY[COREMLTOOLS_PASSES[2]])
    with quiet_coremltools():
        return model_utils._apply_graph_pass(
            mlmodel,
            graph_passes,
            spec_version=_SPECIFICATION_VERSION_IOS_17,
            pymil_load_func=milproto_load.load,
            skip_model_load=mlmodel.__proxy__ is None,
        )


def _ops(program: Program) -> list[Any]:
    return list(_main(program).operations)


def conv_input_coverage(program: Program) -> tuple[int, int]:
    """(convs whose input comes through a ``dequantize``, all convs)."""
    convs = [op for op in _ops(program) if op.op_type == "conv"]
    fed = sum(
        1 for op in convs
        if op.inputs["x"].op is not None and op.inputs["x"].op.op_type == "dequantize"
    )
    return fed, len(convs)


@dataclass
class ActivationQuantization:
    """Which activations got int8 quantize/dequantize pairs, which stayed fp16, and why."""

    quantized: list[str] = field(default_factory=list)
    fp16: list[tuple[str, str]] = field(default_factory=list)  # (var name, reason)
    conv_inputs: tuple[int, int] = (0, 0)  # (quantized, total)
    calibration_images: int = 0
    calibration_source: str = ""
    calibration_seconds: float = 0.0

    def summary_lines(self) -> list[str]:
        total = len(self.quantized) + len(self.fp16)
        fed, convs = self.conv_inputs
        lines = [
            f"int8 activations: {len(self.quantized)}/{total} quantized (quantize/dequantize "
            f"pairs; {fed}/{convs} conv inputs), calibrated on {self.calibration_images} images "
            f"({self.calibration_source}) in {self.calibration_seconds:.1f} s with the "
            "reference interpreter; more representative images give better scales "
            "(--calibration DIR)",
        ]
        groups: dict[str, list[str]] = {}
        for name, why in self.fp16:
            groups.setdefault(why, []).append(name)
        for why, names in groups.items():
            shown = ", ".join(names[:2]) + (f" and {len(names) - 2} more" if len(names) > 2 else "")
            lines.append(f"activation{'s' if len(names) > 1 else ''} left fp16: {shown}: {why}")
        return lines

    def to_json(self) -> dict[str, Any]:
        return {
            "quantized": list(self.quantized),
            "fp16": [{"name": n, "reason": r} for n, r in self.fp16],
            "conv_inputs_quantized": self.conv_inputs[0],
            "convs": self.conv_inputs[1],
            "calibration_images": self.calibration_images,
            "calibration_source": self.calibration_source,
            "calibration_seconds": round(self.calibration_seconds, 3),
        }


def fused_activations() -> frozenset[str]:
    """Activations coremltools' suffix pass fuses into the op before them: it quantizes
    conv -> relu6's output, not the conv's (``_allowed_activations``, pinned by the tests)."""
    from coremltools.converters.mil.mil.passes.defs.optimize_activation_quantization import (
        insert_suffix_quantize_dequantize_pair,
    )

    return frozenset(insert_suffix_quantize_dequantize_pair._allowed_activations)


def _why_fp16(var: Any) -> str:
    from coremltools.converters.mil.mil import types

    consumers = list(var.child_ops)
    kinds = sorted({op.op_type for op in consumers})
    producer = var.op.op_type if var.op is not None else "input"
    if (producer in QUANTIZED_OP_TYPES and len(consumers) == 1
            and consumers[0].op_type in fused_activations()):
        act = consumers[0].op_type
        return (f"{producer} -> {act}: fused with its activation; the {act} output is "
                "quantized instead")
    for op in consumers:
        if op.op_type == "add":
            other = op.inputs["y"] if op.inputs["x"] is var else op.inputs["x"]
            if other.op is not None and other.op.op_type == "const":
                return (f"{producer} -> add with a constant operand; coremltools quantizes an "
                        "add only when both operands are activations")
    if var.dtype != types.fp16:
        return (f"{producer} -> {', '.join(kinds) or 'model output'}: an "
                f"{types.builtin_to_string(var.dtype)} value, outside the fp16 network")
    return (f"{producer} -> {', '.join(kinds) or 'model output'}: coremltools' pass quantizes "
            f"only inputs and outputs of {', '.join(QUANTIZED_OP_TYPES)}")


def describe_activations(
    before: Program, after: Program, calibration: Calibration
) -> ActivationQuantization:
    """Compare the float program with the quantized one: each calibrated activation is either
    the input of a ``quantize`` op now, or was left fp16 (with the pass's reason)."""
    quantized_names = {
        op.inputs["input"].name for op in _ops(after) if op.op_type == "quantize"
    }
    inputs = set(_main(before).inputs)
    report = ActivationQuantization(
        conv_inputs=conv_input_coverage(after),
        calibration_images=calibration.images,
        calibration_source=calibration.source,
        calibration_seconds=calibration.seconds,
    )
    vars_by_name = {v.name: v for op in _ops(before) for v in op.outputs}
    for name in calibration.stats:
        if name in inputs:
            continue
        if name in quantized_names:
            report.quantized.append(name)
        else:
            report.fp16.append((name, _why_fp16(vars_by_name[name])))
    return report


def image_size(mlmodel: ct.models.MLModel) -> int:
    """The square image input's side; W8A8 calibration feeds images, so it needs one."""
    from ..errors import UserError

    for feature in mlmodel.get_spec().description.input:
        if feature.type.WhichOneof("Type") == "imageType":
            image = feature.type.imageType
            if image.width == image.height:
                return int(image.width)
    raise UserError("W8A8 calibration needs a model with a square image input")


def quantize_w8a8(
    mlmodel: ct.models.MLModel, weight_config: cto.OptimizationConfig,
    calibration_dir: str | os.PathLike[str] | None = None,
) -> tuple[ct.models.MLModel, ActivationQuantization]:
    """Calibrate on the images, quantize activations with coremltools' passes, then weights
    with ``weight_config`` (coremltools' order: activations first, on the float model)."""
    from coremltools.converters.mil.mil import types

    from ..errors import UserError

    program = load_program(mlmodel)
    if any(op.op_type == "conv" and op.inputs["x"].dtype != types.fp16 for op in _ops(program)):
        raise UserError("w8a8 needs an fp16 program: coremltools' activation pass writes fp16 "
                        "scales (convert with precision fp16)")
    images, source = calibration_images(image_size(mlmodel), calibration_dir)
    calibration = calibrate(mlmodel, images, source=source)
    activations = apply_activation_passes(mlmodel, calibration.stats)
    report = describe_activations(program, load_program(activations), calibration)
    with quiet_coremltools():
        return cto.linear_quantize_weights(activations, weight_config), report

