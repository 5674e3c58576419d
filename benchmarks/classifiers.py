"""The reference interpreter on other image classifiers: error against PyTorch, and speed.

Converts small hand-written versions of common families (``tests/classifier_blocks.py``:
MobileNet V2/V3, EfficientNet-B0, GhostNet, ConvNeXt, ResNet, RegNetY, a ViT with explicit
and with fused attention; random weights and BatchNorm statistics) with plain ``ct.convert``
at fp32 and fp16, runs each package through the interpreter on the same random images, and
prints per model and precision: the max abs error and the error relative to the largest
logit, top-1 agreement, the ops used, whether the batch ran vectorised, and the
interpreter's time against PyTorch eager's for the batch.

    python benchmarks/classifiers.py [--res 160] [--batch 4] [--only ViT]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mnv1_coreml.coreml import ct, quiet_coremltools  # noqa: E402
from mnv1_coreml.mil import ReferenceModel  # noqa: E402
from tests.classifier_blocks import FAMILIES, build  # noqa: E402

#: iOS18 keeps F.scaled_dot_product_attention as one op; lower targets decompose it.
TARGETS = {"ViT (fused attention)": ct.target.iOS18}


def convert(net: torch.nn.Module, res: int, precision: str, target, path: Path) -> Path:
    traced = torch.jit.trace(net, torch.rand(1, 3, res, res))
    with quiet_coremltools():  # no progress bars between our table's rows
        mlmodel = ct.convert(
            traced, inputs=[ct.TensorType(name="x", shape=(1, 3, res, res))],
            convert_to="mlprogram", minimum_deployment_target=target, skip_model_load=True,
            compute_precision=ct.precision.FLOAT16 if precision == "fp16"
            else ct.precision.FLOAT32)
    mlmodel.save(str(path))
    return path


def best_of(fn, repeats: int = 3) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--res", type=int, default=160)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--only", help="families whose name contains this")
    args = ap.parse_args()
    names = [n for n in FAMILIES if not args.only or args.only in n]
    x = torch.rand(args.batch, 3, args.res, args.res, generator=torch.Generator().manual_seed(0))
    print(f"{args.res}x{args.res}, batch {args.batch}, random weights; error = interpreter "
          f"vs PyTorch fp32 logits")
    print(f"{'model':24}{'prec':>5}{'max abs':>10}{'rel':>10}{'top-1':>7}{'batched':>9}"
          f"{'interp s':>10}{'torch s':>9}  ops")
    with tempfile.TemporaryDirectory() as tmp:
        for i, name in enumerate(names):
            net = build(name, args.res)
            with torch.inference_mode():
                want = net(x).numpy()
            torch_s = best_of(lambda net=net: net(x))
            for precision in ("fp32", "fp16"):
                path = convert(net, args.res, precision, TARGETS.get(name, ct.target.iOS15),
                               Path(tmp) / f"{i}_{precision}.mlpackage")
                model = ReferenceModel.load(path)
                feeds = {"x": x.numpy()}
                (got,) = model.run(feeds).values()
                got = got.astype(np.float32)
                err = np.abs(got - want).max()
                top1 = (got.argmax(1) == want.argmax(1)).mean()
                interp_s = best_of(lambda m=model, f=feeds: m.run(f))
                ops = sorted({t for t, _ in model.operations} - {"cast"})
                print(f"{name:24}{precision:>5}{err:10.2e}{err / np.abs(want).max():10.2e}"
                      f"{top1:7.0%}{'yes' if model.batch_plan.vectorised else 'no':>9}"
                      f"{interp_s:10.3f}{torch_s:9.3f}  {' '.join(ops)}", flush=True)


if __name__ == "__main__":
    main()
