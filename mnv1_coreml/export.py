"""PyTorch MobileNet V1 -> an unsaved Core ML ML Program image classifier. No file I/O.

:func:`export` is pure: a model and its input normalisation in, a ``ct.models.MLModel`` out,
with what an iOS app wants: an RGB image input with the normalisation inside the model,
softmax inside, unique class labels as a classifier (Vision returns
``VNClassificationObservation``), and ``classLabel``/``classLabelProbs`` outputs. Metadata,
compression and saving are the pipeline's (:mod:`mnv1_coreml.pipeline`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Literal

import torch
from torch import nn

from .choices import PRECISIONS
from .coreml import TARGETS, ct, quiet_coremltools, shared_constants
from .errors import UserError
from .images import Normalization
from .labels import imagenet_labels
from .model import MobileNetV1

Precision = Literal["fp16", "fp32"]
INPUT_NAME = "image"
LABEL_OUTPUT = "classLabel"
PROBS_OUTPUT = "classLabelProbs"


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


def trace(model: MobileNetV1, normalization: Normalization) -> torch.jit.ScriptModule:
    """TorchScript trace of the classifier head at the model's resolution."""
    res = model.cfg.res
    head = ClassifierHead(model, normalization.in_graph_scale).eval()
    with torch.no_grad():
        return torch.jit.trace(head, torch.zeros(1, 3, res, res))


def to_coreml(
    traced: torch.jit.ScriptModule,
    res: int,
    normalization: Normalization,
    *,
    precision: Precision = "fp16",
    target: str = "iOS15",
    labels: Sequence[str] | None = None,
) -> Any:
    """ct.convert with the image input and the classifier; returns an unsaved MLModel."""
    scale, bias = normalization.image_type_params()
    with quiet_coremltools(), shared_constants():
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
            classifier_config=ct.ClassifierConfig(list(labels or imagenet_labels())),
            convert_to="mlprogram",
            compute_precision=(
                ct.precision.FLOAT16 if precision == "fp16" else ct.precision.FLOAT32
            ),
            minimum_deployment_target=TARGETS[target],
            skip_model_load=True,
        )
        # coremltools names the dict output ``classLabel_probs``; Apple's models use ``...Probs``
        spec = mlmodel.get_spec()
        ct.utils.rename_feature(spec, f"{LABEL_OUTPUT}_probs", PROBS_OUTPUT)
        return ct.models.MLModel(spec, weights_dir=mlmodel.weights_dir, skip_model_load=True)


def export(
    model: MobileNetV1,
    normalization: Normalization,
    *,
    precision: Precision = "fp16",
    target: str = "iOS15",
    labels: Sequence[str] | None = None,
    on_step: Callable[[str], None] | None = None,
) -> Any:
    """The Core ML classifier for ``model`` (eval mode), as an unsaved ``ct.models.MLModel``.

    ``normalization`` is what the weights expect (it goes into the image input); ``labels``
    default to the 1000 ImageNet classes. ``on_step`` hears ``"trace"`` and ``"convert"``.
    """
    if precision not in PRECISIONS:
        raise UserError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if target not in TARGETS:
        raise UserError(f"target must be one of {', '.join(TARGETS)}, got {target!r}")
    step = on_step or (lambda _name: None)
    step("trace")
    traced = trace(model, normalization)
    step("convert")
    return to_coreml(
        traced, model.cfg.res, normalization, precision=precision, target=target, labels=labels
    )
