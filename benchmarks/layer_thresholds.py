"""Measure per-layer PSNR on healthy packages, to set and document ``validate --layers`` thresholds.

For each golden and model kind: convert with the project's pipeline, compare every layer with
PyTorch (reference backend, no thresholds), and print the lowest PSNR and the lowest step PSNR
(the error one layer adds to what it inherited; see ``mnv1_coreml.layers``) over the layers and
the golden images. Then, on the fp16 package of each golden, break one layer at a time (its
stored weight scaled by 2 in ``weight.bin``, or the input declared BGR) and print the broken
layer's PSNR and step PSNR: the thresholds must sit between the two groups. Finally the
thresholds that the healthy minima give with ``--headroom`` dB (default 5) below them.

    python benchmarks/layer_thresholds.py [--kinds fp32,fp16,pal8,int8,pal6,pal4,w8a8] [GOLDEN ...]
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import tempfile
from pathlib import Path

from tolerances import kind_options  # benchmarks/ is on sys.path when run as a script

from mnv1_coreml.coreml import ct
from mnv1_coreml.golden import read_golden
from mnv1_coreml.layers import (
    LAYER_THRESHOLDS,
    LayerThreshold,
    golden_model,
    scale_stored_weight,
    validate_layers,
)
from mnv1_coreml.pipeline import ConvertOptions, convert

REPO = Path(__file__).resolve().parent.parent
NO_LIMITS = LayerThreshold(min_psnr=-math.inf, min_step_psnr=-math.inf)
KINDS = {"fp32": "fp32", "fp16": "fp16", "pal8": "palettized-8", "int8": "int8",
         "pal6": "palettized-6", "pal4": "palettized-4", "w8a8": "w8a8"}
FAULTS = ("blocks.1.dw", "blocks.11.pw", "classifier")


def set_bgr(package: Path) -> None:
    manifest = json.loads((package / "Manifest.json").read_text())
    root = manifest["itemInfoEntries"][manifest["rootModelIdentifier"]]["path"]
    spec = ct.utils.load_spec(str(package))
    spec.description.input[0].type.imageType.colorSpace = 30  # BGR
    (package / "Data" / root).write_bytes(spec.SerializeToString())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--kinds", default="fp32,fp16,pal8,int8,pal6,pal4,w8a8")
    parser.add_argument("--headroom", type=float, default=5.0)
    parser.add_argument("goldens", nargs="*", type=Path, default=[
        REPO / "golden" / "random-0_0.25_128", REPO / "golden" / "keras_mobilenet_0.25_128",
        REPO / "golden" / "random-0_1.0_224", REPO / "golden" / "keras_mobilenet_1.0_224",
    ])
    args = parser.parse_args()
    healthy: dict[str, list[tuple[float, float]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for gdir in args.goldens:
            golden = read_golden(gdir)
            golden_model(golden, gdir)  # fails early if the golden's weights are missing
            spec = golden.manifest["weights"]
            weights, seed = ("random", int(spec.split(":")[1])) if spec.startswith("random:") \
                else (str((REPO / spec).resolve()) if not Path(spec).is_absolute() else spec, 0)
            tag = f"{gdir.name}"
            for kind in args.kinds.split(","):
                precision, comp = kind_options(kind)
                out = Path(tmp) / f"{kind}.mlpackage"
                convert(ConvertOptions(alpha=golden.alpha, res=golden.res, weights=weights,
                                       seed=seed, precision=precision, compression=comp,
                                       output=out, force=True, validate=False))
                rep = validate_layers(out, golden, golden_dir=gdir, threshold=NO_LIMITS)
                low = min(rep.rows, key=lambda r: r.psnr)
                step = min(rep.rows, key=lambda r: r.step_psnr)
                healthy.setdefault(KINDS[kind], []).append((low.psnr, step.step_psnr))
                print(f"{tag} {kind:5} healthy: min PSNR {low.psnr:6.1f} dB ({low.name}), "
                      f"min step PSNR {step.step_psnr:6.1f} dB ({step.name})", flush=True)
                if kind != "fp16":
                    continue
                for fault in (*FAULTS, "bgr"):
                    broken = Path(tmp) / "broken.mlpackage"
                    shutil.rmtree(broken, ignore_errors=True)
                    shutil.copytree(out, broken)
                    layer = "stem" if fault == "bgr" else fault
                    if fault == "bgr":
                        set_bgr(broken)
                    else:
                        scale_stored_weight(broken, fault, 2.0)
                    rep = validate_layers(broken, golden, golden_dir=gdir, threshold=NO_LIMITS)
                    row = next(r for r in rep.rows if r.name == layer)
                    what = "input declared BGR" if fault == "bgr" else f"{fault} weight x2"
                    print(f"{tag} fp16  broken ({what}): {layer} PSNR {row.psnr:6.1f} dB, "
                          f"step PSNR {row.step_psnr:6.1f} dB", flush=True)
    print(f"\nthresholds = healthy minimum - {args.headroom:g} dB (in use: LAYER_THRESHOLDS)")
    for kind, values in healthy.items():
        psnr = min(v[0] for v in values) - args.headroom
        step = min(v[1] for v in values) - args.headroom
        used = LAYER_THRESHOLDS[kind]
        print(f"{kind:13} min PSNR {psnr:6.1f}  min step PSNR {step:6.1f}   in use: "
              f"{used.min_psnr:g} / {used.min_step_psnr:g}")


if __name__ == "__main__":
    main()
