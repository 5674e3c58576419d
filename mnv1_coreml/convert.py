"""PyTorch MobileNet V1 -> Core ML ML Program image classifier (``.mlpackage``).

The package is what an iOS app wants to drop in: an RGB image input with the weights'
normalisation inside the model, softmax inside, 1000 unique ImageNet labels as a classifier
(Vision returns ``VNClassificationObservation``), and metadata that records exactly how it was
made, which ``validate`` reads back.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from . import __version__
from .coreml import TARGETS, ct, target_name
from .errors import UserError
from .fsutil import atomic_path, check_output
from .images import Normalization
from .labels import imagenet_labels
from .model import MobileNetConfig, MobileNetV1, check_alpha, check_res
from .summary import paper_macs_millions, summarize
from .weights import LoadedWeights, build_model, load_weights, published_accuracy

Precision = Literal["fp16", "fp32"]
INPUT_NAME = "image"
LABEL_OUTPUT = "classLabel"
PROBS_OUTPUT = "classLabelProbs"
DEFAULT_OUTPUT = Path("MobileNetV1.mlpackage")
DEFAULT_WEIGHTS = "imagenet"
#: Prefix of our user-defined metadata keys; ``validate`` reads them back.
META = "mnv1."
PREVIEW_TYPE_KEY = "com.apple.coreml.model.preview.type"

StepCallback = Callable[[str], None]


@dataclass(frozen=True)
class ConvertOptions:
    """Everything ``mnv1-coreml convert`` takes; the CLI is a thin shell over this."""

    alpha: float = 1.0
    res: int = 224
    weights: str = DEFAULT_WEIGHTS
    seed: int = 0
    precision: Precision = "fp16"
    compression: Any = None  # mnv1_coreml.compress.CompressionSpec | None
    target: str | None = None  # None: the lowest target the options allow
    output: Path = DEFAULT_OUTPUT
    force: bool = False
    validate: bool = True
    weights_sha256: str | None = None
    overrides: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        try:
            check_alpha(self.alpha)
            check_res(self.res)
        except ValueError as exc:
            raise UserError(str(exc)) from None
        if self.precision not in ("fp16", "fp32"):
            raise UserError(f"precision must be fp16 or fp32, got {self.precision!r}")
        if self.target is not None and self.target not in TARGETS:
            raise UserError(f"target must be one of {', '.join(TARGETS)}, got {self.target!r}")


@dataclass
class ConvertResult:
    path: Path
    metadata: dict[str, str]
    weights: LoadedWeights
    compression_report: Any = None
    validation: Any = None  # mnv1_coreml.validate.ValidationReport | None
    target: str = "iOS15"


class ClassifierHead(nn.Module):
    """What gets traced: optional per-channel 1/std, the network, then softmax.

    The ImageType already applied ``scale * pixel + bias``; the per-channel factor only exists
    when the weights' std differs between channels, which one ImageType scale cannot express.
    """

    def __init__(self, model: MobileNetV1, channel_scale: tuple[float, float, float] | None):
        super().__init__()
        self.model = model
        self.register_buffer(
            "channel_scale",
            None if channel_scale is None else torch.tensor(channel_scale).view(1, 3, 1, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.channel_scale is not None:
            x = x * self.channel_scale
        return torch.softmax(self.model(x), dim=1)


def choose_target(requested: str | None, compression: Any) -> str:
    """The lowest target that supports the options, or the user's, if it is high enough."""
    needed = "iOS15"
    if compression is not None:
        from .compress import required_target

        needed = target_name(required_target(compression))
    if requested is None:
        return needed
    if list(TARGETS).index(requested) < list(TARGETS).index(needed):
        raise UserError(
            f"--target {requested} is too low for the requested compression, which needs "
            f"{needed}; pass --target {needed} or higher"
        )
    return requested


def describe_compression(compression: Any) -> dict[str, str]:
    if compression is None:
        return {"palettization": "none", "quantization": "none"}
    pal = "none"
    if compression.palettize_bits:
        pal = f"{compression.palettize_bits}-bit {compression.granularity}"
        if compression.granularity == "per-grouped-channel":
            pal += f" group_size={compression.group_size}"
        pal += f" kmeans-{compression.method}"
    quant = compression.quantize or "none"
    if quant != "none":
        quant += " linear-symmetric per-channel"
    return {"palettization": pal, "quantization": quant}


def build_metadata(
    opts: ConvertOptions, weights: LoadedWeights, cfg: MobileNetConfig, target: str
) -> dict[str, str]:
    """User-defined metadata keys: what validate and the app need to know about this model."""
    summary = summarize(cfg)
    s = weights.settings
    meta = {
        f"{META}alpha": repr(float(opts.alpha)),
        f"{META}resolution": str(opts.res),
        f"{META}weights": weights.spec,
        f"{META}weights_source": weights.source,
        f"{META}weights_sha256": weights.sha256,
        f"{META}precision": opts.precision,
        f"{META}padding": s.padding,
        f"{META}activation": s.activation,
        f"{META}bn_eps": repr(s.bn_eps),
        f"{META}normalization": json.dumps(s.normalization.to_json()),
        f"{META}mult_adds": str(summary.macs),
        f"{META}params": str(summary.params),
        f"{META}paper_mult_adds_millions": str(paper_macs_millions(opts.alpha, opts.res)),
        f"{META}published_imagenet_accuracy": json.dumps(
            published_accuracy(opts.alpha, opts.res) or {}
        ),
        f"{META}target": target,
        f"{META}version": __version__,
    }
    for key, value in describe_compression(opts.compression).items():
        meta[f"{META}{key}"] = value
    return meta


