"""Package bytes of each variant against the format's floor (see mnv1_coreml/sizes.py).

Usage: python benchmarks/sizes.py [--all]   (default: 1.0-224 only; --all: the 16 variants)
Prints fp16, 8-bit, 6-bit, 4-bit and int8 sizes, floors and their ratio.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from mnv1_coreml.compress import Palettize, QuantizeInt8
from mnv1_coreml.model import MobileNetConfig
from mnv1_coreml.pipeline import ConvertOptions, convert
from mnv1_coreml.sizes import floor_bytes, package_bytes
from mnv1_coreml.summary import PAPER_ALPHAS, PAPER_RESOLUTIONS

KINDS = {
    "fp16": None,
    "pal8": Palettize(8),
    "pal6": Palettize(6),
    "pal4": Palettize(4),
    "int8": QuantizeInt8(),
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
                floor = floor_bytes(cfg, "fp16", comp)
                print(f"{alpha:>5}-{res:<4} {kind:>5} {size:>10,} {floor:>10,} "
                      f"{size / floor:>7.4f}", flush=True)


if __name__ == "__main__":
    main()
