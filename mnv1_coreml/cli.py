"""``mnv1-coreml``: a thin Typer shell over the library. Parsing and printing only.

Every check lives in the library; choices and defaults come from its constants
(:mod:`mnv1_coreml.choices`, :mod:`mnv1_coreml.compress.config`). Bad input of any kind (an
unparsable value, a UserError from the library) ends in one line on stderr and exit code 2; a
failed validation ends in exit code 1; Ctrl-C in exit code 130.

Adding a command: a function decorated with ``@app.command()`` that parses its options, calls
the library, and prints. Commands that never touch coremltools go in ``LIGHT_COMMANDS``; all
others run inside ``quiet_coremltools()`` (see :func:`main`).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Optional

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    Progress,
    SpinnerColumn,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

from . import choices
from ._version import __version__
from .compress.config import DEFAULT_GROUP_SIZE, GRANULARITIES, QUANTIZERS
from .errors import OutputExistsError, UserError, one_line

if TYPE_CHECKING:
    from .backends import Backend
    from .golden import GoldenSet
    from .layers import LayerReport

app = typer.Typer(
    name="mnv1-coreml",
    help="MobileNet V1 from PyTorch to Core ML, validated against PyTorch on any OS.",
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
out = Console(soft_wrap=True)
err = Console(stderr=True)
#: Commands that never load coremltools (no need to silence it, or to pay for its import).
LIGHT_COMMANDS = {"summary"}


def _choices(name: str, values: Sequence[str]) -> type[Enum]:
    """A str Enum for Typer from a tuple of library values (member names are the values)."""
    return Enum(name, {v: v for v in values}, type=str)  # type: ignore[return-value]


PrecisionChoice = _choices("PrecisionChoice", choices.PRECISIONS)
TargetChoice = _choices("TargetChoice", choices.TARGET_NAMES)
GranularityChoice = _choices("GranularityChoice", GRANULARITIES)
QuantizeChoice = _choices("QuantizeChoice", tuple(QUANTIZERS))
PaddingChoice = _choices("PaddingChoice", choices.PADDINGS)
ActivationChoice = _choices("ActivationChoice", choices.ACTIVATIONS)
BackendChoice = _choices("BackendChoice", choices.BACKENDS)
UnitsChoice = _choices("UnitsChoice", choices.COMPUTE_UNITS)
#: Defaults, as members of the choices above (the library's first value of each tuple).
DEFAULT_PRECISION = PrecisionChoice(choices.PRECISIONS[0])
DEFAULT_GRANULARITY = GranularityChoice(GRANULARITIES[0])
DEFAULT_BACKEND = BackendChoice(choices.BACKENDS[0])
DEFAULT_UNITS = UnitsChoice(choices.COMPUTE_UNITS[0])


def _version(value: bool) -> None:
    if value:
        out.print(f"mnv1-coreml {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version, is_eager=True, help="Print the version."),
    ] = False,
) -> None:
    """MobileNet V1 from PyTorch to Core ML, validated against PyTorch on any OS."""


AlphaOpt = Annotated[float, typer.Option("--alpha", help="Width multiplier, any number > 0.")]
ResOpt = Annotated[int, typer.Option("--res", help="Input resolution: a multiple of 32, 32-1024.")]
WeightsOpt = Annotated[
    str,
    typer.Option(
        "--weights",
        help="imagenet (Keras files, 16 variants), timm (alpha 1.0), random, or a file path "
        "(.h5, .keras, .safetensors, .pt, .pth), with any number of classes.",
    ),
]
SeedOpt = Annotated[int, typer.Option("--seed", help="Seed for --weights random.")]
FileAlphaOpt = Annotated[
    Optional[float],  # noqa: UP045
    typer.Option("--alpha", help="Width multiplier > 0 (default: the weights file's, else 1.0)."),
]
FileResOpt = Annotated[
    Optional[int],  # noqa: UP045
    typer.Option(
        "--res",
        help="Input resolution, a multiple of 32 from 32 to 1024 (default: the one a Keras "
        "file records, else 224).",
    ),
]
LabelsOpt = Annotated[
    Optional[Path],  # noqa: UP045
    typer.Option(
        "--labels",
        help="Class labels, one per class of the checkpoint: UTF-8 text, one per line, or a "
        "JSON list (default: ImageNet's, for 1000 classes).",
    ),
]
PrecisionOpt = Annotated[
    PrecisionChoice, typer.Option("--precision", help="Compute precision of the program.")
]
PalettizeOpt = Annotated[
    Optional[int],  # noqa: UP045 - typer needs Optional on 3.10
    typer.Option("--palettize", help="k-means palettize every conv/FC weight: 8, 6 or 4 bits."),
]
GranularityOpt = Annotated[
    GranularityChoice,
    typer.Option("--granularity", help="One palette per tensor or per group."),
]
GroupSizeOpt = Annotated[
    int, typer.Option("--group-size", help="Output channels per palette (grouped mode).")
]
QuantizeOpt = Annotated[
    Optional[QuantizeChoice],  # noqa: UP045
    typer.Option(
        "--quantize",
        help="int8: linear symmetric per-channel weights. w8a8: int8 weights and int8 "
        "activations calibrated on images (iOS17).",
    ),
]
CalibrationOpt = Annotated[
    Optional[Path],  # noqa: UP045
    typer.Option(
        "--calibration",
        help="With --quantize w8a8: directory of photos to calibrate activation ranges on "
        "(default: the packaged photos and probes).",
    ),
]
NoValidateOpt = Annotated[
    bool, typer.Option("--no-validate", help="Skip validation against PyTorch.")
]
ForceOpt = Annotated[bool, typer.Option("--force", help="Replace an existing output.")]
Sha256Opt = Annotated[
    Optional[str],  # noqa: UP045
    typer.Option("--sha256", help="Pin the SHA-256 of the weights file."),
]
PaddingOpt = Annotated[
    Optional[PaddingChoice],  # noqa: UP045
    typer.Option("--padding", help="Override: torch (symmetric) or tf (SAME) padding."),
]
ActivationOpt = Annotated[
    Optional[ActivationChoice],  # noqa: UP045
    typer.Option("--activation", help="Override: relu or relu6."),
]
EpsOpt = Annotated[
    Optional[float], typer.Option("--bn-eps", help="Override: BatchNorm epsilon.")  # noqa: UP045
]
MeanOpt = Annotated[
    Optional[str],  # noqa: UP045
    typer.Option("--mean", help="Override: input mean R,G,B in 0..1 units."),
]
StdOpt = Annotated[
    Optional[str],  # noqa: UP045
    typer.Option("--std", help="Override: input std R,G,B in 0..1 units."),
]


def _parse_triplet(text: str | None, name: str) -> tuple[float, float, float] | None:
    if text is None:
        return None
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        values = ()
    if len(values) != 3:
        raise UserError(f"{name} takes three comma-separated numbers (R,G,B), got {text!r}")
    return values  # type: ignore[return-value]


def _overrides(
    padding: Enum | None,
    activation: Enum | None,
    bn_eps: float | None,
    mean: str | None,
    std: str | None,
) -> dict[str, object]:
    """Architecture settings the user forces over what the weights' format implies (the
    library checks the values)."""
    overrides: dict[str, object] = {}
    if padding is not None:
        overrides["padding"] = padding.value
    if activation is not None:
        overrides["activation"] = activation.value
    if bn_eps is not None:
        overrides["bn_eps"] = bn_eps
    m, s = _parse_triplet(mean, "--mean"), _parse_triplet(std, "--std")
    if m is not None or s is not None:
        overrides["normalization_parts"] = (m, s)  # a missing part keeps the weights' own
    return overrides


def _compression(
    palettize: int | None, granularity: Enum, group_size: int, quantize: Enum | None,
    calibration: Path | None = None,
) -> Any:
    """The compression options as a library config (``Palettize``, ``QuantizeInt8``...)."""
    from .compress.config import Palettize, QuantizeW8A8

    if palettize is not None and quantize is not None:
        raise UserError("--palettize and --quantize are exclusive; pick one")
    if calibration is not None:
        if quantize is None or QUANTIZERS[quantize.value] is not QuantizeW8A8:
            raise UserError("--calibration needs --quantize w8a8")
        from .images import IMAGE_SUFFIXES, iter_image_files

        if not calibration.is_dir():
            raise UserError(f"--calibration {calibration}: not a directory")
        if next(iter_image_files(calibration), None) is None:
            raise UserError(
                f"--calibration {calibration}: no images ({', '.join(IMAGE_SUFFIXES)})"
            )
        return QuantizeW8A8(str(calibration))
    if palettize is not None:
        return Palettize(palettize, granularity.value, group_size)
    if granularity.value != GRANULARITIES[0]:
        raise UserError("--granularity needs --palettize")
    return None if quantize is None else QUANTIZERS[quantize.value]()


@contextmanager
def _steps(names: Sequence[str], title: str) -> Iterator[tuple[Callable, Callable]]:
    """A progress bar over named steps, plus a byte bar for a weights download if one happens.

    The library reports each step as it starts, and download progress as (done, total).
    """
    progress = Progress(
        SpinnerColumn(),
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TimeElapsedColumn(),
        console=err,
        transient=False,
    )
    task = progress.add_task(title, total=len(names))
    seen: list[str] = []
    download: list[TaskID] = []

    def on_step(name: str) -> None:
        if seen:
            progress.advance(task)
        seen.append(name)
        progress.update(task, description=f"{title}: {name}")

    def on_download(done: int, total: int | None) -> None:
        if not download:
            download.append(progress.add_task("download weights (bytes)", total=total))
        progress.update(download[0], completed=done, total=total)

    with progress:
        try:
            yield on_step, on_download
        except BaseException:
            progress.live.transient = True  # the error line alone says what went wrong
            raise
        progress.update(task, completed=len(names), description=f"{title}: done")


@app.command()
def summary(
    alpha: AlphaOpt = choices.DEFAULT_ALPHA,
    res: ResOpt = choices.DEFAULT_RES,
    classes: Annotated[
        int, typer.Option("--classes", help="Classes of the classifier (your own: its count).")
    ] = 1000,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
    all_variants: Annotated[
        bool,
        typer.Option("--all", help="Markdown table of the 16 paper variants (alpha x res)."),
    ] = False,
) -> None:
    """Per-layer shapes, parameters and mult-adds (the paper's Tables 6 and 7)."""
    from .model import MobileNetConfig
    from .summary import paper_macs_millions, summarize, variants_markdown

    if all_variants:
        out.print(variants_markdown(), markup=False, highlight=False)
        return
    s = summarize(MobileNetConfig(alpha=alpha, res=res, num_classes=classes))
    if as_json:
        print(json.dumps(s.to_json(), indent=2))
        return
    table = Table(title=f"MobileNet V1 alpha={alpha} res={res}")
    for col in ("layer", "type", "stride", "input", "output", "params", "mult-adds"):
        table.add_column(col, justify="right" if col in ("params", "mult-adds") else "left")
    for r in s.layers:
        table.add_row(
            r.name, r.type, str(r.stride), "x".join(map(str, r.input_shape)),
            "x".join(map(str, r.output_shape)), f"{r.params:,}", f"{r.macs:,}",
        )
    table.add_row("total", "", "", "", "", f"{s.params:,}", f"{s.macs:,}", style="bold")
    out.print(table)
    out.print(
        f"params {s.params:,} ({s.params / 1e6:.1f}M); mult-adds {s.macs:,} "
        f"({s.macs / 1e6:.2f}M exact, paper prints {paper_macs_millions(alpha, res)}M)"
    )


@app.command()
def convert(
    alpha: FileAlphaOpt = None,
    res: FileResOpt = None,
    weights: WeightsOpt = choices.DEFAULT_WEIGHTS,
    labels: LabelsOpt = None,
    seed: SeedOpt = 0,
    precision: PrecisionOpt = DEFAULT_PRECISION,
    palettize: PalettizeOpt = None,
    granularity: GranularityOpt = DEFAULT_GRANULARITY,
    group_size: GroupSizeOpt = DEFAULT_GROUP_SIZE,
    quantize: QuantizeOpt = None,
    calibration: CalibrationOpt = None,
    target: Annotated[
        Optional[TargetChoice],  # noqa: UP045
        typer.Option("--target", help="Minimum deployment target (default: lowest possible)."),
    ] = None,
    output: Annotated[
        Path, typer.Option("-o", "--output", help="Output .mlpackage path.")
    ] = Path(choices.DEFAULT_OUTPUT),
    force: ForceOpt = False,
    no_validate: NoValidateOpt = False,
    sha256: Sha256Opt = None,
    padding: PaddingOpt = None,
    activation: ActivationOpt = None,
    bn_eps: EpsOpt = None,
    mean: MeanOpt = None,
    std: StdOpt = None,
) -> None:
    """Convert MobileNet V1 to a Core ML ML Program image classifier (.mlpackage)."""
    from .pipeline import ConvertOptions
    from .pipeline import convert as run_convert
    from .sizes import package_bytes

    opts = ConvertOptions(
        alpha=alpha, res=res, weights=weights, seed=seed, precision=precision.value,
        compression=_compression(palettize, granularity, group_size, quantize, calibration),
        target=target.value if target else None, output=output, force=force,
        validate=not no_validate, weights_sha256=sha256,
        overrides=_overrides(padding, activation, bn_eps, mean, std), labels=labels,
    )
    steps = [s for s in choices.STEPS if s != "validate" or opts.validate]
    with _steps(steps, "convert") as (on_step, on_download):
        result = run_convert(opts, on_step=on_step, on_download=on_download)
    size = package_bytes(result.path)
    out.print(
        f"wrote {result.path} ({size / 1e6:.2f} MB, {opts.precision}, target {result.target})"
    )
    if result.compression_report is not None:
        for line in result.compression_report.summary_lines():
            out.print(line)
    if result.validation is not None:
        out.print(result.validation.verdict_line())
        if not result.validation.passed:
            raise typer.Exit(1)


@app.command()
def train(
    data_dir: Annotated[
        Path,
        typer.Argument(help="Class folders of photos (names = labels), or train/ and val/ "
                       "folders holding them."),
    ],
    output: Annotated[
        Path, typer.Option("-o", "--output", help="Output .mlpackage; the checkpoint, labels "
                           "and report are written beside it.")
    ] = Path("Classifier.mlpackage"),
    alpha: FileAlphaOpt = None,
    res: FileResOpt = None,
    weights: WeightsOpt = choices.DEFAULT_WEIGHTS,
    seed: Annotated[
        int, typer.Option("--seed", help="Seed for the split, augmentation and random weights.")
    ] = 0,
    epochs: Annotated[
        Optional[int],  # noqa: UP045
        typer.Option("--epochs", help="Max epochs (default: probe 100 with early stopping; "
                     "fine-tuning 10)."),
    ] = None,
    fine_tune_from: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option("--fine-tune-from", help="blocks.K: also train blocks K..12 (augmented, "
                     "cosine schedule, BN statistics frozen)."),
    ] = None,
    val_split: Annotated[
        float, typer.Option("--val-split", help="Fraction of each class held out for "
                            "validation (ignored with train/ and val/ folders).")
    ] = 0.2,
    lr: Annotated[float, typer.Option("--lr", help="Fine-tuning learning rate (SGD).")] = 0.01,
    weight_decay: Annotated[
        Optional[float],  # noqa: UP045
        typer.Option("--weight-decay", help="L2 penalty (default: probe 1e-3, fine-tune 4e-5)."),
    ] = None,
    batch_size: Annotated[
        int, typer.Option("--batch-size", help="Fine-tuning batch size.")
    ] = 32,
    train_bn_stats: Annotated[
        bool, typer.Option("--train-bn-stats", help="Update BatchNorm statistics while "
                           "fine-tuning (default: frozen; small datasets give noisy ones).")
    ] = False,
    max_bad_fraction: Annotated[
        float, typer.Option("--max-bad-fraction", help="Refuse the run when more than this "
                            "fraction of images cannot be decoded.")
    ] = 0.1,
    no_package: Annotated[
        bool, typer.Option("--no-package", help="Stop after the checkpoint, labels and report.")
    ] = False,
    precision: PrecisionOpt = DEFAULT_PRECISION,
    palettize: PalettizeOpt = None,
    granularity: GranularityOpt = DEFAULT_GRANULARITY,
    group_size: GroupSizeOpt = DEFAULT_GROUP_SIZE,
    quantize: QuantizeOpt = None,
    calibration: CalibrationOpt = None,
    target: Annotated[
        Optional[TargetChoice],  # noqa: UP045
        typer.Option("--target", help="Minimum deployment target (default: lowest possible)."),
    ] = None,
    force: ForceOpt = False,
    no_validate: NoValidateOpt = False,
    sha256: Sha256Opt = None,
    padding: PaddingOpt = None,
    activation: ActivationOpt = None,
    bn_eps: EpsOpt = None,
    mean: MeanOpt = None,
    std: StdOpt = None,
) -> None:
    """Fine-tune MobileNet V1 on a folder of photos: checkpoint, labels, report and package."""
    from .train import TrainOptions
    from .train import train as run_train

    opts = TrainOptions(
        data_dir=data_dir, output=output, alpha=alpha, res=res, weights=weights, seed=seed,
        epochs=epochs, fine_tune_from=fine_tune_from, val_split=val_split,
        weight_decay=weight_decay, lr=lr, batch_size=batch_size, train_bn_stats=train_bn_stats,
        max_bad_fraction=max_bad_fraction, force=force, weights_sha256=sha256,
        overrides=_overrides(padding, activation, bn_eps, mean, std), package=not no_package,
        precision=precision.value, target=target.value if target else None,
        compression=_compression(palettize, granularity, group_size, quantize, calibration),
        validate=not no_validate,
    )
    progress = Progress(
        SpinnerColumn(), TextColumn("[bold]{task.description}"), BarColumn(),
        TextColumn("{task.completed}/{task.total}"), TimeElapsedColumn(), console=err,
    )
    with progress:
        try:
            result = run_train(opts, progress=progress, log=lambda m: err.print(m, markup=False))
        except BaseException:
            progress.live.transient = True  # the error line alone says what went wrong
            raise
    rep = result.report
    table = Table(title=f"{rep.mode}: {', '.join(rep.classes)}")
    for col in ("phase", "epoch", "train loss", "train acc", "val loss", "val acc"):
        table.add_column(col, justify="left" if col == "phase" else "right")
    def is_best(r: Any) -> bool:
        return r.phase == rep.best["phase"] and r.epoch == rep.best["epoch"]

    shown = rep.history
    if len(shown) > 24:  # all of them are in the report files; show about 12 and the best
        keep = {len(shown) - 1, *range(0, len(shown), max(1, len(shown) // 12))}
        shown = [r for i, r in enumerate(shown) if i in keep or is_best(r)]
    for r in shown:
        best = is_best(r)
        table.add_row(r.phase, str(r.epoch), f"{r.train_loss:.4f}", f"{r.train_acc:.1%}",
                      f"{r.val_loss:.4f}", f"{r.val_acc:.1%}", style="bold" if best else "")
    out.print(table)
    line = f"validation accuracy: PyTorch {rep.pytorch_val_acc:.1%}"
    if rep.package_val_acc is not None:
        line += (f", package ({rep.package_backend}) {rep.package_val_acc:.1%}; they agree on "
                 f"{rep.package_agreement:.1%} of {sum(v for _, _, v in rep.counts)} images")
    out.print(line, markup=False)
    for what in ("checkpoint", "labels", "package", "report_md", "report_json"):
        if what in rep.outputs:
            out.print(f"wrote {rep.outputs[what]}", markup=False)
    if rep.interrupted:
        err.print(
            f"interrupted: kept the best state so far ({rep.best['phase']} epoch "
            f"{rep.best['epoch']}); no package made. Make it with: mnv1-coreml convert "
            f"--weights {result.checkpoint} --labels {result.labels} -o {opts.output}",
            markup=False,
        )
        raise typer.Exit(130)
    validation = getattr(result.convert_result, "validation", None)
    if validation is not None:
        out.print(validation.verdict_line(), markup=False)
        if not validation.passed:
            raise typer.Exit(1)


@app.command()
def golden(
    output: Annotated[Path, typer.Option("-o", "--output", help="Golden directory to write.")],
    alpha: FileAlphaOpt = None,
    res: FileResOpt = None,
    weights: WeightsOpt = choices.DEFAULT_WEIGHTS,
    labels: LabelsOpt = None,
    seed: SeedOpt = 0,
    images: Annotated[
        Optional[Path],  # noqa: UP045
        typer.Option("--images", help="Directory of photos (default: the packaged ones)."),
    ] = None,
    force: ForceOpt = False,
    sha256: Sha256Opt = None,
    padding: PaddingOpt = None,
    activation: ActivationOpt = None,
    bn_eps: EpsOpt = None,
    mean: MeanOpt = None,
    std: StdOpt = None,
) -> None:
    """Write golden PyTorch logits (logits.npz + manifest.json) for validate."""
    from .golden import GOLDEN_STEPS, create_golden

    with _steps(GOLDEN_STEPS, "golden") as (on_step, on_download):
        g = create_golden(
            output, alpha, res, weights, seed=seed, image_dir=images, weights_sha256=sha256,
            overrides=_overrides(padding, activation, bn_eps, mean, std), force=force,
            on_step=on_step, progress=on_download, labels=labels,
        )
    out.print(f"wrote {output}: {len(g.names)} images, logits {g.logits.shape[0]}x"
              f"{g.logits.shape[1]}, weights {g.manifest['weights']}")


BackendOpt = Annotated[
    BackendChoice,
    typer.Option("--backend", help="auto: Core ML on macOS, else the reference interpreter."),
]
UnitsOpt = Annotated[
    UnitsChoice, typer.Option("--compute-units", help="Core ML compute units (macOS).")
]


@app.command()
def validate(
    model: Annotated[Path, typer.Argument(help="The .mlpackage to check.")],
    golden_dir: Annotated[
        Optional[Path],  # noqa: UP045
        typer.Option("--golden", help="Golden directory (default: found in golden/ by metadata)."),
    ] = None,
    backend: BackendOpt = DEFAULT_BACKEND,
    compute_units: UnitsOpt = DEFAULT_UNITS,
    json_path: Annotated[
        Optional[Path],  # noqa: UP045
        typer.Option("--json", help="Also write the full report as JSON here."),
    ] = None,
    max_abs: Annotated[
        Optional[float],  # noqa: UP045
        typer.Option("--max-abs", help="Override the max abs logit error tolerance."),
    ] = None,
    min_cosine: Annotated[
        Optional[float],  # noqa: UP045
        typer.Option("--min-cosine", help="Override the minimum cosine similarity."),
    ] = None,
    min_psnr: Annotated[
        Optional[float],  # noqa: UP045
        typer.Option("--min-psnr", help="Override the minimum PSNR in dB."),
    ] = None,
    layers: Annotated[
        bool,
        typer.Option("--layers", help="Also compare every layer with PyTorch and name the "
                     "first one that diverges (exit 1 if one does)."),
    ] = False,
    plot_path: Annotated[
        Optional[Path],  # noqa: UP045
        typer.Option("--plot", help="With --layers: write PSNR per layer as a PNG here."),
    ] = None,
) -> None:
    """Compare a .mlpackage with golden PyTorch logits. Exit 0 pass, 1 fail, 2 bad input."""
    from .validation import resolve_golden, write_report_json
    from .validation import validate as run_validate

    if plot_path is not None:
        _check_layer_plot(plot_path, layers)
    golden_set, golden_label = resolve_golden(model, golden_dir)
    runner = None
    if layers:  # one pass over the golden images serves both reports (reference backend)
        from .layers import layer_backend

        runner = layer_backend(model, golden_set, backend.value, compute_units.value)
    report = run_validate(
        model, golden_set, backend=runner or backend.value, compute_units=compute_units.value,
        overrides={"max_abs": max_abs, "min_cosine": min_cosine, "min_psnr": min_psnr},
        golden_label=golden_label,
    )
    table = Table(title=f"{model} vs {report.golden}")
    for col in ("image", "status", "top-1 golden", "top-1 model", "top-5", "margin",
                "max abs", "cosine", "PSNR dB"):
        table.add_column(col)
    for r in report.images:
        style = {"FAIL": "bold red", "ambiguous": "yellow"}.get(r.status, "")
        table.add_row(
            r.name, r.status, r.top1_golden, r.top1_model, f"{r.top5_overlap}/5",
            f"{r.margin:.3g}", f"{r.max_abs:.3g}", f"{r.cosine:.7f}", f"{r.psnr:.1f}",
            style=style,
        )
    out.print(table)
    for r in report.images:
        if r.reasons:
            out.print(f"{r.name}: {'; '.join(r.reasons)}", markup=False)
    for e in report.contract_errors:
        out.print(f"contract: {e}", markup=False)
    t = report.tolerances
    out.print(f"tolerances ({report.kind}, {report.compared_on}): max abs {t.max_abs:g}, "
              f"cosine >= {t.min_cosine}, PSNR >= {t.min_psnr} dB", markup=False)
    out.print(report.verdict_line(), markup=False)
    layer_report = None
    if runner is not None and report.images:  # --layers (if anything could be compared)
        layer_report = _validate_layers(model, golden_set, golden_label, runner,
                                        compute_units.value, plot_path)
    if json_path is not None:
        if layer_report is None:
            write_report_json(report, json_path)
        else:
            from .layers import write_json

            write_json({**report.to_json(), **layer_report.to_json()}, json_path)
    if not report.passed or (layer_report and layer_report.first_divergent_layer):
        raise typer.Exit(1)


def _check_layer_plot(path: Path, layers: bool) -> None:
    """Refuse a bad --plot before any work is done."""
    if not layers:
        raise UserError("--plot draws the per-layer report; add --layers")
    if path.suffix.lower() != ".png":
        raise UserError(f"--plot writes a PNG; give a path ending in .png, got {path}")
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise UserError(f"cannot write {path}: directory {parent} does not exist")


def _validate_layers(model: Path, golden_set: GoldenSet, golden_label: str, runner: Backend,
                     compute_units: str, plot_path: Path | None) -> LayerReport:
    """``validate --layers``: the per-layer table, its verdict, and the plot."""
    from .layers import plot_layers, table_rows, validate_layers

    golden_dir = Path(golden_label) if Path(golden_label).is_dir() else None
    rep = validate_layers(model, golden_set, golden_dir=golden_dir, runner=runner,
                          compute_units=compute_units, golden_label=golden_label)
    table = Table(title=f"{model} layer by layer vs PyTorch ({rep.kind})")
    for col in ("layer", "max abs", "rel err", "cosine", "PSNR dB", "step dB", "status"):
        table.add_column(col, no_wrap=True)
    for row, r in zip(table_rows(rep), rep.rows, strict=True):
        table.add_row(*row, style="" if r.ok else "bold red")
    out.print(table)
    out.print(rep.verdict_line(), markup=False)
    if plot_path is not None:
        plot_layers(rep, plot_path)
        out.print(f"wrote {plot_path}", markup=False)
    return rep


@app.command()
def zoo(
    output: Annotated[Path, typer.Option("-o", "--output", help="Directory for the 16 packages.")],
    weights: WeightsOpt = choices.DEFAULT_WEIGHTS,
    labels: LabelsOpt = None,
    seed: SeedOpt = 0,
    precision: PrecisionOpt = DEFAULT_PRECISION,
    palettize: PalettizeOpt = None,
    quantize: QuantizeOpt = None,
    jobs: Annotated[int, typer.Option("--jobs", help="Worker processes.")] = 2,
    no_validate: NoValidateOpt = False,
    force: Annotated[bool, typer.Option("--force", help="Replace existing packages.")] = False,
) -> None:
    """Convert all 16 alpha x res variants; write zoo.md and zoo.json with sizes and verdicts."""
    from .labels import read_labels_option
    from .pipeline import ConvertOptions
    from .zoo import check_zoo_output, run_zoo, write_tables, zoo_markdown

    check_zoo_output(output, force, jobs)
    read_labels_option(labels)  # a bad labels file fails here, before any worker starts
    base = ConvertOptions(
        weights=weights, seed=seed, precision=precision.value,
        compression=_compression(palettize, DEFAULT_GRANULARITY, DEFAULT_GROUP_SIZE, quantize),
        force=force, validate=not no_validate, output=output / "x.mlpackage", labels=labels,
    )
    progress = Progress(SpinnerColumn(), TextColumn("[bold]zoo"), BarColumn(),
                        TextColumn("{task.completed}/{task.total} {task.description}"),
                        TimeElapsedColumn(), console=err)
    with progress:
        task = progress.add_task("", total=16)

        def done(entry) -> None:
            desc = f"{entry.alpha}-{entry.res} {entry.verdict}"
            progress.update(task, advance=1, description=desc)

        entries = run_zoo(base, output, jobs=jobs, on_done=done)
    md, js = write_tables(entries, output)
    out.print(zoo_markdown(entries), markup=False, highlight=False)
    out.print(f"wrote {md} and {js}")
    if any(e.verdict != "PASS" and e.verdict != "not validated" for e in entries):
        raise typer.Exit(1)


ImageMeanOpt = Annotated[
    Optional[str],  # noqa: UP045
    typer.Option("--mean", help="Multi-array input only: mean R,G,B in 0..1 units."),
]
ImageStdOpt = Annotated[
    Optional[str],  # noqa: UP045
    typer.Option("--std", help="Multi-array input only: std R,G,B in 0..1 units."),
]


@app.command()
def predict(
    model: Annotated[
        Path, typer.Argument(help="An image-classifier ML Program (.mlpackage), ours or not.")
    ],
    images: Annotated[list[Path], typer.Argument(help="Image files and/or directories.")],
    top: Annotated[int, typer.Option("--top", help="Labels shown per image.")] = 5,
    json_path: Annotated[
        Optional[Path],  # noqa: UP045
        typer.Option("--json", help="Also write the predictions as JSON here."),
    ] = None,
    backend: BackendOpt = DEFAULT_BACKEND,
    compute_units: UnitsOpt = DEFAULT_UNITS,
    mean: ImageMeanOpt = None,
    std: ImageStdOpt = None,
) -> None:
    """Top-K labels per photo. Exit 0, or 1 when some images could not be read."""
    from .predict import ImageClassifier, image_files, predict_files, write_predictions_json

    if top < 1:
        raise UserError(f"--top must be >= 1, got {top}")
    files = image_files(images)
    clf = ImageClassifier(
        model, backend=backend.value, compute_units=compute_units.value,
        mean=_parse_triplet(mean, "--mean"), std=_parse_triplet(std, "--std"),
    )

    def unreadable(path: Path, reason: str) -> None:
        err.print(f"mnv1-coreml: cannot read {path}: {reason}", markup=False, highlight=False,
                  soft_wrap=True)

    preds, errors = predict_files(clf, files, k=top, on_error=unreadable)
    if not preds:
        raise UserError(f"none of the {len(files)} images could be read")
    info = clf.info
    table = Table(title=f"{model} ({clf.backend_name}, {info.input_kind} input "
                        f"{info.res}x{info.res}, {info.output_kind} output)")
    table.add_column("image", overflow="fold")
    table.add_column("#", justify="right")
    table.add_column("label")
    table.add_column("probability", justify="right")
    for p in preds:
        for rank, (label, prob) in enumerate(p.top, 1):
            table.add_row(p.image if rank == 1 else "", str(rank), label, f"{prob:.4f}",
                          end_section=rank == len(p.top))
    out.print(table)
    if info.output_kind == "logits":
        out.print("note: the model outputs logits; probabilities are their softmax")
    if json_path is not None:
        write_predictions_json(json_path, clf, preds, errors)
        out.print(f"wrote {json_path}")
    if errors:
        raise typer.Exit(1)


@app.command()
def evaluate(
    models: Annotated[list[Path], typer.Argument(help="One or more .mlpackage files.")],
    data: Annotated[
        Path,
        typer.Option("--data", help="Labelled images: class folders (WordNet IDs or labels), "
                     "or a flat folder with --labels-csv."),
    ],
    labels_csv: Annotated[
        Optional[Path],  # noqa: UP045
        typer.Option("--labels-csv", help="filename,label CSV (Kaggle LOC_val_solution.csv "
                     "as is); label: WordNet ID, label or index."),
    ] = None,
    limit: Annotated[
        Optional[int],  # noqa: UP045
        typer.Option("--limit", help="Evaluate only the first N images (classes interleaved)."),
    ] = None,
    crop_fraction: Annotated[
        Optional[float],  # noqa: UP045
        typer.Option("--crop-fraction", help="ImageNet protocol: shorter side to R/F, centre "
                     "crop R (0.875 reproduces published numbers). Default: Vision .centerCrop."),
    ] = None,
    jobs: Annotated[
        int, typer.Option("--jobs", help="Image-decoding worker processes (0: in-process).")
    ] = 2,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Images per model call.")] = 32,
    backend: BackendOpt = DEFAULT_BACKEND,
    compute_units: UnitsOpt = DEFAULT_UNITS,
    no_pytorch: Annotated[
        bool, typer.Option("--no-pytorch", help="Skip the PyTorch fp32 reference.")
    ] = False,
    mean: ImageMeanOpt = None,
    std: ImageStdOpt = None,
    json_path: Annotated[
        Optional[Path],  # noqa: UP045
        typer.Option("--json", help="Also write the report as JSON here."),
    ] = None,
    markdown_path: Annotated[
        Optional[Path],  # noqa: UP045
        typer.Option("--markdown", help="Also write the report as Markdown here."),
    ] = None,
    plot_path: Annotated[
        Optional[Path],  # noqa: UP045
        typer.Option("--plot", help="PNG: top-1 against package size, PyTorch as a line."),
    ] = None,
) -> None:
    """Top-1/top-5 of packages on a labelled folder, next to PyTorch fp32. Ctrl-C: exit 130."""
    from rich.progress import MofNCompleteColumn, TimeRemainingColumn

    from .evaluate import evaluate as run_evaluate
    from .evaluate import write_report

    if plot_path is not None and plot_path.suffix.lower() != ".png":
        raise UserError(f"--plot writes a PNG; give a path ending in .png, got {plot_path}")
    for path in (json_path, markdown_path, plot_path):
        if path is not None and not (path.parent if str(path.parent) else Path(".")).is_dir():
            raise UserError(f"cannot write {path}: directory {path.parent} does not exist")
    progress = Progress(SpinnerColumn(), TextColumn("[bold]evaluate"), BarColumn(),
                        MofNCompleteColumn(), TextColumn("images"), TimeElapsedColumn(),
                        TextColumn("ETA"), TimeRemainingColumn(), console=err)
    task: list[TaskID] = []

    def start(total: int) -> None:
        task.append(progress.add_task("", total=total))

    def advance(done: int) -> None:
        progress.update(task[0], completed=done)

    def unreadable(path: str, reason: str) -> None:
        progress.console.print(f"mnv1-coreml: skipped unreadable {path}: {reason}",
                               markup=False, highlight=False, soft_wrap=True)

    with progress:
        try:
            report = run_evaluate(
                models, data, labels_csv=labels_csv, limit=limit, crop_fraction=crop_fraction,
                jobs=jobs, batch_size=batch_size, backend=backend.value,
                compute_units=compute_units.value, pytorch=not no_pytorch,
                mean=_parse_triplet(mean, "--mean"), std=_parse_triplet(std, "--std"),
                on_start=start, on_progress=advance, on_unreadable=unreadable,
            )
        except BaseException:
            progress.live.transient = True  # the error line alone says what went wrong
            raise
    rows = report.summary_rows()
    table = Table(title="evaluate (ordered by package size)")
    for col in rows[0]:
        table.add_column(col, justify="left" if col in ("package", "kind") else "right",
                         overflow="fold")
    for row in rows:
        table.add_row(*row.values())
    for line in report.header_lines():
        out.print(line, markup=False, highlight=False)
    # a terminal's width folds long cells; a pipe or a file gets the table whole
    (out if out.is_terminal else Console(width=200)).print(table)
    out.print("flips: +package right and PyTorch wrong / -PyTorch right and package wrong",
              markup=False)
    for p in report.packages:
        worst = ", ".join(f"{lab} {c}/{n}" for lab, c, n in p.worst_classes())
        if worst:
            out.print(f"{p.name} worst classes: {worst}", markup=False, highlight=False)
    for path, fmt in ((json_path, "json"), (markdown_path, "markdown")):
        if path is not None:
            write_report(report, path, fmt)
            out.print(f"wrote {path}")
    if plot_path is not None:
        from .plots import plot_accuracy_vs_size

        plot_accuracy_vs_size(report, plot_path)
        out.print(f"wrote {plot_path}")
    if report.interrupted:
        err.print("mnv1-coreml: interrupted; the results above cover the images seen so far",
                  markup=False)
        raise typer.Exit(130)


def _fail(message: str) -> int:
    """Bad input: one line on stderr (never wrapped, never a traceback), exit code 2."""
    print(f"mnv1-coreml: error: {one_line(message)}", file=sys.stderr)
    return 2


def _is_light(args: Sequence[str]) -> bool:
    """No command, only --help/--version, or a command that never loads coremltools."""
    first = next((a for a in args if not a.startswith("-")), None)
    return first is None or first in LIGHT_COMMANDS or "--help" in args


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: one line and exit 2 for bad input, never a traceback; 130 on Ctrl-C."""
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        with ExitStack() as stack:
            if not _is_light(args):
                # before anything imports coremltools: its import-time noise is ours to hide
                from .coreml import quiet_coremltools

                stack.enter_context(quiet_coremltools())
            rv = app(args=args, prog_name="mnv1-coreml", standalone_mode=False)
    except typer.Exit as exc:
        return exc.exit_code
    except typer.TyperException as exc:  # usage errors (typer >= 0.28): bad values, options
        if type(exc).__name__ == "NoArgsIsHelpError":  # a bare command: show its help
            return main([*args, "--help"])
        return _fail(exc.format_message())
    except OutputExistsError as exc:
        return _fail(f"{exc}; pass --force to replace it")
    except UserError as exc:
        return _fail(str(exc))
    except (KeyboardInterrupt, typer.Abort):
        err.print("mnv1-coreml: interrupted", markup=False)
        return 130
    if rv == 130:  # typer itself turned a Ctrl-C into exit code 130, without a word
        err.print("mnv1-coreml: interrupted", markup=False)
    return rv if isinstance(rv, int) else 0


def run() -> None:
    sys.exit(main())


if __name__ == "__main__":  # pragma: no cover
    run()
