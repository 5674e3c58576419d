"""MobileNet V1 (Howard et al. 2017, arXiv 1704.04861), exactly as the paper's Table 1.

One architecture, configurable only where the real weight sources differ:

* ``padding="torch"``: symmetric zero padding of 1 on every 3x3 conv (timm, torchvision style).
* ``padding="tf"``: TensorFlow ``SAME`` padding. The resolution is a multiple of 32, so every
  stride-2 input is even and SAME pads 0 on the top/left and 1 on the bottom/right; stride-1
  layers pad 1 on every side. This is what Keras and TF-slim checkpoints were trained with.
* ``activation``: ``"relu6"`` (Keras, TF-slim, timm) or ``"relu"`` (the paper's text).
* ``bn_eps``: 1e-3 for Keras/TF weights, 1e-5 for PyTorch ones.

Channel rule (TF-slim's ``depth`` and Keras' ``alpha``): a layer with ``c`` channels in Table 1
gets ``max(int(c * alpha), 8)`` channels. ``int`` truncates, so alpha=0.75 maps 32 to 24 and
1024 to 768; the floor of 8 only matters below alpha=0.25.

State-dict names (plain, documented, no framework prefixes)::

    stem.conv.weight                 (C0, 3, 3, 3)      standard 3x3 conv, stride 2
    stem.bn.{weight,bias,running_mean,running_var}
    blocks.{i}.dw.conv.weight        (Ci, 1, 3, 3)      depthwise 3x3, i = 0..12
    blocks.{i}.dw.bn.*
    blocks.{i}.pw.conv.weight        (Co, Ci, 1, 1)     pointwise 1x1
    blocks.{i}.pw.bn.*
    classifier.weight, classifier.bias  (num_classes, C13)

Convolutions have no bias: BatchNorm follows each of them. ``num_batches_tracked`` buffers are
training bookkeeping and are not part of the weight contract (see :func:`weight_keys`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal, Protocol

import torch
from torch import nn

from .errors import InvalidValueError, WeightsError

Padding = Literal["torch", "tf"]
Activation = Literal["relu", "relu6"]

#: Table 1 of the paper: (stride of the depthwise conv, output channels of the pointwise conv)
#: for the 13 depthwise-separable blocks. The paper prints the 13th depthwise layer as
#: "Conv dw / s2" at 7x7; that is a typo: TF-slim, Keras and timm all use stride 1 there, and the
#: 7x7 average pool needs a 7x7 map. Taking the typo literally gives 568,401,664 mult-adds.
BLOCKS: tuple[tuple[int, int], ...] = (
    (1, 64),
    (2, 128),
    (1, 128),
    (2, 256),
    (1, 256),
    (2, 512),
    (1, 512),
    (1, 512),
    (1, 512),
    (1, 512),
    (1, 512),
    (2, 1024),
    (1, 1024),
)
STEM_CHANNELS = 32
MIN_CHANNELS = 8
MIN_RES, MAX_RES, RES_STEP = 32, 1024, 32


def scaled_channels(channels: int, alpha: float) -> int:
    """Width-multiplier rule of TF-slim and Keras: ``max(int(c * alpha), 8)``."""
    return max(int(channels * alpha), MIN_CHANNELS)


@dataclass(frozen=True)
class MobileNetConfig:
    """Everything that defines the network's function, apart from its weights."""

    alpha: float = 1.0
    res: int = 224
    num_classes: int = 1000
    padding: Padding = "torch"
    activation: Activation = "relu6"
    bn_eps: float = 1e-5

    def __post_init__(self) -> None:
        check_alpha(self.alpha)
        check_res(self.res)
        if self.padding not in ("torch", "tf"):
            raise ValueError(f"padding must be 'torch' or 'tf', got {self.padding!r}")
        if self.activation not in ("relu", "relu6"):
            raise ValueError(f"activation must be 'relu' or 'relu6', got {self.activation!r}")
        if not self.bn_eps > 0:
            raise ValueError(f"bn_eps must be > 0, got {self.bn_eps!r}")
        if isinstance(self.num_classes, bool) or not isinstance(self.num_classes, int) or (
            self.num_classes < 1
        ):
            raise InvalidValueError(
                f"num_classes must be an integer >= 1, got {self.num_classes!r}"
            )

    @property
    def channels(self) -> list[int]:
        """Output channels of the stem and of each of the 13 blocks."""
        return self.channel_counts(self.alpha)

    @classmethod
    def for_settings(
        cls, alpha: float, res: int, settings: ArchLike, num_classes: int = 1000
    ) -> MobileNetConfig:
        """The config that runs weights with their settings (padding, activation, BN eps)."""
        return cls(
            alpha=alpha, res=res, num_classes=num_classes, padding=settings.padding,
            activation=settings.activation, bn_eps=settings.bn_eps,
        )

    @staticmethod
    def channel_counts(alpha: float) -> list[int]:
        """Output channels of the stem and of each of the 13 blocks at width ``alpha``."""
        return [scaled_channels(STEM_CHANNELS, alpha)] + [
            scaled_channels(c, alpha) for _, c in BLOCKS
        ]


