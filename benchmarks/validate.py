"""Reference interpreter vs PyTorch eager: speed, peak memory and fp32 logit agreement.

Converts MobileNet V1 (default 1.0-224, the project's seeded random weights) with the
project's own ``convert`` to fp32 and fp16 ML Programs in a temporary directory, then times,
on the same uint8 images and batch in this one process:

* PyTorch eager fp32: normalisation, network, softmax;
* the interpreter on the fp32 and the fp16 package: ``predict`` (colour handling, the
  program's own preprocessing ops, network, softmax, classify).

With ``--baseline REF`` it also times the interpreter as it was at git commit REF (its
``mnv1_coreml/mil`` read with ``git show`` into a temporary package) on the same packages,
interleaved with the current one, and prints current/baseline speed ratios: a before/after
comparison made in one run, so load from other processes on the machine hits both alike.

Peak RSS of the interpreter is measured in a child process that does nothing but load the
fp32 package and predict the same batch (this process also holds PyTorch and the converter).
Prints numbers only; targets (interpreter >= 0.5x PyTorch's speed, < 1 GB RSS) are for reading.

    python benchmarks/validate.py [--alpha 1.0] [--res 224] [--batch 8] [--repeats 7]
                                  [--threads N] [--baseline HEAD]
"""

from __future__ import annotations

import argparse
import importlib
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mnv1_coreml.mil import ReferenceModel  # noqa: E402
from mnv1_coreml.pipeline import ConvertOptions, convert  # noqa: E402
from mnv1_coreml.weights import build_model, load_weights  # noqa: E402
from mnv1_coreml.weights.random_init import smooth_images  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def convert_package(args: argparse.Namespace, precision: str, out: Path) -> Path:
    """The package users get: the project's own convert, random weights of this seed."""
    path = out / f"mnv1_{precision}.mlpackage"
    convert(ConvertOptions(alpha=args.alpha, res=args.res, weights="random", seed=args.seed,
                           precision=precision, output=path, validate=False))
    return path


def baseline_interpreter(ref: str, into: Path) -> type:
    """``ReferenceModel`` of ``mnv1_coreml/mil`` at git commit ``ref``, imported from a copy
    under ``into`` as package ``mnv1_baseline.mil`` (its ``..errors`` is the current one)."""

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True,
                              check=True).stdout

    pkg = into / "mnv1_baseline"
    (pkg / "mil").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "errors.py").write_text("from mnv1_coreml.errors import UserError  # noqa: F401\n")
    for name in git("ls-tree", "--name-only", f"{ref}:mnv1_coreml/mil").split():
        if name.endswith(".py"):
            (pkg / "mil" / name).write_text(git("show", f"{ref}:mnv1_coreml/mil/{name}"))
    sys.path.insert(0, str(into))
    return importlib.import_module("mnv1_baseline.mil").ReferenceModel


def timed(
    fns: dict[str, Callable[[], object]], repeats: int
) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """Wall and CPU seconds per call of each function, interleaved round-robin so that load
    from other processes on the machine hits all of them alike. One untimed warm-up call each
    first (oneDNN primitive creation, allocator growth). CPU time (this process, all threads)
    is the steadier measure of the work done when other processes share the cores."""
    for fn in fns.values():
        fn()
    wall: dict[str, list[float]] = {name: [] for name in fns}
    cpu: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t0, c0 = time.perf_counter(), time.process_time()
            fn()
            wall[name].append(time.perf_counter() - t0)
            cpu[name].append(time.process_time() - c0)
    return wall, cpu