def _apply_descriptions(
    mlmodel: Any, opts: ConvertOptions, weights: LoadedWeights, meta: dict[str, str]
) -> None:
    n = weights.settings.normalization
    comp = describe_compression(opts.compression)
    mlmodel.short_description = (
        f"MobileNet V1 (alpha={opts.alpha}, {opts.res}x{opts.res}) ImageNet-1k classifier; "
        f"weights: {weights.spec}; {opts.precision}, palettization {comp['palettization']}. "
        "Howard et al. 2017, arXiv 1704.04861."
    )
    mlmodel.author = "mnv1-coreml (MobileNet V1: Howard et al., Google, 2017)"
    mlmodel.license = (
        "Model code: Apache-2.0. Weights: see the weights source's licence "
        "(Keras Applications: Apache-2.0; timm: model card)."
    )
    mlmodel.version = __version__
    mlmodel.input_description[INPUT_NAME] = (
        f"RGB image, {opts.res}x{opts.res}; normalised inside the model as {n.describe()}. "
        "Use Vision with .centerCrop for other sizes."
    )
    mlmodel.output_description[LABEL_OUTPUT] = "Most likely ImageNet class label"
    mlmodel.output_description[PROBS_OUTPUT] = "Probability of each of the 1000 ImageNet classes"
    mlmodel.user_defined_metadata[PREVIEW_TYPE_KEY] = "imageClassifier"
    for key, value in meta.items():
        mlmodel.user_defined_metadata[key] = value


def trace(model: MobileNetV1, normalization: Normalization, res: int) -> torch.jit.ScriptModule:
    head = ClassifierHead(model, normalization.in_graph_scale).eval()
    example = torch.zeros(1, 3, res, res)
    with torch.no_grad():
        return torch.jit.trace(head, example)


def to_coreml(
    traced: torch.jit.ScriptModule,
    res: int,
    normalization: Normalization,
    precision: Precision,
    target: str,
) -> Any:
    """ct.convert with the image input and the classifier; returns an unsaved MLModel."""
    scale, bias = normalization.image_type_params()
    mlmodel = ct.convert(
        traced,
        inputs=[
            ct.ImageType(
                name=INPUT_NAME,
                shape=(1, 3, res, res),
                scale=scale,
                bias=list(bias),
                color_layout=ct.colorlayout.RGB,
            )
        ],
        classifier_config=ct.ClassifierConfig(list(imagenet_labels())),
        convert_to="mlprogram",
        compute_precision=ct.precision.FLOAT16 if precision == "fp16" else ct.precision.FLOAT32,
        minimum_deployment_target=TARGETS[target],
        skip_model_load=True,
    )
    return mlmodel


def rename_probabilities(mlmodel: Any) -> Any:
    """coremltools names the dict output ``classLabel_probs``; Apple's models use ``...Probs``."""
    spec = mlmodel.get_spec()
    ct.utils.rename_feature(spec, f"{LABEL_OUTPUT}_probs", PROBS_OUTPUT)
    return ct.models.MLModel(spec, weights_dir=mlmodel.weights_dir, skip_model_load=True)


def mark_validation(package: Path, verdict: str) -> None:
    """Record the validation verdict in the package's metadata (the spec file only)."""
    manifest = json.loads((package / "Manifest.json").read_text())
    root = manifest["itemInfoEntries"][manifest["rootModelIdentifier"]]["path"]
    spec_path = package / "Data" / root
    spec = ct.utils.load_spec(str(package))
    spec.description.metadata.userDefined[f"{META}validation"] = verdict
    spec_path.write_bytes(spec.SerializeToString())


def preflight(opts: ConvertOptions) -> str:
    """Checks that need no work: refuse bad output paths and targets before building anything."""
    check_output(opts.output, opts.force)
    return choose_target(opts.target, opts.compression)


def convert(
    opts: ConvertOptions,
    on_step: StepCallback | None = None,
    on_download: Callable[[int, int | None], None] | None = None,
) -> ConvertResult:
    """Build, trace, convert, compress, save atomically, and (by default) validate."""
    step = on_step or (lambda _name: None)
    target = preflight(opts)

    step("build")
    weights = load_weights(
        opts.weights, opts.alpha, opts.res, seed=opts.seed, overrides=opts.overrides,
        sha256=opts.weights_sha256, progress=on_download,
    )
    model = build_model(opts.alpha, opts.res, weights)
    norm = weights.settings.normalization

    step("trace")
    traced = trace(model, norm, opts.res)

    step("convert")
    mlmodel = to_coreml(traced, opts.res, norm, opts.precision, target)

    step("compress")
    report = None
    if opts.compression is not None:
        from .compress import compress

        mlmodel, report = compress(mlmodel, opts.compression)

    step("save")
    mlmodel = rename_probabilities(mlmodel)
    meta = build_metadata(opts, weights, model.cfg, target)
    _apply_descriptions(mlmodel, opts, weights, meta)
    result = ConvertResult(opts.output, meta, weights, report, target=target)
    with atomic_path(opts.output, opts.force) as tmp:
        mlmodel.save(str(tmp))
        if opts.validate:
            # validate before the rename, so the verdict is inside the package it describes;
            # a failing package is still kept (marked), for the user to inspect.
            step("validate")
            from .validate import validate_at_birth

            result.validation = validate_at_birth(tmp, model, weights)
            mark_validation(tmp, result.validation.verdict_line())
    return result

