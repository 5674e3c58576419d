"""Leaf: how other libraries name and shape MobileNet V1's tensors, mapped to our layout.

Our layout is documented in :mod:`mnv1_coreml.model`. timm groups the 13 depthwise-separable
blocks into 5 stages (1, 2, 2, 6, 2 blocks), named ``blocks.<stage>.<j>`` with
``conv_dw``/``bn1`` (depthwise) and ``conv_pw``/``bn2`` (pointwise); its stem is
``conv_stem``/``bn1`` and its FC ``classifier``. Keras Applications names layers ``conv1``,
``conv1_bn``, ``conv_dw_<n>``, ``conv_dw_<n>_bn``, ``conv_pw_<n>``, ``conv_pw_<n>_bn`` and, with
``include_top=True``, the 1x1 conv ``conv_preds``; a transfer-learning head is a ``Dense``.

Keras conversions: conv kernels HWIO -> OIHW, depthwise HWC1 -> (C, 1, H, W), ``conv_preds``
(1, 1, Cin, K) and a Dense kernel (Cin, K) -> the (K, Cin) classifier.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch

from ..errors import WeightsError
from ..model import BLOCKS, MobileNetConfig

# --- timm ------------------------------------------------------------------------------------

#: Blocks per stage in timm's mobilenetv1_100 (sums to the paper's 13).
TIMM_STAGES: tuple[int, ...] = (1, 2, 2, 6, 2)
_BN = ("weight", "bias", "running_mean", "running_var")


def timm_key_map() -> dict[str, str]:
    """timm key -> our key, for every tensor of the architecture."""
    m = {"conv_stem.weight": "stem.conv.weight"}
    m.update({f"bn1.{p}": f"stem.bn.{p}" for p in _BN})
    i = 0
    for stage, n in enumerate(TIMM_STAGES):
        for j in range(n):
            t, o = f"blocks.{stage}.{j}", f"blocks.{i}"
            m[f"{t}.conv_dw.weight"] = f"{o}.dw.conv.weight"
            m[f"{t}.conv_pw.weight"] = f"{o}.pw.conv.weight"
            m.update({f"{t}.bn1.{p}": f"{o}.dw.bn.{p}" for p in _BN})
            m.update({f"{t}.bn2.{p}": f"{o}.pw.bn.{p}" for p in _BN})
            i += 1
    m["classifier.weight"] = "classifier.weight"
    m["classifier.bias"] = "classifier.bias"
    return m


def is_timm_layout(keys: object) -> bool:
    """True for a state dict with timm's names (its stem is ``conv_stem``)."""
    return "conv_stem.weight" in keys  # type: ignore[operator]


def refuse_timm_variant(state_dict: Mapping[str, torch.Tensor], origin: object) -> None:
    """A one-line WeightsError for a timm state dict that is not the paper's MobileNet V1.

    ``mobilenetv1_100h`` adds a 1x1 ``conv_head`` + BatchNorm + ReLU6 between the pooled
    features and the classifier (the paper's network feeds the pooled pointwise features
    straight to the FC layer), so its weights cannot be run without that extra layer. Other
    timm models share the ``conv_stem``/``blocks`` names (MobileNet V2/V3, EfficientNet) but
    have other blocks; both are named here rather than as a list of unexpected keys.
    """
    known = timm_key_map()
    extra = sorted(k for k in state_dict if k not in known and not k.endswith(
        "num_batches_tracked"))
    if not extra:
        return
    head = {"conv_head.weight"} | {f"bn2.{p}" for p in _BN}
    if set(extra) <= head and "conv_head.weight" in extra and all(k in state_dict for k in known):
        shape = tuple(state_dict["conv_head.weight"].shape)
        raise WeightsError(
            f"{origin} is timm's mobilenetv1_100h (a 1x1 conv_head {shape} + bn2 between the "
            "pooled features and the classifier), which is not MobileNet V1 as the paper "
            "defines it; use a timm mobilenetv1_100 or mobilenetv1_125 checkpoint"
        )
    raise WeightsError(
        f"{origin} has timm key names but is not timm's MobileNet V1 (mobilenetv1_100/125): "
        f"{len(extra)} keys that network does not have, e.g. {', '.join(extra[:3])} (another "
        "timm model, such as MobileNet V2/V3 or EfficientNet?)"
    )


