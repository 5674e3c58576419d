"""Measure validate's error figures per model kind, to set and document its tolerances.

For each variant and kind: convert with the project's own pipeline, run the reference backend
on the golden images, and print the worst max-abs error, cosine and PSNR, plus any top-1
disagreement with its golden margin. Usage:

    python benchmarks/tolerances.py [--kinds fp32,fp16,pal8,pal6,pal4,int8,w8a8]
        [ALPHA:RES:WEIGHTS ...]

w8a8 is calibrated on its default images (the packaged photos and probes, as the golden).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from mnv1_coreml.compress import CompressionConfig, Palettize, QuantizeInt8, QuantizeW8A8
from mnv1_coreml.golden import golden_for
from mnv1_coreml.pipeline import ConvertOptions, convert
from mnv1_coreml.validation import Tolerances, validate

NO_LIMITS = Tolerances(max_abs=1e9, min_cosine=-1.0, min_psnr=-1e9)


def kind_options(kind: str) -> tuple[str, CompressionConfig | None]:
    if kind in ("fp32", "fp16"):
        return kind, None
    if kind == "int8":
        return "fp16", QuantizeInt8()
    if kind == "w8a8":
        return "fp16", QuantizeW8A8()
    return "fp16", Palettize(int(kind.removeprefix("pal")))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--kinds", default="fp32,fp16,pal8,int8,pal6,pal4,w8a8")
    parser.add_argument("variants", nargs="*", default=["0.25:128:random", "1.0:224:random"])
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        for variant in args.variants:
            alpha_s, res_s, weights = variant.split(":", 2)
            alpha, res = float(alpha_s), int(res_s)
            golden = golden_for(alpha, res, weights)
            for kind in args.kinds.split(","):
                precision, comp = kind_options(kind)
                out = Path(tmp) / f"{kind}.mlpackage"
                convert(ConvertOptions(alpha=alpha, res=res, weights=weights, precision=precision,
                                       compression=comp, output=out, force=True, validate=False))
                rep = validate(out, golden, backend="reference", tolerances=NO_LIMITS)
                worst = max(r.max_abs for r in rep.images)
                cos = min(r.cosine for r in rep.images)
                psnr = min(r.psnr for r in rep.images)
                flips = [(r.name, round(r.margin, 3)) for r in rep.images if not r.top1_agree]
                print(f"{weights} {alpha}-{res} {kind:5} max_abs {worst:.4g} cosine {cos:.7f} "
                      f"PSNR {psnr:.1f} dB top-1 flips (golden margin) {flips}", flush=True)


if __name__ == "__main__":
    main()
