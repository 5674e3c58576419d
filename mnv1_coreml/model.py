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
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

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
        if self.num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {self.num_classes!r}")

    @property
    def channels(self) -> list[int]:
        """Output channels of the stem and of each of the 13 blocks."""
        return [scaled_channels(STEM_CHANNELS, self.alpha)] + [
            scaled_channels(c, self.alpha) for _, c in BLOCKS
        ]


def check_alpha(alpha: float) -> None:
    if not isinstance(alpha, (int, float)) or not math.isfinite(alpha) or alpha <= 0:
        raise ValueError(f"alpha must be a number > 0, got {alpha!r}")


def check_res(res: int) -> None:
    if (
        not isinstance(res, int)
        or res % RES_STEP
        or not MIN_RES <= res <= MAX_RES
    ):
        raise ValueError(
            f"resolution must be a multiple of {RES_STEP} from {MIN_RES} to {MAX_RES}, got {res!r}"
        )


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
        self.act = nn.ReLU6() if cfg.activation == "relu6" else nn.ReLU()

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
