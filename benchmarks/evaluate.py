"""``evaluate`` at scale: interpreter throughput against PyTorch eager fp32, and peak RSS.

Converts MobileNet V1 (default alpha 0.25, res 128, the project's seeded random weights) with
the project's own pipeline into a temporary directory, writes a few hundred synthetic JPEG
photos (320x240) into WordNet-ID class folders, then:

1. Throughput, in this one process, on the same prepared images and batch size, interleaved
   round-robin so machine load hits both alike, with the torch thread count ``evaluate`` uses
   beside ``--jobs`` decoders: PyTorch eager fp32 (normalisation + network) against the package
   through the reference interpreter (``ImageClassifier.probabilities``, what ``evaluate``
   calls). Prints images/s of each and the ratio (the target is >= 0.8).
2. Scale: ``evaluate()`` (package + PyTorch reference, decoding in ``--jobs`` worker
   processes) over ``--images`` files, made of hard links to those photos so that 50,000
   images cost no disk. It runs in a child process, which reports its own peak RSS, that of its
   largest decoding worker, and the largest sum of both at one instant, sampled from /proc
   (the target is < 2 GB at 50,000 images).

    python benchmarks/evaluate.py [--alpha 0.25] [--res 128] [--precision fp16] [--batch 32]
        [--repeats 5] [--images 2000] [--jobs 2]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

DISTINCT = 200
CLASSES = ["n01440764", "n01530575", "n01644373", "n01770393", "n02085620",
           "n02123045", "n02504458", "n03000684", "n03417042", "n04037443"]


def make_photos(root: Path, count: int, seed: int = 0) -> list[Path]:
    """``count`` smooth random JPEGs, 320x240, spread over the WordNet-ID folders."""
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(count):
        folder = root / CLASSES[i % len(CLASSES)]
        folder.mkdir(parents=True, exist_ok=True)
        small = rng.uniform(0, 255, (3, 4, 3)).astype(np.uint8)
        noise = rng.normal(0, 12, (240, 320, 3))
        img = np.asarray(Image.fromarray(small).resize((320, 240), Image.Resampling.BILINEAR))
        img = np.clip(img + noise, 0, 255).astype(np.uint8)
        paths.append(folder / f"photo_{i:05d}.jpg")
        Image.fromarray(img).save(paths[-1], quality=90)
    return paths


def link_dataset(photos: list[Path], root: Path, count: int) -> None:
    """``count`` files in the same folders: hard links to the distinct photos."""
    for i in range(count):
        src = photos[i % len(photos)]
        dst = root / src.parent.name / f"img_{i:06d}.jpg"
        dst.parent.mkdir(parents=True, exist_ok=True)
        os.link(src, dst)


def throughput(package: Path, photos: list[Path], args: argparse.Namespace) -> None:
    from mnv1_coreml.evaluate import build_reference, model_threads
    from mnv1_coreml.images import prepare_image
    from mnv1_coreml.predict import ImageClassifier

    clf = ImageClassifier(package, backend="reference", exact_batch=False)  # as evaluate()
    ref = build_reference(clf.info.metadata, clf.info.num_classes)
    images = []
    for p in photos[: args.batch * 4]:
        with Image.open(p) as im:
            images.append(prepare_image(im, args.res))
    batches = [np.stack(images[i : i + args.batch]) for i in range(0, len(images), args.batch)]
    fns = {
        "pytorch eager fp32": lambda: [ref.logits(b) for b in batches],
        f"interpreter ({args.precision} package)": lambda: [clf.probabilities(b)
                                                            for b in batches],
    }
    times: dict[str, list[float]] = {k: [] for k in fns}
    # the thread count evaluate() gives the models beside --jobs decoders
    with model_threads(args.jobs) as threads:
        for fn in fns.values():  # warm-up: oneDNN primitives, allocator
            fn()
        for _ in range(args.repeats):
            for name, fn in fns.items():
                t0 = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - t0)
    n = sum(len(b) for b in batches)
    print(f"throughput: {n} images in batches of {args.batch}, {args.repeats} interleaved "
          f"rounds, median; torch threads {threads} (evaluate's choice beside --jobs "
          f"{args.jobs} on {os.cpu_count()} cores)")
    rates = {}
    for name, ts in times.items():
        rates[name] = n / statistics.median(ts)
        print(f"  {name:32s} {rates[name]:8.1f} images/s (best {n / min(ts):.1f})")
    torch_rate, interp_rate = rates.values()
    print(f"  ratio interpreter / pytorch: {interp_rate / torch_rate:.2f} (target >= 0.8)")


def _status_kb(pid: int | str, key: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


class RssSampler(threading.Thread):
    """Polls this process and its decoding workers every 0.2 s from /proc: the largest worker
    high-water mark (VmHWM) and the largest sum of VmRSS of this process plus its workers at
    one instant (Linux only; zeros elsewhere)."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.worker_hwm_kb = 0
        self.total_kb = 0
        self.stop = threading.Event()

    def children(self) -> list[str]:
        """Child processes that run Python's spawn entry point: a child caught between fork
        and exec still shares this process's memory map, and would count it twice."""
        pids: list[str] = []
        for task in Path("/proc/self/task").glob("*/children"):
            try:
                pids += task.read_text().split()
            except OSError:
                continue
        found = []
        for pid in pids:
            try:
                if b"spawn_main" in Path(f"/proc/{pid}/cmdline").read_bytes():
                    found.append(pid)
            except OSError:
                continue
        return found

    def run(self) -> None:
        while not self.stop.wait(0.2):
            kids = self.children()
            self.worker_hwm_kb = max([self.worker_hwm_kb] + [_status_kb(k, "VmHWM")
                                                             for k in kids])
            total = _status_kb("self", "VmRSS") + sum(_status_kb(k, "VmRSS") for k in kids)
            self.total_kb = max(self.total_kb, total)


