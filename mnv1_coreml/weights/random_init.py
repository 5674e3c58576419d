"""Seeded random weights whose logits mean something.

Plain ``nn.init`` leaves BatchNorm at mean 0 / var 1, so activations drift and collapse with
depth, and fp16 or palettization comparisons on such a net measure noise. Instead: He-normal
conv weights (fan-out, as timm and torchvision train MobileNets), BN scale and shift drawn
around 1 and 0, then the running statistics are *calibrated* by one train-mode pass over seeded
smooth pictures, so every layer sees normalised activations as in a trained network.

The BN shift is drawn around +0.75, not 0: with shifts centred on 0, half the units sit at the
ReLU kink and the net is chaotic (a relative perturbation grows ~1.2x per layer), so fp16
rounding alone moved logits by 0.17 and 8-bit palettization flipped top-1s: measured, not what
trained MobileNets do (the Keras- and timm-written fixtures move by ~2e-3 in fp16). With the
shift at +0.75 the fp16 error drops ~10x while photos still get different top-1 classes. The FC
layer is He-scaled x2, so class logits spread by a couple of units, as trained ones do.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..model import MobileNetConfig, MobileNetV1
from .settings import ArchSettings, LoadedWeights, state_dict_sha256

CALIBRATION_IMAGES = 4
BN_SHIFT_MEAN = 0.75
FC_GAIN = 2.0


def smooth_pictures(n: int, res: int, generator: torch.Generator) -> torch.Tensor:
    """(n, 3, res, res) uint8-range pictures: upsampled noise, like blurry natural images."""
    coarse = torch.rand(n, 3, 7, 7, generator=generator) * 255.0
    fine = torch.rand(n, 3, 28, 28, generator=generator) * 64.0 - 32.0
    x = F.interpolate(coarse, size=(res, res), mode="bicubic", align_corners=False)
    x = x + F.interpolate(fine, size=(res, res), mode="bilinear", align_corners=False)
    return x.clamp(0, 255).round()


def smooth_images(n: int, res: int, seed: int) -> np.ndarray:
    """The same pictures as uint8 (n, res, res, 3) RGB arrays, from their own seed."""
    pictures = smooth_pictures(n, res, torch.Generator().manual_seed(seed))
    return pictures.permute(0, 2, 3, 1).to(torch.uint8).numpy()


@torch.no_grad()
def random_weights(
    alpha: float, res: int, seed: int, settings: ArchSettings, num_classes: int = 1000
) -> LoadedWeights:
    """Deterministic for given (alpha, res, seed, settings, classes), whatever the thread count."""
    cfg = MobileNetConfig.for_settings(alpha, res, settings, num_classes)
    g = torch.Generator().manual_seed(seed)
    model = MobileNetV1(cfg)
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            fan_out = m.out_channels // m.groups * m.kernel_size[0] * m.kernel_size[1]
            m.weight.normal_(0.0, math.sqrt(2.0 / fan_out), generator=g)
        elif isinstance(m, nn.BatchNorm2d):
            m.weight.uniform_(0.7, 1.3, generator=g)
            m.bias.normal_(BN_SHIFT_MEAN, 0.25, generator=g)
            m.momentum = None  # cumulative average: running stats = calibration batch stats
        elif isinstance(m, nn.Linear):
            m.weight.normal_(0.0, FC_GAIN * math.sqrt(2.0 / m.in_features), generator=g)
            m.bias.normal_(0.0, 0.1, generator=g)
    pixels = smooth_pictures(CALIBRATION_IMAGES, res, g)
    images = pixels.permute(0, 2, 3, 1).to(torch.uint8).numpy()
    # Calibrate in float64, then round the statistics to float32: the float32 sums' order
    # depends on torch's thread count, which would make the weights (and their SHA-256, which
    # goldens are found by) differ between a 2-thread process and a 1-thread zoo worker.
    model.double().train()
    model(settings.normalization.apply(images).double())
    model.float().eval()
    state = {k: v.clone() for k, v in model.state_dict().items()
             if not k.endswith("num_batches_tracked")}
    return LoadedWeights(
        state, "random", f"random:{seed}", state_dict_sha256(state), settings, format="random"
    )