def timm_to_ours(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename timm keys to ours; ``num_batches_tracked`` is dropped, unknown keys kept as-is."""
    mapping = timm_key_map()
    return {
        mapping.get(k, k): v for k, v in state_dict.items() if not k.endswith("num_batches_tracked")
    }


def ours_to_timm(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The inverse rename, for writing a checkpoint timm can load."""
    inverse = {v: k for k, v in timm_key_map().items()}
    return {inverse.get(k, k): v for k, v in state_dict.items()}


# --- Keras -----------------------------------------------------------------------------------

BN_WEIGHTS: dict[str, str] = {
    "gamma": "weight",
    "beta": "bias",
    "moving_mean": "running_mean",
    "moving_variance": "running_var",
}
ANY = -1  # a dimension the file decides (the number of classes)


@dataclass(frozen=True)
class KerasTensor:
    """One expected dataset: Keras layer and weight name, our key, and the Keras shape."""

    layer: str
    weight: str  # base name without the ":0" suffix
    ours: str
    shape: tuple[int, ...]

    @property
    def name(self) -> str:
        return f"{self.layer}/{self.weight}:0"


def keras_base_layout(alpha: float) -> list[KerasTensor]:
    """Every tensor of a Keras ``MobileNet(alpha, include_top=False)`` base, in our terms."""
    ch = MobileNetConfig.channel_counts(alpha)
    out = [KerasTensor("conv1", "kernel", "stem.conv.weight", (3, 3, 3, ch[0]))]
    out += _bn("conv1_bn", "stem.bn", ch[0])
    for i in range(len(BLOCKS)):
        n, cin, cout = i + 1, ch[i], ch[i + 1]
        out.append(
            KerasTensor(f"conv_dw_{n}", "depthwise_kernel", f"blocks.{i}.dw.conv.weight",
                        (3, 3, cin, 1))
        )
        out += _bn(f"conv_dw_{n}_bn", f"blocks.{i}.dw.bn", cin)
        out.append(
            KerasTensor(f"conv_pw_{n}", "kernel", f"blocks.{i}.pw.conv.weight", (1, 1, cin, cout))
        )
        out += _bn(f"conv_pw_{n}_bn", f"blocks.{i}.pw.bn", cout)
    return out


def keras_top_layout(alpha: float) -> list[KerasTensor]:
    """The ``include_top=True`` classifier: ``conv_preds``, a 1x1 conv with K filters + bias."""
    c = MobileNetConfig.channel_counts(alpha)[-1]
    return [
        KerasTensor("conv_preds", "kernel", "classifier.weight", (1, 1, c, ANY)),
        KerasTensor("conv_preds", "bias", "classifier.bias", (ANY,)),
    ]


def keras_dense_layout(layer: str, alpha: float) -> list[KerasTensor]:
    """A transfer-learning ``Dense(K)`` head named ``layer``: kernel (C, K) and bias (K,)."""
    c = MobileNetConfig.channel_counts(alpha)[-1]
    return [
        KerasTensor(layer, "kernel", "classifier.weight", (c, ANY)),
        KerasTensor(layer, "bias", "classifier.bias", (ANY,)),
    ]


def keras_layout(alpha: float) -> list[KerasTensor]:
    """Every tensor a Keras ``MobileNet(alpha, include_top=True)`` file holds, in our terms."""
    return keras_base_layout(alpha) + keras_top_layout(alpha)


def _bn(layer: str, prefix: str, channels: int) -> list[KerasTensor]:
    return [KerasTensor(layer, k, f"{prefix}.{v}", (channels,)) for k, v in BN_WEIGHTS.items()]


def shape_fits(shape: tuple[int, ...], expected: tuple[int, ...]) -> bool:
    """Equal shapes, where ``ANY`` in ``expected`` matches any size."""
    return len(shape) == len(expected) and all(
        e in (ANY, s) for s, e in zip(shape, expected, strict=True)
    )


def shown(shape: tuple[int, ...]) -> tuple[int | str, ...]:
    """An expected shape for a message: ``ANY`` printed as ``K`` (the class count)."""
    return tuple("K" if d == ANY else d for d in shape)


def keras_to_ours(t: KerasTensor, array: np.ndarray) -> torch.Tensor:
    """A Keras array in our layout (float32, contiguous)."""
    if t.weight == "depthwise_kernel":
        array = array.transpose(2, 3, 0, 1)  # H W C 1 -> C 1 H W
    elif t.ours == "classifier.weight":
        array = (array[0, 0] if array.ndim == 4 else array).T  # (1 1) Cin K -> K Cin
    elif t.weight == "kernel":
        array = array.transpose(3, 2, 0, 1)  # H W I O -> O I H W
    return torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))
