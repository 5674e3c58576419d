"""macOS only: our W8A8 activation scales against coremltools' own ``linear_quantize_activations``.

Both start from the same fp16 iOS17 model and the same calibration images. coremltools measures
activation ranges with the Core ML runtime, we with the reference interpreter; the graph passes
are the same. Prints the number of quantize ops in each, whether the programs have the same
ops, and the largest relative difference between matching scales; exits 1 if the programs
differ or a scale differs by more than ``--max-rel`` (default 5%: the two runtimes round fp16
activations differently, which moves a range by a few fp16 steps at most).

coremltools 9.0 keeps only the last calibration sample's range (apple/coremltools#2704); ours
is calibrated the same way here (``accumulate=coremltools_accumulates()``), so the comparison
measures the runtimes, not that bug. Usage:

    python benchmarks/w8a8_vs_coremltools.py [--alpha 0.25] [--res 128] [--weights random]
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np
from PIL import Image

from mnv1_coreml.compress import w8a8
from mnv1_coreml.coreml import cto, load_program, quiet_coremltools
from mnv1_coreml.export import export
from mnv1_coreml.weights import build_model, load_weights


def quantize_scales(mlmodel) -> dict[str, float]:
    fn = load_program(mlmodel).functions["main"]
    return {
        op.inputs["input"].name: float(op.inputs["scale"].val)
        for op in fn.operations if op.op_type == "quantize"
    }


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--alpha", type=float, default=0.25)
    parser.add_argument("--res", type=int, default=128)
    parser.add_argument("--weights", default="random")
    parser.add_argument("--max-rel", type=float, default=0.05)
    args = parser.parse_args()
    if sys.platform != "darwin":
        print("needs the Core ML runtime (macOS): coremltools calibrates with model.predict")
        return 2

    weights = load_weights(args.weights, args.alpha, args.res)
    fp16 = export(build_model(args.alpha, args.res, weights), weights.settings.normalization,
                  target="iOS17")
    images, source = w8a8.calibration_images(args.res)
    accumulate = w8a8.coremltools_accumulates()

    t = time.perf_counter()
    calibration = w8a8.calibrate(fp16, images, source=source, accumulate=accumulate)
    ours = w8a8.apply_activation_passes(fp16, calibration.stats)
    t_ours = time.perf_counter() - t
    t = time.perf_counter()
    with quiet_coremltools():
        theirs = cto.linear_quantize_activations(
            fp16, w8a8.activation_config(), [{"image": Image.fromarray(im)} for im in images]
        )
    t_theirs = time.perf_counter() - t

    ops = [[op.op_type for op in load_program(m).functions["main"].operations]
           for m in (ours, theirs)]
    a, b = quantize_scales(ours), quantize_scales(theirs)
    common = sorted(set(a) & set(b))
    rel = {n: abs(a[n] - b[n]) / abs(b[n]) for n in common}
    worst = max(rel, key=rel.get) if rel else None
    print(f"{args.weights} {args.alpha}-{args.res}: {len(images)} images ({source}), "
          f"ranges {'over all images' if accumulate else 'of the last image (coremltools 9.0)'}")
    print(f"quantize ops: ours {len(a)}, coremltools {len(b)}, matched {len(common)}; "
          f"same op sequence: {ops[0] == ops[1]}")
    if worst is not None:
        print(f"largest relative scale difference: {rel[worst]:.3e} at {worst} "
              f"(ours {a[worst]:.6g}, coremltools {b[worst]:.6g}); median "
              f"{float(np.median(list(rel.values()))):.3e}")
    print(f"time: ours {t_ours:.1f} s (reference interpreter), coremltools {t_theirs:.1f} s "
          "(Core ML runtime)")
    ok = ops[0] == ops[1] and len(common) == len(a) == len(b) and (
        worst is None or rel[worst] <= args.max_rel
    )
    print("OK" if ok else f"FAILED: programs differ or a scale differs by > {args.max_rel:.0%}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
