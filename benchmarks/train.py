"""`train` speed on this machine: a linear probe on 1,000 images, and the feature pass.

Makes 1,000 JPEG photos-like pictures (10 classes x 100, 320 x 240, smooth textures with a
class colour cast), then in one run:

1. the whole ``train`` linear probe at 0.25-128, random weights, end to end without conversion
   (discovery, decoding, features, probe, checkpoint, labels, report) against the 60 s budget;
2. the feature pass (``compute_features``) against plain PyTorch inference (``model(x)`` in
   eval mode under ``torch.no_grad``, the same batches) on the same decoded images, best of 3,
   against the 0.9x floor.

    python benchmarks/train.py [--images 1000] [--alpha 0.25] [--res 128]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from mnv1_coreml.model import build_model
from mnv1_coreml.train import FEATURE_BATCH, TrainOptions, compute_features, train
from mnv1_coreml.train_data import discover, load_images
from mnv1_coreml.weights import load_weights


def make_dataset(root: Path, n_images: int, classes: int = 10, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    rng = np.random.default_rng(seed)
    per = n_images // classes
    for k in range(classes):
        cast = torch.from_numpy(rng.uniform(0.4, 1.0, 3)).float().view(1, 3, 1, 1)
        d = root / f"class_{k:02d}"
        d.mkdir(parents=True)
        coarse = torch.rand(per, 3, 8, 8, generator=g)
        x = F.interpolate(coarse, size=(240, 320), mode="bicubic", align_corners=False)
        x = ((0.3 + 0.7 * x.clamp(0, 1)) * cast * 255).clamp(0, 255).round()
        arr = x.to(torch.uint8).permute(0, 2, 3, 1).numpy()
        for i in range(per):
            Image.fromarray(arr[i]).save(d / f"{i:04d}.jpg", quality=90)


def plain_inference(model: torch.nn.Module, x: torch.Tensor) -> float:
    """Seconds for plain eval-mode inference over pre-normalised batches."""
    start = time.perf_counter()
    with torch.no_grad():
        for i in range(0, len(x), FEATURE_BATCH):
            model(x[i : i + FEATURE_BATCH])
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=1000)
    ap.add_argument("--alpha", type=float, default=0.25)
    ap.add_argument("--res", type=int, default=128)
    args = ap.parse_args(argv)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        data = root / "data"
        make_dataset(data, args.images)

        (root / "out").mkdir()
        start = time.perf_counter()
        result = train(TrainOptions(
            data_dir=data, output=root / "out" / "Probe.mlpackage", alpha=args.alpha,
            res=args.res, weights="random", package=False,
        ))
        total = time.perf_counter() - start
        rep = result.report
        print(f"linear probe end to end, {args.images} images, {args.alpha:g}-{args.res}: "
              f"{total:.1f} s (budget 60 s) "
              + ", ".join(f"{k} {v:.2f} s" for k, v in rep.timings.items())
              + f"; {len(rep.history)} epochs, val acc {rep.pytorch_val_acc:.1%}")

        split = discover(data, 0.2, 0)
        images = load_images(split.train + split.val, args.res).images
        weights = load_weights("random", args.alpha, args.res)
        model = build_model(args.alpha, args.res, weights)
        norm = weights.settings.normalization
        x = norm.apply(images)
        compute_features(model, images[:FEATURE_BATCH], norm)  # warm-up
        plain_inference(model, x[:FEATURE_BATCH])
        ours, base, single = [], [], []
        threads = torch.get_num_threads()
        for _ in range(3):
            t = time.perf_counter()
            compute_features(model, images, norm)
            ours.append(time.perf_counter() - t)
            base.append(plain_inference(model, x))
            torch.set_num_threads(1)
            single.append(plain_inference(model, x))
            torch.set_num_threads(threads)
        n = len(images)
        ratio = min(base) / min(ours)
        print(f"feature pass: {n / min(ours):.0f} images/s (uint8 in, normalisation included); "
              f"plain PyTorch inference ({threads} threads, the default): "
              f"{n / min(base):.0f} images/s (pre-normalised tensors); "
              f"throughput ratio {ratio:.2f}x (floor 0.9x)")
        print(f"for reference, plain PyTorch inference on 1 thread: {n / min(single):.0f} "
              f"images/s; load average now {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
        ok = total < 60 and ratio >= 0.9
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
