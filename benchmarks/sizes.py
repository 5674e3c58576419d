"""Package bytes of each variant against the format's floor (see mnv1_coreml/sizes.py).

Usage: python benchmarks/sizes.py [--all]   (default: 1.0-224 only; --all: the 16 variants)
Prints fp16, 8-bit, 6-bit, 4-bit and int8 sizes, floors and their ratio.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from mnv1_coreml.compress import CompressionSpec
from mnv1_coreml.convert import ConvertOptions, convert
from mnv1_coreml.model import MobileNetConfig
from mnv1_coreml.sizes import floor_bytes, package_bytes
from mnv1_coreml.summary import PAPER_ALPHAS, PAPER_RESOLUTIONS

KINDS = {
    "fp16": None,
    "pal8": CompressionSpec(palettize_bits=8),
    "pal6": CompressionSpec(palettize_bits=6),
    "pal4": CompressionSpec(palettize_bits=4),
    "int8": CompressionSpec(quantize="int8"),
}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--all", action="store_true", help="all 16 variants, not just 1.0-224")
    args = parser.parse_args()
    variants = [(a, r) for a in PAPER_ALPHAS for r in PAPER_RESOLUTIONS] if args.all else [
        (1.0, 224)]
    print(f"{'variant':>10} {'kind':>5} {'bytes':>10} {'floor':>10} {'ratio':>7}")
    with tempfile.TemporaryDirectory() as tmp:
        for alpha, res in variants:
            cfg = MobileNetConfig(alpha=alpha, res=res)
            for kind, comp in KINDS.items():
                out = Path(tmp) / f"{kind}.mlpackage"
                convert(ConvertOptions(alpha=alpha, res=res, weights="random", compression=comp,
                                       output=out, force=True, validate=False))
                size = package_bytes(out)
                floor = floor_bytes(cfg, "fp16", comp.palettize_bits if comp else None,
                                    comp.quantize if comp else None)
                print(f"{alpha:>5}-{res:<4} {kind:>5} {size:>10,} {floor:>10,} "
                      f"{size / floor:>7.4f}", flush=True)


if __name__ == "__main__":
    main()