def stream(package: Path, data: Path, args: argparse.Namespace) -> dict[str, float]:
    """The child's job: one evaluate() run; its own and its workers' peak RSS."""
    from mnv1_coreml.evaluate import evaluate

    sampler = RssSampler()
    sampler.start()
    t0 = time.perf_counter()
    report = evaluate([package], data, jobs=args.jobs, batch_size=args.batch)
    wall = time.perf_counter() - t0
    sampler.stop.set()
    sampler.join()
    p = report.packages[0]
    ref = report.reference_for(p)
    return {
        "images": report.images_evaluated, "wall_s": wall,
        "end_to_end_images_per_s": report.images_evaluated / wall,
        "package_images_per_s": p.images_per_second,
        "pytorch_images_per_s": ref.n / ref.seconds if ref and ref.seconds else 0.0,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "worker_peak_rss_mb": sampler.worker_hwm_kb / 1024,
        "total_peak_rss_mb": sampler.total_kb / 1024,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--alpha", type=float, default=0.25)
    ap.add_argument("--res", type=int, default=128)
    ap.add_argument("--precision", default="fp16", choices=["fp16", "fp32"])
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--images", type=int, default=2000)
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--stream-child", nargs=2, metavar=("PACKAGE", "DATA"),
                    help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.stream_child:
        print(json.dumps(stream(Path(args.stream_child[0]), Path(args.stream_child[1]), args)))
        return

    from mnv1_coreml.pipeline import ConvertOptions, convert

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        package = root / f"mnv1_{args.precision}.mlpackage"
        convert(ConvertOptions(alpha=args.alpha, res=args.res, weights="random",
                               precision=args.precision, output=package, validate=False))
        photos = make_photos(root / "photos", DISTINCT)
        print(f"MobileNet V1 alpha={args.alpha} res={args.res} {args.precision}, random weights")
        throughput(package, photos, args)
        data = root / "data"
        link_dataset(photos, data, args.images)
        cmd = [sys.executable, __file__, "--stream-child", str(package), str(data),
               "--batch", str(args.batch), "--jobs", str(args.jobs)]
        res = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True)
                         .stdout.strip().splitlines()[-1])
        print(f"evaluate(): {res['images']} images ({DISTINCT} distinct 320x240 JPEGs), "
              f"--jobs {args.jobs}, batch {args.batch}, package + PyTorch reference")
        print(f"  wall {res['wall_s']:.1f} s, end to end {res['end_to_end_images_per_s']:.1f} "
              f"images/s; package {res['package_images_per_s']:.1f} images/s, PyTorch "
              f"{res['pytorch_images_per_s']:.1f} images/s (model time only)")
        print(f"  peak RSS: main process {res['peak_rss_mb']:.0f} MB, largest decoding worker "
              f"{res['worker_peak_rss_mb']:.0f} MB; main + workers at one instant "
              f"{res['total_peak_rss_mb']:.0f} MB (target < 2 GB)")


if __name__ == "__main__":
    main()
