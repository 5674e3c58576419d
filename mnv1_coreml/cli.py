"""``mnv1-coreml``: a thin Typer shell over the library. Parsing and printing only.

Bad input of any kind (unparsable values, user errors raised by the library) ends in one line on
stderr and exit code 2; a failed validation ends in exit code 1.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

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

from . import __version__
from .errors import UserError

app = typer.Typer(
    name="mnv1-coreml",
    help="MobileNet V1 from PyTorch to Core ML, validated against PyTorch on any OS.",
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
out = Console(soft_wrap=True)
err = Console(stderr=True)


class PrecisionChoice(str, Enum):
    fp16 = "fp16"
    fp32 = "fp32"


class TargetChoice(str, Enum):
    iOS15 = "iOS15"
    iOS16 = "iOS16"
    iOS17 = "iOS17"
    iOS18 = "iOS18"


class Granularity(str, Enum):
    per_tensor = "per-tensor"
    per_grouped_channel = "per-grouped-channel"


class QuantizeChoice(str, Enum):
    int8 = "int8"


class PaddingChoice(str, Enum):
    torch = "torch"
    tf = "tf"


class ActivationChoice(str, Enum):
    relu = "relu"
    relu6 = "relu6"


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
        "(.h5, .safetensors, .pt, .pth).",
    ),
]
SeedOpt = Annotated[int, typer.Option("--seed", help="Seed for --weights random.")]


PrecisionOpt = Annotated[
    PrecisionChoice, typer.Option("--precision", help="Compute precision of the program.")
]
PalettizeOpt = Annotated[
    Optional[int],  # noqa: UP045
    typer.Option("--palettize", help="k-means palettize every conv/FC weight: 8, 6 or 4 bits."),
]
QuantizeOpt = Annotated[
    Optional[QuantizeChoice],  # noqa: UP045
    typer.Option("--quantize", help="Linear symmetric per-channel weight quantization."),
]
NoValidateOpt = Annotated[
    bool, typer.Option("--no-validate", help="Skip validation against PyTorch.")
]
Sha256Opt = Annotated[
    Optional[str],  # noqa: UP045
    typer.Option("--sha256", help="Pin the SHA-256 of the weights file."),
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
    padding: PaddingChoice | None,
    activation: ActivationChoice | None,
    bn_eps: float | None,
    mean: str | None,
    std: str | None,
) -> dict[str, object]:
    """Architecture settings the user forces over what the weights' format implies."""
    overrides: dict[str, object] = {}
    if padding is not None:
        overrides["padding"] = padding.value
    if activation is not None:
        overrides["activation"] = activation.value
    if bn_eps is not None:
        if not bn_eps > 0:
            raise UserError(f"--bn-eps must be > 0, got {bn_eps}")
        overrides["bn_eps"] = bn_eps
    m, s = _parse_triplet(mean, "--mean"), _parse_triplet(std, "--std")
    if m is not None or s is not None:
        overrides["normalization_parts"] = (m, s)  # a missing part keeps the weights' own
    return overrides


