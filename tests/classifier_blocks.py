"""Small hand-written versions of common image-classifier families, built from the blocks
timm uses (timm itself cannot be installed beside this torch build).

Each keeps the family's distinctive ops: MobileNet V2's inverted residuals with ReLU6,
MobileNet V3's hard-swish and hard-sigmoid squeeze-excite, EfficientNet's SiLU MBConv with a
sigmoid SE, GhostNet's ghost modules (concat then slice), ConvNeXt's 7x7 depthwise conv with
channels-last LayerNorm, GELU MLP and layer scale, ResNet's basic blocks and max pool,
RegNet's group convs with SE, and a ViT's class token, position embedding, multi-head
attention and pre-norm MLP. Random weights; BatchNorm statistics are randomised too, so that
folding them is exercised. Used by ``tests/test_mil_classifiers.py`` and
``benchmarks/classifiers.py``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn


def conv_bn(
    cin: int,
    cout: int,
    k: int = 3,
    s: int = 1,
    groups: int = 1,
    act: type[nn.Module] | None = nn.ReLU,
) -> nn.Sequential:
    layers: list[nn.Module] = [
        nn.Conv2d(cin, cout, k, s, k // 2, groups=groups, bias=False),
        nn.BatchNorm2d(cout),
    ]
    if act is not None:
        layers.append(act())
    return nn.Sequential(*layers)


class SqueezeExcite(nn.Module):
    """Global pool, reduce, activation, expand, gate, scale (timm's SqueezeExcite)."""

    def __init__(
        self, c: int, rd: int, act: type[nn.Module] = nn.ReLU, gate: type[nn.Module] = nn.Sigmoid
    ) -> None:
        super().__init__()
        self.reduce = nn.Conv2d(c, rd, 1)
        self.act = act()
        self.expand = nn.Conv2d(rd, c, 1)
        self.gate = gate()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = x.mean((2, 3), keepdim=True)
        return x * self.gate(self.expand(self.act(self.reduce(s))))


class InvertedResidual(nn.Module):
    """MobileNet V2 / V3 and EfficientNet's MBConv: expand, depthwise, (SE), project."""

    def __init__(
        self,
        cin: int,
        cout: int,
        expand: int,
        k: int,
        s: int,
        act: type[nn.Module],
        se: Callable[[int], nn.Module] | None = None,
    ) -> None:
        super().__init__()
        mid = cin * expand
        self.expand = conv_bn(cin, mid, 1, act=act) if expand != 1 else nn.Identity()
        self.dw = conv_bn(mid, mid, k, s, groups=mid, act=act)
        self.se = se(mid) if se is not None else nn.Identity()
        self.project = conv_bn(mid, cout, 1, act=None)
        self.residual = s == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.project(self.se(self.dw(self.expand(x))))
        return x + y if self.residual else y


class Classifier(nn.Module):
    """stem -> blocks -> head conv -> global average pool -> linear."""

    def __init__(
        self,
        stem: nn.Module,
        blocks: list[nn.Module],
        head: nn.Module,
        features: int,
        classes: int = 10,
    ) -> None:
        super().__init__()
        self.stem, self.blocks, self.head = stem, nn.Sequential(*blocks), head
        self.fc = nn.Linear(features, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.head(self.blocks(self.stem(x)))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def mobilenet_v2() -> nn.Module:
    blocks = [
        InvertedResidual(16, 16, 1, 3, 1, nn.ReLU6),
        InvertedResidual(16, 24, 6, 3, 2, nn.ReLU6),
        InvertedResidual(24, 24, 6, 3, 1, nn.ReLU6),
    ]
    return Classifier(
        conv_bn(3, 16, 3, 2, act=nn.ReLU6), blocks, conv_bn(24, 64, 1, act=nn.ReLU6), 64
    )


def mobilenet_v3() -> nn.Module:
    def se(c: int) -> nn.Module:
        return SqueezeExcite(c, max(8, c // 4), nn.ReLU, nn.Hardsigmoid)

    blocks = [
        InvertedResidual(16, 16, 1, 3, 2, nn.ReLU, se),
        InvertedResidual(16, 24, 4, 3, 2, nn.ReLU),
        InvertedResidual(24, 24, 3, 5, 1, nn.Hardswish, se),
    ]
    return Classifier(
        conv_bn(3, 16, 3, 2, act=nn.Hardswish), blocks, conv_bn(24, 64, 1, act=nn.Hardswish), 64
    )


def efficientnet_b0() -> nn.Module:
    def se(c: int) -> nn.Module:
        return SqueezeExcite(c, max(4, c // 24), nn.SiLU, nn.Sigmoid)

    blocks = [
        InvertedResidual(16, 16, 1, 3, 1, nn.SiLU, se),
        InvertedResidual(16, 24, 6, 3, 2, nn.SiLU, se),
        InvertedResidual(24, 24, 6, 5, 1, nn.SiLU, se),
    ]
    return Classifier(
        conv_bn(3, 16, 3, 2, act=nn.SiLU), blocks, conv_bn(24, 64, 1, act=nn.SiLU), 64
    )


class GhostModule(nn.Module):
    """Half the channels from a 1x1 conv, half from a cheap depthwise conv on them."""

    def __init__(self, cin: int, cout: int, relu: bool = True) -> None:
        super().__init__()
        self.cout = cout
        init = (cout + 1) // 2
        act = nn.ReLU if relu else None
        self.primary = conv_bn(cin, init, 1, act=act)
        self.cheap = conv_bn(init, init, 3, groups=init, act=act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1 = self.primary(x)
        return torch.cat([x1, self.cheap(x1)], dim=1)[:, : self.cout]


class GhostBottleneck(nn.Module):
    def __init__(self, cin: int, mid: int, cout: int, s: int, se: bool) -> None:
        super().__init__()
        self.ghost1 = GhostModule(cin, mid)
        self.dw = conv_bn(mid, mid, 3, s, groups=mid, act=None) if s > 1 else nn.Identity()
        self.se = (
            SqueezeExcite(mid, max(4, mid // 4), nn.ReLU, nn.Hardsigmoid) if se else nn.Identity()
        )
        self.ghost2 = GhostModule(mid, cout, relu=False)
        self.shortcut = (
            nn.Identity()
            if s == 1 and cin == cout
            else nn.Sequential(
                conv_bn(cin, cin, 3, s, groups=cin, act=None), conv_bn(cin, cout, 1, act=None)
            )
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.ghost2(self.se(self.dw(self.ghost1(x)))) + self.shortcut(x)


def ghostnet() -> nn.Module:
    # 47 and 71 channels: the ghost modules' concat (48, 72) is sliced, as in timm's widths.
    blocks = [
        GhostBottleneck(16, 16, 16, 1, False),
        GhostBottleneck(16, 47, 24, 2, False),
        GhostBottleneck(24, 71, 24, 1, True),
        GhostBottleneck(24, 72, 40, 2, True),
    ]
    return Classifier(conv_bn(3, 16, 3, 2), blocks, conv_bn(40, 96, 1), 96)


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over channels of an NCHW tensor (timm's, via permutes)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class ConvNeXtBlock(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.dw = nn.Conv2d(c, c, 7, padding=3, groups=c)
        self.norm = nn.LayerNorm(c, eps=1e-6)
        self.fc1, self.fc2 = nn.Linear(c, 4 * c), nn.Linear(4 * c, c)
        self.act = nn.GELU()
        self.gamma = nn.Parameter(torch.full((c,), 0.5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.norm(self.dw(x).permute(0, 2, 3, 1))
        y = self.gamma * self.fc2(self.act(self.fc1(y)))
        return x + y.permute(0, 3, 1, 2)


class ConvNeXt(nn.Module):
    def __init__(self, dims: tuple[int, int] = (24, 48), classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, dims[0], 4, 4), LayerNorm2d(dims[0], eps=1e-6))
        self.stage1 = nn.Sequential(ConvNeXtBlock(dims[0]), ConvNeXtBlock(dims[0]))
        self.down = nn.Sequential(LayerNorm2d(dims[0], eps=1e-6), nn.Conv2d(dims[0], dims[1], 2, 2))
        self.stage2 = ConvNeXtBlock(dims[1])
        self.norm = nn.LayerNorm(dims[1], eps=1e-6)
        self.fc = nn.Linear(dims[1], classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stage2(self.down(self.stage1(self.stem(x))))
        return self.fc(self.norm(x.mean((2, 3))))


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, s: int) -> None:
        super().__init__()
        self.c1, self.c2 = conv_bn(cin, cout, 3, s), conv_bn(cout, cout, 3, act=None)
        self.down = conv_bn(cin, cout, 1, s, act=None) if s != 1 or cin != cout else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.c2(self.c1(x)) + self.down(x))


def resnet() -> nn.Module:
    stem = nn.Sequential(conv_bn(3, 16, 7, 2), nn.MaxPool2d(3, 2, 1))
    return Classifier(stem, [BasicBlock(16, 16, 1), BasicBlock(16, 32, 2)], nn.Identity(), 32)


class RegNetBlock(nn.Module):
    """RegNetY's bottleneck: 1x1, 3x3 group conv (group width 8), SE, 1x1, residual."""

    def __init__(self, cin: int, cout: int, s: int) -> None:
        super().__init__()
        self.a = conv_bn(cin, cout, 1)
        self.b = conv_bn(cout, cout, 3, s, groups=cout // 8)
        self.se = SqueezeExcite(cout, max(4, cin // 4))
        self.c = conv_bn(cout, cout, 1, act=None)
        self.down = conv_bn(cin, cout, 1, s, act=None) if s != 1 or cin != cout else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.c(self.se(self.b(self.a(x)))) + self.down(x))


def regnet() -> nn.Module:
    return Classifier(
        conv_bn(3, 16, 3, 2), [RegNetBlock(16, 24, 2), RegNetBlock(24, 24, 1)], nn.Identity(), 24
    )


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int, tokens: int, fused: bool) -> None:
        super().__init__()
        # Static sizes: coremltools cannot convert shape arithmetic on traced ints.
        self.heads, self.tokens, self.dim, self.fused = heads, tokens, dim, fused
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h = self.tokens, self.dim, self.heads
        qkv = self.qkv(x).reshape(-1, n, 3, h, c // h).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        if self.fused:
            y = F.scaled_dot_product_attention(q, k, v)
        else:
            attn = (q * (c // h) ** -0.5) @ k.transpose(-2, -1)
            y = attn.softmax(dim=-1) @ v
        return self.proj(y.transpose(1, 2).reshape(-1, n, c))


class ViTBlock(nn.Module):
    def __init__(self, dim: int, heads: int, tokens: int, fused: bool) -> None:
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(dim, eps=1e-6), nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, heads, tokens, fused)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class ViT(nn.Module):
    """Patch embedding, class token, position embedding, pre-norm blocks, class-token head."""

    def __init__(
        self,
        res: int,
        patch: int = 16,
        dim: int = 32,
        depth: int = 2,
        heads: int = 4,
        fused: bool = False,
        classes: int = 10,
    ) -> None:
        super().__init__()
        self.embed = nn.Conv2d(3, dim, patch, patch)
        self.cls = nn.Parameter(torch.randn(1, 1, dim) * 0.02)
        tokens = (res // patch) ** 2 + 1
        self.pos = nn.Parameter(torch.randn(1, tokens, dim) * 0.02)
        self.blocks = nn.Sequential(*[ViTBlock(dim, heads, tokens, fused) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.head = nn.Linear(dim, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.embed(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls + torch.zeros_like(x[:, :1]), x], dim=1) + self.pos
        x = self.norm(self.blocks(x))
        return self.head(x[:, 0])


def block_mix() -> nn.Module:
    """One network with every CNN family's distinctive block, for a test that converts once:
    MobileNet V3 (hard-swish, hard-sigmoid SE), EfficientNet (SiLU, sigmoid SE), GhostNet
    (sliced ghost concat), RegNetY (group conv), ConvNeXt (channels-last LN, GELU)."""

    def hard_se(c: int) -> nn.Module:
        return SqueezeExcite(c, 8, nn.ReLU, nn.Hardsigmoid)

    def silu_se(c: int) -> nn.Module:
        return SqueezeExcite(c, 4, nn.SiLU, nn.Sigmoid)

    blocks = [InvertedResidual(16, 16, 3, 3, 1, nn.Hardswish, hard_se),
              InvertedResidual(16, 24, 4, 5, 2, nn.SiLU, silu_se),
              GhostBottleneck(24, 47, 24, 1, True), RegNetBlock(24, 32, 1),
              ConvNeXtBlock(32)]
    return Classifier(conv_bn(3, 16, 3, 2, act=nn.Hardswish), blocks,
                      nn.Sequential(LayerNorm2d(32, eps=1e-6), conv_bn(32, 48, 1, act=nn.GELU)),
                      48)


FAMILIES: dict[str, Callable[[int], nn.Module]] = {
    "MobileNet V2": lambda res: mobilenet_v2(),
    "MobileNet V3": lambda res: mobilenet_v3(),
    "EfficientNet-B0": lambda res: efficientnet_b0(),
    "GhostNet": lambda res: ghostnet(),
    "ConvNeXt": lambda res: ConvNeXt(),
    "ResNet": lambda res: resnet(),
    "RegNetY": lambda res: regnet(),
    "ViT": lambda res: ViT(res),
    "ViT (fused attention)": lambda res: ViT(res, fused=True),
    "block mix": lambda res: block_mix(),
}


def randomise(net: nn.Module, seed: int = 0) -> nn.Module:
    """Random BatchNorm statistics and affine parameters (fresh ones are identities), eval."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.num_features, generator=gen) * 0.1)
                m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
                m.weight.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
                m.bias.copy_(torch.randn(m.num_features, generator=gen) * 0.1)
            elif isinstance(m, nn.LayerNorm):
                m.weight.copy_(torch.rand(m.normalized_shape, generator=gen) + 0.5)
                m.bias.copy_(torch.randn(m.normalized_shape, generator=gen) * 0.1)
    return net.eval()


def build(name: str, res: int, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return randomise(FAMILIES[name](res), seed)
