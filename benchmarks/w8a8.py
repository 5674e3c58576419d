"""W8A8 acceptance figures: calibration time, conv-input coverage, validation, size vs int8.

Calibration runs the fp16 program through the reference interpreter on the calibration images,
recording every activation's range; the baseline is one plain interpreter run of the same
images (logits only), so the ratio is what recording all activations costs. Then it converts
W8A8 and int8 packages with ``convert`` and reports the share of conv inputs behind a
quantize/dequantize pair, the ``validate`` verdict (reference backend, W8A8 tolerances) and
the package sizes. Usage:

    python benchmarks/w8a8.py [ALPHA:RES:WEIGHTS ...] [--calibration DIR] [--calibration-only]

Default variants: 1.0:224:random and 0.25:128:random.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from mnv1_coreml.compress import QuantizeInt8, QuantizeW8A8, w8a8
from mnv1_coreml.export import export
from mnv1_coreml.mil import ReferenceModel
from mnv1_coreml.pipeline import ConvertOptions, convert
from mnv1_coreml.sizes import package_bytes
from mnv1_coreml.validation import validate
from mnv1_coreml.weights import build_model, load_weights

#: The issue's acceptance bound for calibrating 1.0-224 on the default images.
GOAL_SECONDS = 30.0


def calibration_figures(alpha: float, res: int, weights: str, directory: Path | None) -> None:
    loaded = load_weights(weights, alpha, res)
    fp16 = export(build_model(alpha, res, loaded), loaded.settings.normalization,
                  target="iOS17")
    images, source = w8a8.calibration_images(res, directory)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "fp16.mlpackage"
        fp16.save(str(path))
        model = ReferenceModel.load(path)
        model.predict(images[:1])  # warm-up: first-call allocations of torch
        t = time.perf_counter()
        model.predict(images, outputs=[model.logits_name])
        baseline = time.perf_counter() - t
    calibration = w8a8.calibrate(fp16, images, source=source)
    print(f"{weights} {alpha}-{res}: calibration on {calibration.images} images ({source}): "
          f"{calibration.seconds:.2f} s, {len(calibration.stats)} ranges; one plain "
          f"interpreter run of the same images {baseline:.2f} s; ratio "
          f"{calibration.seconds / baseline:.2f}", flush=True)
    if (alpha, res) == (1.0, 224):
        verdict = "met" if calibration.seconds < GOAL_SECONDS else "NOT met"
        print(f"  goal: calibration at 1.0-224 under {GOAL_SECONDS:.0f} s: {verdict} "
              f"(load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores)", flush=True)


def package_figures(alpha: float, res: int, weights: str, directory: Path | None) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        made = {}
        for name, config in (("w8a8", QuantizeW8A8(None if directory is None else
                                                    str(directory))),
                             ("int8", QuantizeInt8())):
            made[name] = convert(ConvertOptions(
                alpha=alpha, res=res, weights=weights, compression=config,
                output=Path(tmp) / f"{name}.mlpackage", validate=False,
            ))
        result = made["w8a8"]
        acts = result.compression_report.activations
        fed, convs = acts.conv_inputs
        report = validate(result.path, backend="reference")
        worst = max(report.images, key=lambda r: r.max_abs)
        size, int8_size = package_bytes(result.path), package_bytes(made["int8"].path)
        print(f"{weights} {alpha}-{res}: quantize/dequantize on {fed}/{convs} conv inputs "
              f"({fed / convs:.0%}), {len(acts.quantized)}/{len(acts.quantized) + len(acts.fp16)}"
              f" activations; calibration {acts.calibration_seconds:.2f} s in convert")
        print(f"  validate {'PASS' if report.passed else 'FAIL'} (reference, w8a8 tolerances): "
              f"worst max-abs {worst.max_abs:.3g} ({worst.name}), min cosine "
              f"{min(r.cosine for r in report.images):.5f}, min PSNR "
              f"{min(r.psnr for r in report.images):.1f} dB")
        print(f"  size: w8a8 {size:,} B, int8 {int8_size:,} B, ratio {size / int8_size:.4f} "
              f"(+{size - int8_size:,} B of quantize/dequantize ops)", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("variants", nargs="*", default=["1.0:224:random", "0.25:128:random"])
    parser.add_argument("--calibration", type=Path, default=None)
    parser.add_argument("--calibration-only", action="store_true")
    args = parser.parse_args()
    for variant in args.variants:
        alpha_s, res_s, weights = variant.split(":", 2)
        alpha, res = float(alpha_s), int(res_s)
        calibration_figures(alpha, res, weights, args.calibration)
        if not args.calibration_only:
            package_figures(alpha, res, weights, args.calibration)


if __name__ == "__main__":
    main()
