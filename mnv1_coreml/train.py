"""``mnv1-coreml train``: fine-tune MobileNet V1 on a folder of photos, CPU only, in minutes.

The default is a **linear probe**: the backbone stays frozen, each image's pooled features are
computed once (prepared as the app sees it: :func:`mnv1_coreml.images.prepare_image`) and kept
in memory, and a multinomial logistic regression with weight decay is fitted on them by
full-batch L-BFGS, with early stopping on the validation split. One "epoch" of the probe is one
L-BFGS step (up to :data:`PROBE_ITERS_PER_EPOCH` iterations) over all cached features.

``fine_tune_from="blocks.K"`` then also trains blocks K..12 and the head (starting from the
probe's head), on augmented images (:data:`mnv1_coreml.train_data.AUGMENTATION`) with SGD and a
cosine schedule. BatchNorm statistics stay frozen (eval-mode BN) by default: with a few hundred
photos and batches of 32, batch statistics are noisy and would overwrite ImageNet's well
estimated ones; the BN scale and shift still train.

The best state (lowest validation loss) is kept at every epoch, so Ctrl-C stops cleanly: the
best checkpoint so far is written, with its labels and report.
"""

from __future__ import annotations

import json
import math
import re
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from rich.progress import Progress
from torch import nn

from .errors import UserError
from .images import Normalization
from .model import BLOCKS, MobileNetV1
from .train_data import (
    AUGMENTATION,
    DEFAULT_MAX_BAD_FRACTION,
    LoadedImages,
    augment,
    check_decoded,
    discover,
    load_images,
)

PROBE_MAX_EPOCHS = 100
PROBE_PATIENCE = 10
PROBE_ITERS_PER_EPOCH = 5
#: L2 penalty on the probe's weights (centred, globally scaled features; mean cross-entropy).
PROBE_WEIGHT_DECAY = 1e-3
FINE_TUNE_EPOCHS = 10
FINE_TUNE_LR = 0.01
FINE_TUNE_WEIGHT_DECAY = 4e-5  # the paper: little weight decay, MobileNets are small
#: Gradient-norm clip: without it (and without warm-up) the first fine-tuning steps of a
#: random-weight net blew the training loss up to 48 at lr 0.01 (measured, shapes dataset).
FINE_TUNE_CLIP = 2.0
FEATURE_BATCH = 32

EpochCallback = Callable[["EpochRecord"], None]


@dataclass(frozen=True)
class EpochRecord:
    """One line of the training report."""

    phase: str  # "probe" or "fine-tune"
    epoch: int
    train_loss: float
    train_acc: float
    val_loss: float
    val_acc: float
    lr: float
    seconds: float


@dataclass
class Fit:
    """A training phase's outcome: the best state, its epoch, and the per-epoch history."""

    history: list[EpochRecord]
    best_epoch: int
    best_val_loss: float
    interrupted: bool
    state: dict[str, torch.Tensor]  # for the probe: classifier.weight / classifier.bias only


def parse_fine_tune_from(spec: str) -> int:
    """``blocks.K`` (K = 0..12) -> K: the first block that trains."""
    m = re.fullmatch(r"blocks\.(\d+)", spec.strip())
    if not m or not 0 <= int(m.group(1)) < len(BLOCKS):
        raise UserError(
            f"--fine-tune-from takes blocks.K with K from 0 to {len(BLOCKS) - 1} (blocks.12 "
            f"trains the last block and the head), got {spec!r}"
        )
    return int(m.group(1))


def _batches(n: int, size: int) -> list[slice]:
    return [slice(i, min(i + size, n)) for i in range(0, n, size)]


