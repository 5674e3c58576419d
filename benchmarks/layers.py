"""What ``validate --layers`` costs over a plain ``validate``, at 1.0-224 on the golden images.

Times, in one run and the same process, what the CLI does without and with ``--layers``: a plain
validation (load, run the golden images through the reference interpreter, compare logits),
then the validation plus the layer report (the same single interpreter pass also keeping all 29
layer outputs, rebuilding the golden's PyTorch model from its weights, hooks, comparing).
Prints both and their ratio (the issue's bound: at most 3x). Usage:

    python benchmarks/layers.py [--package PKG.mlpackage] [--golden DIR] [--repeat N]

Without ``--package`` it first converts the fp16 1.0-224 package of the golden's weights
(not timed).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from mnv1_coreml import layers
from mnv1_coreml.golden import read_golden
from mnv1_coreml.layers import layer_backend, validate_layers
from mnv1_coreml.pipeline import ConvertOptions, convert
from mnv1_coreml.validation import validate

REPO = Path(__file__).resolve().parent.parent


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--package", type=Path)
    parser.add_argument("--golden", type=Path, default=REPO / "golden" / "random-0_1.0_224")
    parser.add_argument("--repeat", type=int, default=1)
    args = parser.parse_args()
    golden = read_golden(args.golden)
    with tempfile.TemporaryDirectory() as tmp:
        package = args.package
        if package is None:
            spec = golden.manifest["weights"]
            weights, seed = ("random", int(spec.split(":")[1])) if spec.startswith("random:") \
                else (str(REPO / spec), 0)
            package = Path(tmp) / "fp16.mlpackage"
            convert(ConvertOptions(alpha=golden.alpha, res=golden.res, weights=weights,
                                   seed=seed, output=package, validate=False))
        plain, full = [], []
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            validate(package, golden, backend="reference")
            t1 = time.perf_counter()
            layers._MODELS.clear()  # the CLI starts cold: rebuild the PyTorch model each time
            runner = layer_backend(package, golden, "reference")
            validate(package, golden, backend=runner)
            rep = validate_layers(package, golden, golden_dir=args.golden, runner=runner)
            t2 = time.perf_counter()
            plain.append(t1 - t0)
            full.append(t2 - t1)
    p, f = min(plain), min(full)
    print(f"{golden.alpha}-{golden.res}, {len(golden.images)} images, {rep.kind}: validate "
          f"{p:.2f} s, validate --layers {f:.2f} s, ratio {f / p:.2f}x (bound 3x); "
          f"first divergent layer: {rep.first_divergent_layer}")


if __name__ == "__main__":
    main()
