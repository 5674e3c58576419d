"""Per-layer parameter and mult-add counts, measured on the model itself.

Counting rules (the paper's, made explicit):

* Mult-adds count convolutions and the FC layer only: ``k*k*(Cin/groups)*Cout*Hout*Wout`` for a
  conv and ``Cin*Cout`` for the FC. BatchNorm, activations, bias adds and the average pool are
  not counted (at inference BN folds into the conv; the paper counts none of them).
  For 1.0-224 this gives 568,740,352, the paper's "569 million".
* Parameters count what is trained: conv weights, BatchNorm scale and shift (2 per channel), and
  the FC weight and bias. BN running statistics are not parameters. For 1.0-224: 4,231,976.

The shapes come from a forward pass on the ``meta`` device, so nothing is computed and even
1024 x 1024 is instant; the numbers are read off the real modules, not a second copy of Table 1.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

from .catalog import published_accuracy
from .model import ConvBnAct, MobileNetConfig, MobileNetV1

#: The paper's published numbers (millions), which `summary` must reproduce.
#: Table 6: width multiplier at 224. Table 7: alpha=1.0 at lower resolutions; the paper obtained
#: those rows by scaling the 224 count by (r/224)^2, FC included, and rounding.
PAPER_TABLE6 = {1.0: (569, 4.2), 0.75: (325, 2.6), 0.5: (149, 1.3), 0.25: (41, 0.5)}
PAPER_TABLE7 = {224: 569, 192: 418, 160: 290, 128: 186}


@dataclass(frozen=True)
class LayerRow:
    name: str
    type: str
    stride: int
    input_shape: tuple[int, ...]
    output_shape: tuple[int, ...]
    params: int
    macs: int


@dataclass(frozen=True)
class ModelSummary:
    config: MobileNetConfig
    layers: tuple[LayerRow, ...]

    @property
    def params(self) -> int:
        return sum(r.params for r in self.layers)

    @property
    def macs(self) -> int:
        return sum(r.macs for r in self.layers)

    def to_json(self) -> dict[str, object]:
        return {
            "alpha": self.config.alpha,
            "res": self.config.res,
            "num_classes": self.config.num_classes,
            "params": self.params,
            "macs": self.macs,
            "layers": [asdict(r) for r in self.layers],
        }


def _layer_type(block: ConvBnAct) -> str:
    conv = block.conv
    if conv.groups > 1:
        return "conv dw"
    return "conv pw" if conv.kernel_size == (1, 1) else "conv"


def summarize(cfg: MobileNetConfig) -> ModelSummary:
    """Count params and mult-adds of every layer of the model ``cfg`` builds."""
    with torch.device("meta"):
        model = MobileNetV1(cfg).eval()
    rows: list[LayerRow] = []

    def hook(name: str, module: nn.Module):
        def record(_m: nn.Module, args: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
            in_shape = tuple(args[0].shape[1:])
            out_shape = tuple(out.shape[1:])
            if isinstance(module, ConvBnAct):
                conv, bn = module.conv, module.bn
                k_h, k_w = conv.kernel_size
                macs = k_h * k_w * (conv.in_channels // conv.groups) * out.shape[1:].numel()
                params = conv.weight.numel() + bn.weight.numel() + bn.bias.numel()
                rows.append(
                    LayerRow(name, _layer_type(module), conv.stride[0], in_shape, out_shape,
                             params, macs)
                )
            elif isinstance(module, nn.AdaptiveAvgPool2d):
                rows.append(LayerRow(name, "avg pool", 1, in_shape, out_shape, 0, 0))
            elif isinstance(module, nn.Linear):
                params = module.weight.numel() + module.bias.numel()
                rows.append(
                    LayerRow(name, "fc", 1, in_shape, out_shape, params, module.weight.numel())
                )

        return record

    for name, module in model.named_modules():
        if isinstance(module, (ConvBnAct, nn.AdaptiveAvgPool2d, nn.Linear)):
            module.register_forward_hook(hook(name, module))
    with torch.no_grad():
        model(torch.empty(1, 3, cfg.res, cfg.res, device="meta"))
    return ModelSummary(cfg, tuple(rows))


def paper_macs_millions(alpha: float, res: int) -> int:
    """Mult-adds in millions the way the paper's Tables 6 and 7 print them.

    Table 6 (224) rounds the exact count. Table 7 scales the 224 count by (r/224)^2; the exact
    count at 160 is 290.68M, which the paper prints as 290 because of that scaling.
    """
    at_224 = summarize(MobileNetConfig(alpha=alpha, res=224)).macs
    return round(at_224 * (res / 224) ** 2 / 1e6)


PAPER_ALPHAS = (1.0, 0.75, 0.5, 0.25)
PAPER_RESOLUTIONS = (224, 192, 160, 128)


def variants_markdown() -> str:
    """The 16 alpha x resolution variants as a markdown table (the README embeds this output).

    Top-1 is the published ImageNet accuracy: the Keras file's own where Keras lists it (224),
    else the 2017 TF-slim checkpoint the Keras files were converted from.
    """
    lines = [
        "| alpha | res | params | mult-adds (exact) | mult-adds (paper, M) | paper top-1 "
        "| slim 2017 top-1 | Keras top-1 |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]

    def pct(value: float | None) -> str:
        return "-" if value is None else f"{value:g}"

    for alpha in PAPER_ALPHAS:
        for res in PAPER_RESOLUTIONS:
            s = summarize(MobileNetConfig(alpha=alpha, res=res))
            acc = published_accuracy(alpha, res) or {}
            lines.append(
                f"| {alpha} | {res} | {s.params:,} | {s.macs:,} | "
                f"{paper_macs_millions(alpha, res)} | {pct(acc.get('paper_top1'))} | "
                f"{pct(acc.get('slim2017_top1'))} | {pct(acc.get('keras_top1'))} |"
            )
    return "\n".join(lines)
