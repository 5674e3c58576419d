"""Palettization speed and quality: coremltools' k-means pass against ours, in one run.

Builds MobileNet V1 (default 1.0-224, PyTorch's default He-uniform conv init, seeded), converts
it to an fp16 ML Program for iOS16, then palettizes every conv/linear weight twice:

* coremltools' default k-means pass: ``OpPalettizerConfig(mode="kmeans", nbits=..,
  weight_threshold=0)`` for the "conv" and "linear" op types;
* ours: ``compress(mlmodel, Palettize(..))`` (everything included:
  weight discovery, clustering, the same coremltools pass in "custom" mode, the report).

It prints both wall times and their ratio, then, per weight, the SSE of each result against the
original fp16 weights, read back from the ``constexpr_lut_to_dense`` ops of both compressed
programs, and ours / theirs. Exits 1 if ours is not >= 5x faster or any SSE ratio exceeds 1.

    python benchmarks/palettize.py [--alpha 1.0] [--res 224] [--nbits 8] [--repeat 1]

The numba kernel is compiled (or loaded from its on-disk cache) before timing; that one-off
cost is printed separately.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mnv1_coreml.compress import Palettize, compress  # noqa: E402
from mnv1_coreml.compress.kmeans import warm_up  # noqa: E402
from mnv1_coreml.compress.palettize import (  # noqa: E402
    find_weight_sites,
    iter_ops,
    readback_sse,
)
from mnv1_coreml.coreml import ct, cto, load_program  # noqa: E402
from mnv1_coreml.model import MobileNetConfig, MobileNetV1  # noqa: E402

SPEEDUP_GOAL = 5.0
#: SSEs are float64 sums over up to a million terms; allow their rounding, nothing more.
SSE_RTOL = 1e-9


def build_model(alpha: float, res: int, seed: int) -> ct.models.MLModel:
    torch.manual_seed(seed)
    model = MobileNetV1(MobileNetConfig(alpha=alpha, res=res)).eval()
    example = torch.rand(1, 3, res, res)
    traced = torch.jit.trace(model, example)
    return ct.convert(
        traced,
        inputs=[ct.TensorType(name="image", shape=example.shape)],
        outputs=[ct.TensorType(name="logits")],
        convert_to="mlprogram",
        compute_precision=ct.precision.FLOAT16,
        minimum_deployment_target=ct.target.iOS16,
    )


def coremltools_kmeans(mlmodel: ct.models.MLModel, nbits: int) -> ct.models.MLModel:
    config = cto.OpPalettizerConfig(mode="kmeans", nbits=nbits, weight_threshold=0)
    return cto.palettize_weights(
        mlmodel, cto.OptimizationConfig(op_type_configs={"conv": config, "linear": config})
    )


def readback(mlmodel: ct.models.MLModel, sites: list) -> dict[str, float]:
    """SSE of every weight against the original, from the compressed program itself."""
    ops = {op.name: op for f in load_program(mlmodel).functions.values() for op in iter_ops(f)}
    out = {}
    for site in sites:
        producer = ops[site.op_name].inputs["weight"].op
        if producer is None or producer.op_type != "constexpr_lut_to_dense":
            raise SystemExit(f"{site.weight_name} was not palettized")
        out[site.weight_name] = readback_sse(site.value, producer)
    return out


def timed(fn, repeat: int):
    best, result = float("inf"), None
    for _ in range(repeat):
        t = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - t)
    return best, result


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--alpha", type=float, default=1.0)
    ap.add_argument("--res", type=int, default=224)
    ap.add_argument("--nbits", type=int, default=8, choices=(1, 2, 4, 6, 8))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--repeat", type=int, default=1, help="best of N timings for each pass")
    ap.add_argument("--json", type=Path, help="also write the numbers here")
    args = ap.parse_args(argv)

    t = time.perf_counter()
    mlmodel = build_model(args.alpha, args.res, args.seed)
    t_convert = time.perf_counter() - t
    t = time.perf_counter()
    warm_up()
    t_jit = time.perf_counter() - t

    t_theirs, theirs = timed(lambda: coremltools_kmeans(mlmodel, args.nbits), args.repeat)
    spec = Palettize(args.nbits)
    t_ours, (ours, report) = timed(lambda: compress(mlmodel, spec), args.repeat)

    sites, _ = find_weight_sites(load_program(mlmodel))
    sse_theirs = readback(theirs, sites)
    sse_ours = readback(ours, sites)
    reported = {w.name: w.sse for w in report.compressed}

    print(f"\nMobileNet V1 {args.alpha}-{args.res} fp16, {args.nbits}-bit per-tensor palettes, "
          f"{len(sites)} conv/linear weights")
    print(f"{'weight':<28} {'shape':<20} {'distinct':>8} {'SSE coremltools':>16} "
          f"{'SSE ours':>12} {'ours/theirs':>11}")
    ratios, mismatched = [], []
    for site in sites:
        name = site.weight_name
        distinct = len(np.unique(site.value))
        a, b = sse_theirs[name], sse_ours[name]
        ratio = b / a if a > 0 else (1.0 if b == 0 else float("inf"))
        ratios.append(ratio)
        if not np.isclose(reported.get(name, np.nan), b, rtol=SSE_RTOL, atol=0):
            mismatched.append(name)
        print(f"{name:<28} {str(site.shape):<20} {distinct:>8} {a:>16.6e} {b:>12.6e} "
              f"{ratio:>11.6f}")

    speedup = t_theirs / t_ours
    worse = [s.weight_name for s, r in zip(sites, ratios, strict=True) if r > 1 + SSE_RTOL]
    print(f"\nct.convert {t_convert:.2f} s; numba warm-up {t_jit:.2f} s (not in the timings)")
    print(f"coremltools k-means pass: {t_theirs:.3f} s")
    print(f"ours (compress):          {t_ours:.3f} s  "
          f"(clustering {report.seconds.get('cluster', 0):.3f} s, "
          f"coremltools pass {report.seconds.get('coremltools_pass', 0):.3f} s)")
    print(f"speed-up: {speedup:.2f}x (goal >= {SPEEDUP_GOAL:.0f}x)")
    print(f"SSE ours/theirs: min {min(ratios):.6f}, max {max(ratios):.6f}, "
          f"geometric mean {float(np.exp(np.mean(np.log(np.maximum(ratios, 1e-300))))):.6f}")
    print(f"reported SSE == read-back SSE: {mismatched or 'yes'}")
    print(f"uncompressed weights in our report: {len(report.uncompressed)}")

    if args.json:
        args.json.write_text(json.dumps({
            "model": f"{args.alpha}-{args.res}", "nbits": args.nbits,
            "seconds_coremltools": t_theirs, "seconds_ours": t_ours, "speedup": speedup,
            "sse_ratio_min": min(ratios), "sse_ratio_max": max(ratios),
            "per_weight": [{"name": s.weight_name, "shape": list(s.shape),
                            "sse_coremltools": sse_theirs[s.weight_name],
                            "sse_ours": sse_ours[s.weight_name]} for s in sites],
            "report": report.to_json(),
        }, indent=2))

    ok = speedup >= SPEEDUP_GOAL and not worse and not mismatched and not report.uncompressed
    if worse:
        print(f"FAIL: our SSE is larger on {worse}")
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