@contextmanager
def _single_thread() -> Iterator[None]:
    """For small matrices, one intra-op thread: the probe's loss and gradient took 1.6 ms on
    one thread and 33 ms on two that spin-wait for each other (measured on this loaded 2-core
    machine, 800 x 256 features)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _batched(
    fn: Callable[[torch.Tensor], torch.Tensor],
    images: np.ndarray,
    normalization: Normalization,
    batch_size: int,
    workers: int | None,
    on_batch: Callable[[int], None] | None,
) -> list[torch.Tensor]:
    """``fn`` over normalised batches, in ``workers`` Python threads of one intra-op thread each.

    PyTorch releases the GIL inside ops, so the threads use every core, but without OpenMP's
    barrier spin-waits: on this 2-core machine under load, torch's default 2 intra-op threads
    ran MobileNet inference 3x to 14x slower than one thread, depending on the load
    (``benchmarks/train.py``).
    """
    workers = workers or torch.get_num_threads()

    def one(sl: slice) -> torch.Tensor:
        with torch.inference_mode():
            return fn(normalization.apply(images[sl]))

    out = []
    with _single_thread(), ThreadPoolExecutor(max_workers=workers) as pool:
        slices = _batches(len(images), batch_size)
        for sl, result in zip(slices, pool.map(one, slices), strict=True):
            out.append(result)
            if on_batch is not None:
                on_batch(sl.stop - sl.start)
    return out


def compute_features(
    model: MobileNetV1,
    images: np.ndarray,
    normalization: Normalization,
    *,
    batch_size: int = FEATURE_BATCH,
    workers: int | None = None,
    on_batch: Callable[[int], None] | None = None,
) -> torch.Tensor:
    """Pooled backbone features (N, C) float32 of uint8 (N, H, W, 3) images, eval mode."""
    model.eval()
    out = _batched(model.forward_features, images, normalization, batch_size, workers, on_batch)
    return torch.cat(out) if out else torch.zeros(0, model.classifier.in_features)


def predict_logits(
    model: nn.Module, images: np.ndarray, normalization: Normalization,
    batch_size: int = FEATURE_BATCH,
) -> torch.Tensor:
    """Eval-mode logits (N, K) of uint8 (N, H, W, 3) images."""
    model.eval()
    out = _batched(model, images, normalization, batch_size, None, None)
    return torch.cat(out) if out else torch.zeros(0, 0)


def _loss_acc(logits: torch.Tensor, labels: torch.Tensor) -> tuple[float, float]:
    if len(labels) == 0:
        return float("nan"), float("nan")
    loss = F.cross_entropy(logits, labels).item()
    acc = (logits.argmax(1) == labels).float().mean().item()
    return loss, acc


@_single_thread()
def fit_linear_probe(
    train_x: torch.Tensor,
    train_y: torch.Tensor,
    val_x: torch.Tensor,
    val_y: torch.Tensor,
    num_classes: int,
    *,
    weight_decay: float = PROBE_WEIGHT_DECAY,
    max_epochs: int = PROBE_MAX_EPOCHS,
    patience: int = PROBE_PATIENCE,
    on_epoch: EpochCallback | None = None,
) -> Fit:
    """Multinomial logistic regression on cached features: L-BFGS, L2, early stopping.

    Features are centred and divided by one global scale (their RMS deviation), which makes one
    weight decay fit every width and source; both are folded back into the returned
    ``classifier.weight``/``classifier.bias``, so the head works on raw features. The scale is
    one number, not a per-feature std, so the penalty stays isotropic on the raw features
    (plain logistic regression) and a near-constant feature cannot get a weight scaled up by
    its tiny std (which would amplify fp16 rounding in the package).
    """
    mu = train_x.mean(0)
    sd = (train_x - mu).pow(2).mean().sqrt().clamp_min(1e-8)
    xt, xv = (train_x - mu) / sd, (val_x - mu) / sd
    w = torch.zeros(num_classes, train_x.shape[1], requires_grad=True)
    b = torch.zeros(num_classes, requires_grad=True)
    opt = torch.optim.LBFGS(
        [w, b], lr=1.0, max_iter=PROBE_ITERS_PER_EPOCH, history_size=20,
        line_search_fn="strong_wolfe",
    )

    def objective() -> torch.Tensor:
        return F.cross_entropy(xt @ w.T + b, train_y) + 0.5 * weight_decay * (w * w).sum()

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = objective()
        loss.backward()
        return loss

    def folded() -> dict[str, torch.Tensor]:
        wd = (w / sd).detach().clone()
        return {"classifier.weight": wd, "classifier.bias": (b - wd @ mu).detach().clone()}

    history: list[EpochRecord] = []
    best = Fit(history, 0, math.inf, False, folded())
    since_best = 0
    try:
        for epoch in range(1, max_epochs + 1):
            start = time.perf_counter()
            opt.step(closure)
            with torch.no_grad():
                tl, ta = _loss_acc(xt @ w.T + b, train_y)
                vl, va = _loss_acc(xv @ w.T + b, val_y)
            rec = EpochRecord("probe", epoch, tl, ta, vl, va, 1.0, time.perf_counter() - start)
            history.append(rec)
            if vl < best.best_val_loss - 1e-6:
                best.best_epoch, best.best_val_loss, best.state = epoch, vl, folded()
                since_best = 0
            else:
                since_best += 1
            if on_epoch is not None:
                on_epoch(rec)
            if since_best >= patience or not math.isfinite(tl):
                break
    except KeyboardInterrupt:
        best.interrupted = True
    return best


def _trainable(model: MobileNetV1, first_block: int) -> list[nn.Parameter]:
    """Blocks ``first_block``..12 and the head train; the stem and earlier blocks are frozen."""
    for p in model.parameters():
        p.requires_grad_(False)
    params: list[nn.Parameter] = []
    for module in (*model.blocks[first_block:], model.classifier):
        for p in module.parameters():
            p.requires_grad_(True)
            params.append(p)
    return params


def fine_tune(
    model: MobileNetV1,
    first_block: int,
    train_bases: Sequence[np.ndarray],
    train_y: torch.Tensor,
    val_images: np.ndarray,
    val_y: torch.Tensor,
    normalization: Normalization,
    *,
    epochs: int = FINE_TUNE_EPOCHS,
    lr: float = FINE_TUNE_LR,
    batch_size: int = 32,
    weight_decay: float = FINE_TUNE_WEIGHT_DECAY,
    train_bn_stats: bool = False,
    seed: int = 0,
    start: Fit | None = None,
    on_epoch: EpochCallback | None = None,
    on_batch: Callable[[int], None] | None = None,
) -> Fit:
    """Train blocks ``first_block``.. and the head on augmented images: SGD with Nesterov
    momentum, a linear warm-up then a cosine schedule, and gradient-norm clipping.

    ``model`` must already carry the starting head (the probe's). BN layers run in eval mode
    (frozen statistics) unless ``train_bn_stats``. ``start`` is the state to beat: the best
    checkpoint is never worse on validation loss than what fine-tuning started from.
    """
    res = model.cfg.res
    params = _trainable(model, first_block)
    decay = [p for p in params if p.ndim > 1]
    no_decay = [p for p in params if p.ndim <= 1]
    opt = torch.optim.SGD(
        [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay}],
        lr=lr, momentum=0.9, nesterov=True,
    )
    steps_per_epoch = max(1, math.ceil(len(train_bases) / batch_size))
    total = epochs * steps_per_epoch
    warmup = min(steps_per_epoch, max(1, total // 10))

    def schedule(step: int) -> float:
        """Linear warm-up over the first epoch (at most a tenth of the run), then cosine to 0."""
        return min(1.0, (step + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * step / total))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, schedule)
    rng = np.random.default_rng(seed)
    gen = torch.Generator().manual_seed(seed)
    mean = torch.tensor(normalization.mean).view(1, 3, 1, 1)
    std = torch.tensor(normalization.std).view(1, 3, 1, 1)
    bn_layers = [m for m in model.blocks[first_block:].modules() if isinstance(m, nn.BatchNorm2d)]

    def snapshot() -> dict[str, torch.Tensor]:
        return {k: v.detach().clone() for k, v in model.state_dict().items()}

    history: list[EpochRecord] = []
    # epoch 0 is the starting point, the state to beat
    best = Fit(history, 0, start.best_val_loss if start else math.inf, False, snapshot())
    try:
        for epoch in range(1, epochs + 1):
            t0 = time.perf_counter()
            model.eval()
            for m in bn_layers:
                m.train(train_bn_stats)
            order = rng.permutation(len(train_bases))
            seen, loss_sum, correct = 0, 0.0, 0
            lr_now = opt.param_groups[0]["lr"]
            for sl in _batches(len(order), batch_size):
                idx = order[sl]
                x = augment([train_bases[i] for i in idx], res, rng, gen)
                x = (x - mean) / std
                y = train_y[torch.from_numpy(idx)]
                with torch.no_grad():
                    h = model.stem(x)
                    for block in model.blocks[:first_block]:
                        h = block(h)
                h = model.blocks[first_block:](h)
                logits = model.classifier(model.pool(h).flatten(1))
                loss = F.cross_entropy(logits, y)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                nn.utils.clip_grad_norm_(params, FINE_TUNE_CLIP)
                opt.step()
                sched.step()
                loss_sum += loss.item() * len(idx)
                correct += int((logits.argmax(1) == y).sum())
                seen += len(idx)
                if on_batch is not None:
                    on_batch(len(idx))
            vl, va = _loss_acc(predict_logits(model, val_images, normalization), val_y)
            rec = EpochRecord(
                "fine-tune", epoch, loss_sum / seen, correct / seen, vl, va, lr_now,
                time.perf_counter() - t0,
            )
            history.append(rec)
            if vl < best.best_val_loss - 1e-6:
                best.best_epoch, best.best_val_loss, best.state = epoch, vl, snapshot()
            if on_epoch is not None:
                on_epoch(rec)
    except KeyboardInterrupt:
        best.interrupted = True
    model.load_state_dict(best.state)
    for p in model.parameters():
        p.requires_grad_(False)
    return best


# ---------------------------------------------------------------------------------------------
# The whole run: data -> features -> probe (-> fine-tune) -> checkpoint, labels, package, report


@dataclass(frozen=True)
class TrainOptions:
    """Everything ``mnv1-coreml train`` takes; the CLI is a thin shell over this."""

    data_dir: Path
    output: Path = Path("Classifier.mlpackage")
    alpha: float | None = None  # None: the weights file's own, else 1.0 (as convert)
    res: int | None = None  # None: the weights file's own, else 224
    weights: str = "imagenet"
    seed: int = 0
    epochs: int | None = None  # None: PROBE_MAX_EPOCHS, or FINE_TUNE_EPOCHS when fine-tuning
    fine_tune_from: str | None = None
    val_split: float = 0.2
    weight_decay: float | None = None  # None: the phase's default
    lr: float = FINE_TUNE_LR
    batch_size: int = 32
    train_bn_stats: bool = False
    max_bad_fraction: float = DEFAULT_MAX_BAD_FRACTION
    force: bool = False
    jobs: int | None = None
    weights_sha256: str | None = None
    overrides: dict[str, Any] = field(default_factory=dict)
    #: The package step: the normal convert pipeline, validated at birth unless ``validate``
    #: is False; ``package=False`` stops after the checkpoint, labels and report.
    package: bool = True
    precision: str = "fp16"
    compression: Any = None  # mnv1_coreml.compress.config.CompressionConfig | None
    target: str | None = None
    validate: bool = True

    def __post_init__(self) -> None:
        from .fsutil import as_path

        object.__setattr__(self, "output", as_path(self.output))
        object.__setattr__(self, "data_dir", as_path(self.data_dir))
        if self.output.suffix != ".mlpackage":
            raise UserError(f"output must end in .mlpackage, got {self.output}")
        if self.epochs is not None and self.epochs < 1:
            raise UserError(f"--epochs must be >= 1, got {self.epochs}")
        if self.batch_size < 1:
            raise UserError(f"--batch-size must be >= 1, got {self.batch_size}")
        if not self.lr > 0:
            raise UserError(f"--lr must be > 0, got {self.lr}")
        if self.weight_decay is not None and not self.weight_decay >= 0:
            raise UserError(f"--weight-decay must be >= 0, got {self.weight_decay}")
        if not 0 <= self.max_bad_fraction <= 1:
            raise UserError(
                f"--max-bad-fraction must be between 0 and 1, got {self.max_bad_fraction}"
            )
        if self.fine_tune_from is not None:
            parse_fine_tune_from(self.fine_tune_from)

    def path(self, kind: str) -> Path:
        """Sibling outputs of the package: checkpoint, labels and report files."""
        stem = self.output.name[: -len(".mlpackage")]
        suffix = {
            "checkpoint": ".safetensors", "labels": ".labels.txt",
            "report_json": ".report.json", "report_md": ".report.md",
        }[kind]
        return self.output.with_name(stem + suffix)

    def convert_options(self, alpha: float, res: int, classes: Sequence[str]) -> Any:
        """The convert pipeline's options for the package made from the checkpoint."""
        from .pipeline import ConvertOptions

        return ConvertOptions(
            alpha=alpha, res=res, weights=str(self.path("checkpoint")), precision=self.precision,
            compression=self.compression, target=self.target, output=self.output,
            force=self.force, validate=self.validate, labels=list(classes),
        )

    def outputs(self) -> list[Path]:
        paths = [self.path(k) for k in ("checkpoint", "labels", "report_json", "report_md")]
        return paths + ([self.output] if self.package else [])


@dataclass
class TrainReport:
    """What the run did and how well it did, per epoch and on the validation split."""

    classes: list[str]
    layout: str
    counts: list[tuple[str, int, int]]
    skipped: list[tuple[str, str]]
    mode: str
    augmentation: str | None
    weights: str
    alpha: float
    res: int
    history: list[EpochRecord]
    best: dict[str, Any]
    interrupted: bool
    pytorch_val_acc: float
    package_val_acc: float | None = None
    package_agreement: float | None = None
    package_backend: str | None = None
    package_validation: str | None = None
    timings: dict[str, float] = field(default_factory=dict)
    outputs: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["history"] = [asdict(r) for r in self.history]
        return d

    def to_markdown(self) -> str:
        """Human-readable report: data, per-epoch table, PyTorch vs package side by side."""
        lines = [
            f"# Training report: MobileNet V1 alpha={self.alpha:g} res={self.res}",
            "",
            f"- weights: {self.weights}; mode: {self.mode}",
            f"- data: {self.layout}",
            f"- augmentation: {self.augmentation or 'none (linear probe on cached features)'}",
            f"- skipped (cannot be decoded): {len(self.skipped)}",
            f"- best: {self.best['phase']} epoch {self.best['epoch']} "
            f"(validation loss {self.best['val_loss']:.4f})"
            + ("; stopped by Ctrl-C" if self.interrupted else ""),
            "",
            "| class | train | val |",
            "|---|---:|---:|",
            *[f"| {c} | {t} | {v} |" for c, t, v in self.counts],
            "",
            "| phase | epoch | train loss | train acc | val loss | val acc | lr | s |",
            "|---|---:|---:|---:|---:|---:|---:|---:|",
            *[
                f"| {r.phase} | {r.epoch} | {r.train_loss:.4f} | {r.train_acc:.1%} | "
                f"{r.val_loss:.4f} | {r.val_acc:.1%} | {r.lr:.3g} | {r.seconds:.2f} |"
                for r in self.history
            ],
            "",
            "| validation split | top-1 accuracy |",
            "|---|---:|",
            f"| PyTorch | {self.pytorch_val_acc:.1%} |",
        ]
        if self.package_val_acc is not None:
            lines += [
                f"| package ({self.package_backend}) | {self.package_val_acc:.1%} |",
                "",
                f"Package and PyTorch agree on {self.package_agreement:.1%} of the validation "
                "images.",
            ]
        if self.package_validation:
            lines += ["", f"Validation at birth: {self.package_validation}"]
        return "\n".join(lines) + "\n"


@dataclass
class TrainResult:
    report: TrainReport
    checkpoint: Path
    labels: Path
    package: Path | None
    convert_result: Any = None


def _write_text(path: Path, text: str, force: bool) -> None:
    from .fsutil import atomic_path

    with atomic_path(path, force) as tmp:
        tmp.write_text(text, encoding="utf-8")


def save_checkpoint(path: Path, model: MobileNetV1, settings: Any, force: bool) -> None:
    """Our layout, with the architecture settings in the safetensors metadata; atomically."""
    from .fsutil import check_output
    from .weights import save_state_dict_file

    check_output(path, force)
    state = {k: v for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}
    save_state_dict_file(path, state, settings)


class _Bar:
    """One rich progress bar (or nothing): call it to advance; ``finish`` when a phase stops
    early (the probe's early stopping), so the bar ends full."""

    def __init__(self, progress: Progress | None, description: str, total: int) -> None:
        self.progress = progress
        self.task = None if progress is None else progress.add_task(description, total=total)

    def __call__(self, n: int = 1) -> None:
        if self.progress is not None and self.task is not None:
            self.progress.advance(self.task, n)

    def finish(self) -> None:
        if self.progress is not None and self.task is not None:
            done = next(t.completed for t in self.progress.tasks if t.id == self.task)
            self.progress.update(self.task, total=done)


class _Bars:
    """Rich progress bars for the phases, or nothing when no Progress is given."""

    def __init__(self, progress: Progress | None) -> None:
        self.progress = progress

    def task(self, description: str, total: int) -> _Bar:
        return _Bar(self.progress, description, total)


def train(
    opts: TrainOptions,
    progress: Progress | None = None,
    log: Callable[[str], None] | None = None,
) -> TrainResult:
    """Run the whole ``train`` command (see the module doc); every output written atomically."""
    from .fsutil import check_output
    from .labels import check_labels, write_labels
    from .model import build_model, check_res
    from .weights import load_weights, model_size

    say = log or (lambda _msg: None)
    bars = _Bars(progress)
    for path in opts.outputs():
        check_output(path, opts.force)
    if opts.package:  # refuse a bad target or compression before training, not after
        from .pipeline import preflight

        preflight(opts.convert_options(opts.alpha or 1.0, opts.res or 224, ["a", "b"]))
    first_block = (
        parse_fine_tune_from(opts.fine_tune_from) if opts.fine_tune_from is not None else None
    )
    timings: dict[str, float] = {}
    t0 = time.perf_counter()

    split = discover(opts.data_dir, opts.val_split, opts.seed)
    check_labels(split.classes, f"class folder names in {opts.data_dir}")
    loaded = load_weights(
        opts.weights, opts.alpha, opts.res, seed=opts.seed, overrides=opts.overrides,
        sha256=opts.weights_sha256,
    )
    alpha, res = model_size(loaded, opts.alpha, opts.res)
    check_res(res)
    model = build_model(alpha, res, loaded)
    model.classifier = nn.Linear(model.classifier.in_features, len(split.classes))
    model.cfg = type(model.cfg)(**{**asdict(model.cfg), "num_classes": len(split.classes)})
    norm = loaded.settings.normalization
    timings["weights"] = time.perf_counter() - t0

    t = time.perf_counter()
    tick = bars.task("decode images", len(split.train) + len(split.val))
    keep_base = first_block is not None
    train_imgs = load_images(split.train, res, keep_base=keep_base, jobs=opts.jobs,
                             on_image=tick)
    val_imgs = load_images(split.val, res, jobs=opts.jobs, on_image=tick)
    check_decoded(split, train_imgs, val_imgs, opts.max_bad_fraction)
    skipped = [(str(p), r) for p, r in train_imgs.bad + val_imgs.bad]
    if skipped:
        say(f"skipped {len(skipped)} image(s) that cannot be decoded (first: "
            f"{skipped[0][0]}: {skipped[0][1]})")
    timings["decode"] = time.perf_counter() - t

    t = time.perf_counter()
    tick = bars.task("features", len(train_imgs.images) + len(val_imgs.images))
    ftr = compute_features(model, train_imgs.images, norm, on_batch=tick)
    fva = compute_features(model, val_imgs.images, norm, on_batch=tick)
    timings["features"] = time.perf_counter() - t

    ytr = torch.from_numpy(train_imgs.labels)
    yva = torch.from_numpy(val_imgs.labels)
    t = time.perf_counter()
    probe_epochs = opts.epochs if first_block is None and opts.epochs else PROBE_MAX_EPOCHS
    tick = bars.task("linear probe (epochs)", probe_epochs)
    probe = fit_linear_probe(
        ftr, ytr, fva, yva, len(split.classes),
        weight_decay=PROBE_WEIGHT_DECAY if opts.weight_decay is None else opts.weight_decay,
        max_epochs=probe_epochs, on_epoch=lambda _r: tick(1),
    )
    tick.finish()
    with torch.no_grad():
        model.classifier.weight.copy_(probe.state["classifier.weight"])
        model.classifier.bias.copy_(probe.state["classifier.bias"])
    history = list(probe.history)
    best = {"phase": "probe", "epoch": probe.best_epoch, "val_loss": probe.best_val_loss}
    interrupted = probe.interrupted
    timings["probe"] = time.perf_counter() - t

    if first_block is not None and not interrupted:
        t = time.perf_counter()
        epochs = opts.epochs or FINE_TUNE_EPOCHS
        tick_epoch = bars.task(f"fine-tune from blocks.{first_block} (epochs)", epochs)
        tick_batch = bars.task("fine-tune (images this run)", epochs * len(train_imgs.images))
        ft = fine_tune(
            model, first_block, train_imgs.bases or [], ytr, val_imgs.images, yva, norm,
            epochs=epochs, lr=opts.lr, batch_size=opts.batch_size,
            weight_decay=(FINE_TUNE_WEIGHT_DECAY if opts.weight_decay is None
                          else opts.weight_decay),
            train_bn_stats=opts.train_bn_stats, seed=opts.seed, start=probe,
            on_epoch=lambda _r: tick_epoch(1), on_batch=tick_batch,
        )
        history += ft.history
        if ft.best_epoch > 0:
            best = {"phase": "fine-tune", "epoch": ft.best_epoch, "val_loss": ft.best_val_loss}
        interrupted = ft.interrupted
        timings["fine_tune"] = time.perf_counter() - t
    model.eval()

    ckpt, labels_path = opts.path("checkpoint"), opts.path("labels")
    save_checkpoint(ckpt, model, loaded.settings, opts.force)
    check_output(labels_path, opts.force)
    write_labels(labels_path, split.classes)

    torch_logits = predict_logits(model, val_imgs.images, norm)
    torch_pred = torch_logits.argmax(1).numpy()
    report = TrainReport(
        classes=list(split.classes), layout=split.layout, counts=split.counts(),
        skipped=skipped,
        mode="linear probe" if first_block is None else f"fine-tune from blocks.{first_block}",
        augmentation=AUGMENTATION if first_block is not None else None,
        weights=loaded.spec, alpha=alpha, res=res, history=history, best=best,
        interrupted=interrupted,
        pytorch_val_acc=float((torch_pred == val_imgs.labels).mean()) if len(yva) else math.nan,
        timings=timings,
        outputs={"checkpoint": str(ckpt), "labels": str(labels_path)},
    )
    result = TrainResult(report, ckpt, labels_path, None)
    if opts.package and not interrupted:
        t = time.perf_counter()
        result.convert_result = make_package(
            opts.convert_options(alpha, res, split.classes), progress
        )
        result.package = opts.output
        report.outputs["package"] = str(opts.output)
        validation = getattr(result.convert_result, "validation", None)
        if validation is not None:
            report.package_validation = validation.verdict_line()
        timings["package"] = time.perf_counter() - t
        t = time.perf_counter()
        compare_package(report, opts.output, val_imgs, torch_pred, split.classes)
        timings["package_eval"] = time.perf_counter() - t
    timings["total"] = time.perf_counter() - t0
    write_report(opts, report)
    return result


def make_package(convert_options: Any, progress: Progress | None = None) -> Any:
    """The package through the normal convert pipeline (compression, validation at birth)."""
    from .choices import STEPS
    from .pipeline import convert

    steps = [s for s in STEPS if s != "validate" or convert_options.validate]
    tick = _Bars(progress).task("package: " + ", ".join(steps), len(steps))
    return convert(convert_options, on_step=lambda _name: tick(1))


def compare_package(
    report: TrainReport,
    package: Path,
    val: LoadedImages,
    torch_pred: np.ndarray,
    classes: Sequence[str],
) -> None:
    """Run the package on the validation images (backends: Core ML on macOS, else ours)."""
    from .backends import make_backend

    if len(val.images) == 0:
        return
    backend = make_backend("auto", package)
    out = backend.run(val.images)
    index = {c: k for k, c in enumerate(classes)}
    pkg_pred = np.asarray([index.get(label, -1) for label in out.class_label])
    report.package_backend = backend.name
    report.package_val_acc = float((pkg_pred == val.labels).mean())
    report.package_agreement = float((pkg_pred == torch_pred).mean())


def write_report(opts: TrainOptions, report: TrainReport) -> None:
    """The report as JSON (for tools) and Markdown (for people), atomically."""
    report.outputs["report_json"] = str(opts.path("report_json"))
    report.outputs["report_md"] = str(opts.path("report_md"))
    _write_text(opts.path("report_json"), json.dumps(report.to_json(), indent=2) + "\n",
                opts.force)
    _write_text(opts.path("report_md"), report.to_markdown(), opts.force)
