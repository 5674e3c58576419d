"""PyTorch modules converted by coremltools, run by the interpreter, compared with PyTorch.

One module per op family (activations; normalisation and reductions; tensor ops) and the
blocks of common classifier families (``tests/classifier_blocks.py``), each converted once
per module at fp32 and fp16. fp32 must match PyTorch to 1e-5 relative (to the output's
largest magnitude); fp16 within what rounding every op's result to fp16 explains: 2^-9
relative (4 half-ulps) for a few ops, 4e-3 for whole networks of ~50 ops, which measure
about 5e-4 to 9e-4 (``benchmarks/classifiers.py`` runs every family at 160x160).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from mnv1_coreml.mil import ReferenceModel
from mnv1_coreml.mil.loader import ct

from .classifier_blocks import build

FP32_REL = 1e-5


class Activations(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.prelu = nn.PReLU(3)
        with torch.no_grad():
            self.prelu.weight.copy_(torch.tensor([0.1, -0.3, 1.5]))
        self.acts = nn.ModuleList([
            nn.Hardswish(), nn.Hardsigmoid(), nn.SiLU(), nn.Sigmoid(), nn.GELU(),
            nn.GELU(approximate="tanh"), nn.LeakyReLU(0.2), nn.ELU(0.7), nn.Softplus(),
            nn.Tanh(), nn.Mish(), self.prelu,
        ])

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return (*[act(x) for act in self.acts], torch.exp(x / 2), torch.sqrt(torch.abs(x)),
                torch.rsqrt(torch.abs(x) + 1))


class Norms(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.ln_last = nn.LayerNorm(6, eps=1e-3)
        self.ln_two = nn.LayerNorm((4, 6), eps=1e-6)
        self.ln_plain = nn.LayerNorm(6, elementwise_affine=False)
        with torch.no_grad():
            for ln in (self.ln_last, self.ln_two):
                ln.weight.uniform_(0.5, 2.0)
                ln.bias.uniform_(-1.0, 1.0)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return (self.ln_last(x), self.ln_two(x), self.ln_plain(x * 3 + 1),
                x.amax(dim=1, keepdim=True), x.sum(dim=(2, 3)), torch.flatten(x, 1),
                x.amin(dim=-1))


class TensorOps(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.up = nn.Upsample(scale_factor=2, mode="nearest")

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        a, b = torch.split(x, [1, 2], dim=1)
        y = torch.cat([x, x * 2, b], dim=1)[:, 1:7:2]
        return (y, a + 1, b[:, :, -3:], x[:, 0], self.up(x), torch.chunk(x, 2, dim=-1)[1],
                torch.einsum("nchw,nwhu->nchu", x[:, :, :, :4], x.permute(0, 3, 2, 1)[:, :4]))


MODULES = {"activations": Activations, "norms": Norms, "tensor_ops": TensorOps}
SHAPE = (1, 3, 4, 6)


def convert(net: nn.Module, shape: tuple[int, ...], precision: str, path,
            target=ct.target.iOS15) -> ReferenceModel:
    traced = torch.jit.trace(net, torch.rand(shape))
    mlmodel = ct.convert(
        traced, inputs=[ct.TensorType(name="x", shape=shape)], convert_to="mlprogram",
        compute_precision=ct.precision.FLOAT16 if precision == "fp16" else ct.precision.FLOAT32,
        minimum_deployment_target=target, skip_model_load=True)
    mlmodel.save(str(path))
    return ReferenceModel.load(path)


@pytest.fixture(scope="module")
def op_modules(tmp_path_factory):
    root = tmp_path_factory.mktemp("families")
    made = {}
    for name, cls in MODULES.items():
        torch.manual_seed(0)
        net = cls().eval()
        for precision in ("fp32", "fp16"):
            made[name, precision] = net, convert(net, SHAPE, precision,
                                                 root / f"{name}_{precision}.mlpackage")
    return made


def _outputs(model: ReferenceModel, x: np.ndarray) -> list[np.ndarray]:
    res = model.run({"x": x})
    return [res[name].astype(np.float32) for name in model.output_names]


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
@pytest.mark.parametrize("name", sorted(MODULES))
def test_op_family_matches_pytorch(name, precision, op_modules):
    net, model = op_modules[name, precision]
    x = (torch.randn(3, *SHAPE[1:], generator=torch.Generator().manual_seed(1)) * 2)
    x[0, 0, 0, :4] = torch.tensor([-3.0, 3.0, 0.0, -0.5])  # hard-swish / hard-sigmoid knees
    if precision == "fp16":  # the program casts its fp32 input to fp16 first
        x = x.half().float()
    with torch.no_grad():
        want = [t.numpy() for t in net(x)]
    got = _outputs(model, x.numpy())
    assert len(got) == len(want)
    rel = FP32_REL if precision == "fp32" else 2.0**-9
    for i, (g, w) in enumerate(zip(got, want, strict=True)):
        assert g.shape == w.shape, i
        err = np.abs(g - w).max() / max(np.abs(w).max(), 1e-6)
        assert err <= rel, f"output {i}: relative error {err:.2e}"


def test_op_families_use_the_new_kernels(op_modules):
    used = {t for key, (_, m) in op_modules.items() for t, _ in m.operations}
    assert {"sigmoid_hard", "thresholded_relu", "silu", "sigmoid", "gelu", "leaky_relu", "elu",
            "softplus", "tanh", "prelu", "exp", "sqrt", "rsqrt", "layer_norm", "reduce_max",
            "reduce_sum", "reduce_min", "concat", "split", "slice_by_index",
            "upsample_nearest_neighbor", "einsum"} <= used


# ---------------------------------------------------------------------------------------------
# classifier families


FAMILY_CASES = [  # every CNN family's distinctive block in one net; a ViT with fused attention
    ("block mix", 32, ct.target.iOS15),
    ("ViT (fused attention)", 32, ct.target.iOS18),
]


@pytest.fixture(scope="module")
def families(tmp_path_factory):
    root = tmp_path_factory.mktemp("nets")
    made = {}
    for i, (name, res, target) in enumerate(FAMILY_CASES):
        net = build(name, res)
        for precision in ("fp32", "fp16"):
            made[name, precision] = net, convert(
                net, (1, 3, res, res), precision, root / f"{i}_{precision}.mlpackage", target)
    return made


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
@pytest.mark.parametrize("case", FAMILY_CASES, ids=lambda c: c[0])
def test_family_matches_pytorch_batched_or_not(case, precision, families):
    name, res, _ = case
    net, model = families[name, precision]
    x = torch.rand(3, 3, res, res, generator=torch.Generator().manual_seed(2))
    if precision == "fp16":
        x = x.half().float()
    with torch.no_grad():
        want = net(x).numpy()
    (got,) = _outputs(model, x.numpy())
    err = np.abs(got - want).max() / np.abs(want).max()
    assert err <= (FP32_REL if precision == "fp32" else 4e-3), f"relative error {err:.2e}"
    singles = np.concatenate([_outputs(model, x[i : i + 1].numpy())[0] for i in range(3)])
    np.testing.assert_array_equal(got, singles)  # a batch computes what single runs do


def test_families_exercise_attention_and_ghost_slicing(families):
    ops = {name: {t for t, _ in m.operations} for (name, _), (_, m) in families.items()}
    assert "scaled_dot_product_attention" in ops["ViT (fused attention)"]
    assert {"concat", "slice_by_index", "sigmoid_hard", "thresholded_relu", "silu", "sigmoid",
            "gelu", "layer_norm", "transpose"} <= ops["block mix"]
    for (name, _), (_, model) in families.items():
        # the CNN batches (LN and the ghost concat/slice are batch-safe); the ViT's qkv
        # permute moves the batch dim, so its samples run one at a time
        assert model.batch_plan.vectorised == (name == "block mix"), model.batch_plan