def peak_rss_mb() -> float:
    """This process's peak RSS (VmHWM). Not ``ru_maxrss``: Linux carries the parent's peak
    over into a forked-and-exec'd child's ``ru_maxrss``, which would inflate the probe."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # non-Linux fallback


def rss_probe(package: str, batch: int, res: int, seed: int) -> None:
    """Child process: only the interpreter, to measure its own peak RSS."""
    model = ReferenceModel.load(package)
    model.predict(smooth_images(batch, res, seed))
    print(f"{peak_rss_mb():.1f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--alpha", type=float, default=1.0)
    ap.add_argument("--res", type=int, default=224)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    ap.add_argument("--baseline", metavar="GIT_REF",
                    help="also time the interpreter of this commit (e.g. HEAD)")
    ap.add_argument("--rss-probe", metavar="PACKAGE", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.rss_probe:
        rss_probe(args.rss_probe, args.batch, args.res, args.seed)
        return

    print(f"MobileNet V1 {args.alpha}-{args.res}, batch {args.batch}, {args.repeats} timed runs, "
          f"{torch.get_num_threads()} torch threads")
    weights = load_weights("random", args.alpha, args.res, seed=args.seed)
    model = build_model(args.alpha, args.res, weights)
    normalise = weights.settings.normalization.apply
    imgs = smooth_images(args.batch, args.res, args.seed + 2)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        paths = {p: convert_package(args, p, Path(tmp)) for p in ("fp32", "fp16")}
        print(f"converted fp32 + fp16 packages in {time.perf_counter() - t0:.1f} s")
        refs = {p: ReferenceModel.load(path) for p, path in paths.items()}
        base = {}
        if args.baseline:
            old = baseline_interpreter(args.baseline, Path(tmp) / "baseline")
            base = {p: old.load(path) for p, path in paths.items()}

        with torch.inference_mode():
            torch_logits = model(normalise(imgs)).numpy()

        def run_torch() -> None:
            with torch.inference_mode():
                torch.softmax(model(normalise(imgs)), dim=1)

        times, cpu = timed(
            {"PyTorch eager fp32": run_torch}
            | {f"interpreter {p}": (lambda m=m: m.predict(imgs)) for p, m in refs.items()}
            | {f"baseline {p}": (lambda m=m: m.predict(imgs)) for p, m in base.items()},
            args.repeats,
        )
        for p, m in base.items():  # the baseline must compute the same thing
            name = m.logits_name
            same = np.array_equal(m.predict(imgs, outputs=[name])[name],
                                  refs[p].predict(imgs, outputs=[name])[name])
            print(f"baseline {p} logits bit-identical to the current interpreter's: {same}")

        logits = {
            p: m.predict(imgs, outputs=[m.logits_name])[m.logits_name].astype(np.float32)
            for p, m in refs.items()
        }
        probe = subprocess.run(
            [sys.executable, __file__, "--rss-probe", str(paths["fp32"]), "--batch",
             str(args.batch), "--res", str(args.res), "--seed", str(args.seed + 2)],
            capture_output=True, text=True, check=True,
        )
        interp_rss = float(probe.stdout.strip().splitlines()[-1])

    med_torch = statistics.median(times["PyTorch eager fp32"])
    print(f"{'':24}{'median s/batch':>16}{'min s/batch':>13}{'img/s':>8}{'speed vs torch':>16}"
          f"{'median CPU s':>14}")
    for name, ts in times.items():
        med = statistics.median(ts)
        print(f"{name:24}{med:16.4f}{min(ts):13.4f}{args.batch / med:8.1f}"
              f"{med_torch / med:15.2f}x{statistics.median(cpu[name]):14.4f}")
    for p, lg in logits.items():
        err = np.abs(lg - torch_logits).max(axis=1)
        top1 = (lg.argmax(1) == torch_logits.argmax(1)).mean()
        print(f"{p} logits vs PyTorch: max abs error {err.max():.3g} "
              f"(per image {', '.join(f'{e:.2g}' for e in err)}); top-1 agreement {top1:.0%}")
    for p in base:
        ratios = [statistics.median(t[f"baseline {p}"]) / statistics.median(t[f"interpreter {p}"])
                  for t in (times, cpu)]
        print(f"interpreter {p} speed vs baseline {args.baseline}: {ratios[0]:.2f}x wall, "
              f"{ratios[1]:.2f}x CPU (ratios of medians; above 1 is faster)")
    print(f"logit spread (PyTorch): std {torch_logits.std():.2f}, "
          f"range {torch_logits.min():.1f}..{torch_logits.max():.1f}")
    print(f"peak RSS: interpreter alone {interp_rss:.0f} MB; this process (torch, converter, "
          f"both packages) {peak_rss_mb():.0f} MB")


if __name__ == "__main__":
    main()