PaddingOpt = Annotated[
    Optional[PaddingChoice],  # noqa: UP045 - typer needs Optional on 3.10
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
    alpha: AlphaOpt = 1.0,
    res: ResOpt = 224,
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
    try:
        cfg = MobileNetConfig(alpha=alpha, res=res)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    s = summarize(cfg)
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


def compression_spec(
    palettize: int | None,
    granularity: Granularity,
    group_size: int,
    quantize: QuantizeChoice | None,
):
    """The compression options as the library's spec, or None."""
    if palettize is None and quantize is None:
        if granularity is not Granularity.per_tensor:
            raise UserError("--granularity needs --palettize")
        return None
    if palettize is not None and quantize is not None:
        raise UserError("--palettize and --quantize are exclusive; pick one")
    if palettize is not None and palettize not in (1, 2, 3, 4, 6, 8):
        raise UserError(f"--palettize takes 8, 6, 4 (or 3, 2, 1) bits, got {palettize}")
    if group_size < 1:
        raise UserError(f"--group-size must be >= 1, got {group_size}")
    from .compress import CompressionSpec

    try:
        return CompressionSpec(
            palettize_bits=palettize,
            granularity=granularity.value,
            group_size=group_size,
            quantize=quantize.value if quantize else None,
        )
    except ValueError as exc:
        raise UserError(str(exc)) from None


@app.command()
def convert(
    alpha: AlphaOpt = 1.0,
    res: ResOpt = 224,
    weights: WeightsOpt = "imagenet",
    seed: SeedOpt = 0,
    precision: PrecisionOpt = PrecisionChoice.fp16,
    palettize: PalettizeOpt = None,
    granularity: Annotated[
        Granularity, typer.Option("--granularity", help="One palette per tensor or per group.")
    ] = Granularity.per_tensor,
    group_size: Annotated[
        int, typer.Option("--group-size", help="Output channels per palette (grouped mode).")
    ] = 16,
    quantize: QuantizeOpt = None,
    target: Annotated[
        Optional[TargetChoice],  # noqa: UP045
        typer.Option("--target", help="Minimum deployment target (default: lowest possible)."),
    ] = None,
    output: Annotated[
        Path, typer.Option("-o", "--output", help="Output .mlpackage path.")
    ] = Path("MobileNetV1.mlpackage"),
    force: Annotated[bool, typer.Option("--force", help="Replace an existing output.")] = False,
    no_validate: NoValidateOpt = False,
    sha256: Sha256Opt = None,
    padding: PaddingOpt = None,
    activation: ActivationOpt = None,
    bn_eps: EpsOpt = None,
    mean: MeanOpt = None,
    std: StdOpt = None,
) -> None:
    """Convert MobileNet V1 to a Core ML ML Program image classifier (.mlpackage)."""
    from .convert import ConvertOptions, preflight
    from .convert import convert as run_convert
    from .sizes import package_bytes

    if output.suffix != ".mlpackage":
        raise UserError(f"output must end in .mlpackage, got {output}")
    opts = ConvertOptions(
        alpha=alpha, res=res, weights=weights, seed=seed, precision=precision.value,
        compression=compression_spec(palettize, granularity, group_size, quantize),
        target=target.value if target else None, output=output, force=force,
        validate=not no_validate, weights_sha256=sha256,
        overrides=_overrides(padding, activation, bn_eps, mean, std),
    )
    preflight(opts)
    steps = ["build", "trace", "convert", "compress", "save"]
    if not no_validate:
        steps.append("validate")
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


class BackendChoice(str, Enum):
    auto = "auto"
    coreml = "coreml"
    reference = "reference"


class UnitsChoice(str, Enum):
    all = "all"
    cpu = "cpu"
    cpu_gpu = "cpu-gpu"
    cpu_ne = "cpu-ne"


@app.command()
def golden(
    output: Annotated[Path, typer.Option("-o", "--output", help="Golden directory to write.")],
    alpha: AlphaOpt = 1.0,
    res: ResOpt = 224,
    weights: WeightsOpt = "imagenet",
    seed: SeedOpt = 0,
    images: Annotated[
        Optional[Path],  # noqa: UP045
        typer.Option("--images", help="Directory of photos (default: the packaged ones)."),
    ] = None,
    force: Annotated[bool, typer.Option("--force", help="Replace an existing output.")] = False,
    sha256: Sha256Opt = None,
    padding: PaddingOpt = None,
    activation: ActivationOpt = None,
    bn_eps: EpsOpt = None,
    mean: MeanOpt = None,
    std: StdOpt = None,
) -> None:
    """Write golden PyTorch logits (logits.npz + manifest.json) for validate."""
    from .fsutil import check_output
    from .golden import golden_for, write_golden
    from .model import check_alpha, check_res

    try:
        check_alpha(alpha)
        check_res(res)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    check_output(output, force)
    with _steps(["weights and logits", "write"], "golden") as (on_step, on_download):
        on_step("weights and logits")
        g = golden_for(
            alpha, res, weights, seed=seed, image_dir=images, weights_sha256=sha256,
            overrides=_overrides(padding, activation, bn_eps, mean, std), progress=on_download,
        )
        on_step("write")
        write_golden(g, output, force=force)
    out.print(f"wrote {output}: {len(g.names)} images, logits {g.logits.shape[0]}x"
              f"{g.logits.shape[1]}, weights {g.manifest['weights']}")


@app.command()
def validate(
    model: Annotated[Path, typer.Argument(help="The .mlpackage to check.")],
    golden_dir: Annotated[
        Optional[Path],  # noqa: UP045
        typer.Option("--golden", help="Golden directory (default: found in golden/ by metadata)."),
    ] = None,
    backend: Annotated[
        BackendChoice,
        typer.Option("--backend", help="auto: Core ML on macOS, else the reference interpreter."),
    ] = BackendChoice.auto,
    compute_units: Annotated[
        UnitsChoice, typer.Option("--compute-units", help="Core ML compute units (macOS).")
    ] = UnitsChoice.all,
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
) -> None:
    """Compare a .mlpackage with golden PyTorch logits. Exit 0 pass, 1 fail, 2 bad input."""
    from .validate import resolve_golden, write_report_json
    from .validate import validate as run_validate

    golden_set, golden_label = resolve_golden(model, golden_dir)
    report = run_validate(
        model, golden_set, backend=backend.value, compute_units=compute_units.value,
        overrides={"max_abs": max_abs, "min_cosine": min_cosine, "min_psnr": min_psnr},
        golden_label=golden_label,
    )
    table = Table(title=f"{model} vs {golden_label}")
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
    if json_path is not None:
        write_report_json(report, json_path)
    if not report.passed:
        raise typer.Exit(1)


@app.command()
def zoo(
    output: Annotated[Path, typer.Option("-o", "--output", help="Directory for the 16 packages.")],
    weights: WeightsOpt = "imagenet",
    seed: SeedOpt = 0,
    precision: PrecisionOpt = PrecisionChoice.fp16,
    palettize: PalettizeOpt = None,
    quantize: QuantizeOpt = None,
    jobs: Annotated[int, typer.Option("--jobs", help="Worker processes.")] = 2,
    no_validate: NoValidateOpt = False,
    force: Annotated[bool, typer.Option("--force", help="Replace existing packages.")] = False,
) -> None:
    """Convert all 16 alpha x res variants; write zoo.md and zoo.json with sizes and verdicts."""
    from .convert import ConvertOptions
    from .zoo import run_zoo, write_tables, zoo_markdown

    if jobs < 1:
        raise UserError(f"--jobs must be >= 1, got {jobs}")
    if output.exists() and not output.is_dir():
        raise UserError(f"{output} exists and is not a directory")
    if not force and output.is_dir() and any(output.glob("MobileNetV1_*.mlpackage")):
        raise UserError(f"{output} already holds zoo packages; pass --force to replace them")
    base = ConvertOptions(
        weights=weights, seed=seed, precision=precision.value,
        compression=compression_spec(palettize, Granularity.per_tensor, 16, quantize),
        force=force, validate=not no_validate, output=output / "x.mlpackage",
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


def _fail(message: str) -> int:
    """Bad input: one line on stderr (never wrapped, never a traceback), exit code 2."""
    print(f"mnv1-coreml: error: {' '.join(message.split())}", file=sys.stderr)
    return 2


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: one line and exit 2 for bad input, never a traceback."""
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        rv = app(args=args, prog_name="mnv1-coreml", standalone_mode=False)
    except typer.Exit as exc:
        return exc.exit_code
    except typer.TyperException as exc:  # click's UsageError/BadParameter family
        if type(exc).__name__ == "NoArgsIsHelpError":
            return main([*args, "--help"])
        return _fail(exc.format_message())
    except UserError as exc:
        return _fail(str(exc))
    except (KeyboardInterrupt, typer.Abort):
        err.print("mnv1-coreml: interrupted", markup=False)
        return 130
    return rv if isinstance(rv, int) else 0


def run() -> None:
    sys.exit(main())


if __name__ == "__main__":  # pragma: no cover
    run()