def check_alpha(alpha: float) -> None:
    if not isinstance(alpha, (int, float)) or not math.isfinite(alpha) or alpha <= 0:
        raise InvalidValueError(f"alpha must be a number > 0, got {alpha!r}")


def check_res(res: int) -> None:
    if (
        not isinstance(res, int)
        or res % RES_STEP
        or not MIN_RES <= res <= MAX_RES
    ):
        raise InvalidValueError(
            f"resolution must be a multiple of {RES_STEP} from {MIN_RES} to {MAX_RES}, got {res!r}"
        )


class ReLU6(nn.Module):
    """ReLU6 that traces to ``aten::relu6`` and so to MIL ``relu6``.

    ``nn.ReLU6`` traces to ``hardtanh``, which coremltools lowers to ``clip``; its W8A8 pass
    only recognises conv -> ``relu6`` (not ``clip``), so with ``clip`` it quantizes the conv's
    raw output and then the clipped value again: two quantize/dequantize pairs per conv, the
    first spending half the int8 range on negatives the clip then discards.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.relu6(x)


class ConvBnAct(nn.Module):
    """conv (no bias) -> BatchNorm -> ReLU/ReLU6, with torch or TF-SAME padding."""

    def __init__(
        self,
        in_ch: int,
        out_ch: int,
        kernel: int,
        stride: int,
        groups: int,
        cfg: MobileNetConfig,
    ) -> None:
        super().__init__()
        if kernel == 1:
            pad: int | tuple[int, int, int, int] = 0
        elif cfg.padding == "tf" and stride == 2:
            pad = (0, 1, 0, 1)  # SAME on an even input: left/top 0, right/bottom 1
        else:
            pad = kernel // 2
        self.asym_pad = pad if isinstance(pad, tuple) else None
        self.conv = nn.Conv2d(
            in_ch,
            out_ch,
            kernel,
            stride=stride,
            padding=0 if self.asym_pad else pad,
            groups=groups,
            bias=False,
        )
        self.bn = nn.BatchNorm2d(out_ch, eps=cfg.bn_eps)
        self.act = ReLU6() if cfg.activation == "relu6" else nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.asym_pad is not None:
            x = nn.functional.pad(x, self.asym_pad)
        return self.act(self.bn(self.conv(x)))


class DepthwiseSeparable(nn.Module):
    """Table 1's "Conv dw / s" + "Conv 1x1" pair, each followed by BN and activation."""

    def __init__(self, in_ch: int, out_ch: int, stride: int, cfg: MobileNetConfig) -> None:
        super().__init__()
        self.dw = ConvBnAct(in_ch, in_ch, 3, stride, in_ch, cfg)
        self.pw = ConvBnAct(in_ch, out_ch, 1, 1, 1, cfg)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pw(self.dw(x))


class MobileNetV1(nn.Module):
    """MobileNet V1 returning logits (no softmax); input is normalised NCHW float RGB."""

    def __init__(self, cfg: MobileNetConfig | None = None) -> None:
        super().__init__()
        self.cfg = cfg = cfg or MobileNetConfig()
        chans = cfg.channels
        self.stem = ConvBnAct(3, chans[0], 3, 2, 1, cfg)
        self.blocks = nn.Sequential(
            *(
                DepthwiseSeparable(chans[i], chans[i + 1], stride, cfg)
                for i, (stride, _) in enumerate(BLOCKS)
            )
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(chans[-1], cfg.num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.blocks(self.stem(x))).flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.forward_features(x))


def weight_keys(model: nn.Module) -> dict[str, tuple[int, ...]]:
    """The weight contract: every parameter and BN statistic with its shape.

    ``num_batches_tracked`` is left out: it does not affect inference, and checkpoints from other
    libraries do not carry it.
    """
    return {
        k: tuple(v.shape)
        for k, v in model.state_dict().items()
        if not k.endswith("num_batches_tracked")
    }


def key_problems(missing: list[str], unexpected: list[str], wrong: list[str]) -> list[str]:
    """The parts of a "does not fit" message, each naming every offending key."""
    parts = (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong))
    return [f"{what} {', '.join(keys)}" for what, keys in parts if keys]


def feature_channels(alpha: float) -> int:
    """Channels the classifier sees: the last pointwise conv's filters."""
    return scaled_channels(BLOCKS[-1][1], alpha)


def alpha_from_channels(channels: list[int]) -> float | None:
    """The width multiplier that gives exactly these 14 channel counts (stem + 13 blocks).

    Prefers a round value (0.25 rather than 0.2500001) so messages and metadata read well.
    None when no alpha produces them (not a MobileNet V1, or a hand-edited one).
    """
    if len(channels) != len(BLOCKS) + 1 or channels[-1] < MIN_CHANNELS:
        return None
    raw = channels[-1] / BLOCKS[-1][1]
    for alpha in (round(raw, 2), round(raw, 3), round(raw, 4), raw):
        if alpha > 0 and MobileNetConfig.channel_counts(alpha) == list(channels):
            return alpha
    return None


def infer_alpha(state_dict: Mapping[str, torch.Tensor]) -> float | None:
    """The alpha a state dict in our layout was made at, from its conv shapes; None if unclear."""
    keys = ["stem.conv.weight"] + [f"blocks.{i}.pw.conv.weight" for i in range(len(BLOCKS))]
    shapes = [tuple(state_dict[k].shape) if k in state_dict else () for k in keys]
    if any(len(s) != 4 for s in shapes):
        return None
    return alpha_from_channels([s[0] for s in shapes])


def check_state_dict(
    model: MobileNetV1, state_dict: Mapping[str, torch.Tensor], origin: str
) -> None:
    """Raise one WeightsError naming every missing, unexpected and wrongly shaped key."""
    expected = weight_keys(model)
    got = {
        k: tuple(v.shape) for k, v in state_dict.items() if not k.endswith("num_batches_tracked")
    }
    cfg = model.cfg
    held = infer_alpha(state_dict)
    if held is not None and scaled_channels(BLOCKS[-1][1], held) != feature_channels(cfg.alpha):
        raise WeightsError(
            f"{origin} holds MobileNet V1 alpha={held:g} weights, not alpha={cfg.alpha:g} "
            f"(blocks.12.pw.conv.weight has {got[f'blocks.{len(BLOCKS) - 1}.pw.conv.weight'][0]} "
            f"filters, expected {feature_channels(cfg.alpha)}): pass --alpha {held:g}"
        )
    fc = got.get("classifier.weight")
    if fc is not None and len(fc) == 2 and fc[1] != feature_channels(cfg.alpha):
        raise WeightsError(
            f"{origin}: classifier.weight has shape {fc}, but the network's features have "
            f"{feature_channels(cfg.alpha)} channels (alpha={cfg.alpha:g}); the classifier "
            "does not belong to these convolutions"
        )
    missing = sorted(set(expected) - set(got))
    unexpected = sorted(set(got) - set(expected))
    wrong = sorted(
        f"{k} {got[k]} (expected {expected[k]})" for k in set(got) & set(expected)
        if got[k] != expected[k]
    )
    problems = key_problems(missing, unexpected, wrong)
    if problems:
        raise WeightsError(
            f"{origin} does not fit MobileNet V1 alpha={cfg.alpha:g} res={cfg.res} "
            f"with {cfg.num_classes} classes: " + "; ".join(problems)
            + ". Check --alpha, or pass weights saved from this tool's model layout."
        )


def num_classes_of(state_dict: Mapping[str, torch.Tensor], origin: str) -> int:
    """The class count a checkpoint's classifier defines: the rows of ``classifier.weight``.

    The bias and the columns are checked against it by :func:`check_state_dict`.
    """
    fc = state_dict.get("classifier.weight")
    if fc is None or fc.dim() != 2:
        shape = "absent" if fc is None else f"of shape {tuple(fc.shape)}"
        raise WeightsError(
            f"{origin} has no usable classifier (classifier.weight is {shape}; expected "
            "(num_classes, channels))"
        )
    n = int(fc.shape[0])
    if n < 1:
        raise WeightsError(f"{origin}: the classifier has 0 classes")
    return n


class ArchLike(Protocol):
    """What :func:`build_model` reads from weights settings (``weights.ArchSettings``)."""

    padding: Padding
    activation: Activation
    bn_eps: float


class WeightsLike(Protocol):
    """What :func:`build_model` reads from loaded weights (``weights.LoadedWeights``)."""

    state_dict: dict[str, torch.Tensor]
    spec: str
    settings: ArchLike


def build_model(
    alpha: float, res: int, weights: WeightsLike, num_classes: int | None = None
) -> MobileNetV1:
    """The eval-mode PyTorch model for ``weights``, after the strict key and shape check.

    The class count is the checkpoint's own (its classifier's rows) unless ``num_classes``
    is given, in which case the checkpoint must have exactly that many.
    """
    n = num_classes_of(weights.state_dict, weights.spec)
    if num_classes is not None and num_classes != n:
        raise WeightsError(
            f"{weights.spec} has {n} classes, not the {num_classes} asked for"
        )
    model = MobileNetV1(MobileNetConfig.for_settings(alpha, res, weights.settings, n))
    check_state_dict(model, weights.state_dict, weights.spec)
    model.load_state_dict(weights.state_dict, strict=False)
    return model.eval()
