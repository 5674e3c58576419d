"""The convert pipeline: build -> export -> compress -> save -> validate.

Each stage is a function of its own (``build_model``, :func:`mnv1_coreml.export.export`,
:func:`mnv1_coreml.compress.compress`, :func:`save`, :func:`mnv1_coreml.validation.validate`);
:func:`convert` composes them for the CLI, ``zoo`` and the Python API, reporting the steps
``build``, ``trace``, ``convert``, ``compress``, ``save`` and ``validate`` as they start.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .choices import DEFAULT_OUTPUT, DEFAULT_WEIGHTS, PACKAGE_SUFFIX, PRECISIONS
from .compress.config import CompressionConfig
from .coreml import TARGETS
from .errors import UserError
from .export import Precision, export
from .fsutil import as_path, atomic_path, check_output
from .labels import read_labels_option, resolve_labels
from .metadata import apply_metadata, build_metadata, mark_validation
from .model import build_model, check_alpha, check_res
from .weights import LoadedWeights, load_weights, model_size

StepCallback = Callable[[str], None]
DownloadCallback = Callable[[int, "int | None"], None]


@dataclass(frozen=True)
class ConvertOptions:
    """Everything ``mnv1-coreml convert`` takes; checked on construction (UserError).

    ``alpha``/``res`` None: what the weights file records (its tensors' width, a Keras
    config's input size), else 1.0 and 224. ``labels``: a labels file (text, one per line, or
    a JSON list) or a list of strings, one per class of the checkpoint; None gives the
    ImageNet labels to a 1000-class checkpoint (any other class count then needs labels).
    """

    alpha: float | None = None
    res: int | None = None
    weights: str = DEFAULT_WEIGHTS
    seed: int = 0
    precision: Precision = "fp16"
    compression: CompressionConfig | None = None
    target: str | None = None  # None: the lowest target the options allow
    output: Path = Path(DEFAULT_OUTPUT)
    force: bool = False
    validate: bool = True
    weights_sha256: str | None = None
    overrides: Mapping[str, Any] = field(default_factory=dict)
    labels: str | os.PathLike[str] | Sequence[str] | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "output", as_path(self.output))
        if isinstance(self.weights, os.PathLike):
            object.__setattr__(self, "weights", os.fspath(self.weights))
        if self.alpha is not None:
            check_alpha(self.alpha)
        if self.res is not None:
            check_res(self.res)
        if self.precision not in PRECISIONS:
            raise UserError(f"precision must be fp16 or fp32, got {self.precision!r}")
        if self.target is not None and self.target not in TARGETS:
            raise UserError(f"target must be one of {', '.join(TARGETS)}, got {self.target!r}")
        if self.compression is not None and not isinstance(self.compression, CompressionConfig):
            raise UserError(
                "compression must be a config such as Palettize(8) or QuantizeInt8(), "
                f"got {self.compression!r}"
            )
        if self.compression is not None and self.precision not in self.compression.precisions:
            raise UserError(
                f"{self.compression.mode} needs precision "
                f"{' or '.join(self.compression.precisions)}, got {self.precision}"
            )
        if self.output.suffix != PACKAGE_SUFFIX:
            raise UserError(f"output must end in {PACKAGE_SUFFIX}, got {self.output}")


@dataclass
class ConvertResult:
    path: Path
    metadata: dict[str, str]
    weights: LoadedWeights
    compression_report: Any = None  # mnv1_coreml.compress.CompressionReport | None
    validation: Any = None  # mnv1_coreml.validation.ValidationReport | None
    target: str = "iOS15"


def choose_target(requested: str | None, compression: CompressionConfig | None) -> str:
    """The lowest target that supports the options, or the requested one if it is high enough."""
    needed = "iOS15" if compression is None else compression.required_target()
    if requested is None:
        return needed
    order = list(TARGETS)
    if order.index(requested) < order.index(needed):
        raise UserError(
            f"target {requested} is too low for the requested compression, which needs "
            f"{needed} or higher"
        )
    return requested


def preflight(opts: ConvertOptions) -> str:
    """Checks that need no work: refuse bad outputs and targets before building anything."""
    check_output(opts.output, opts.force)
    return choose_target(opts.target, opts.compression)


def save(
    mlmodel: Any,
    path: str | os.PathLike[str],
    *,
    force: bool = False,
    before_commit: Callable[[Path], None] | None = None,
) -> Path:
    """Save ``mlmodel`` as a package at ``path``, atomically.

    The package is written beside ``path`` and renamed into place; ``before_commit`` may
    inspect or amend the written package first (validation at birth does). On any failure,
    including Ctrl-C, ``path`` is left as it was.
    """
    from .coreml import quiet_coremltools

    path = as_path(path)
    with atomic_path(path, force) as tmp:
        with quiet_coremltools():
            mlmodel.save(str(tmp))
        if before_commit is not None:
            before_commit(tmp)
    return path


def convert(
    opts: ConvertOptions | None = None,
    /,
    *,
    on_step: StepCallback | None = None,
    on_download: DownloadCallback | None = None,
    **options: Any,
) -> ConvertResult:
    """Build, export, compress, save atomically and (by default) validate one model.

    Pass a :class:`ConvertOptions`, or its fields as keywords::

        convert(alpha=0.25, res=128, weights="random", output="m.mlpackage")

    A package that fails validation is still written (marked FAILED in ``mnv1.validation``);
    check ``result.validation.passed``.
    """
    if opts is None:
        opts = ConvertOptions(**options)
    elif options:
        raise TypeError("pass either a ConvertOptions or keyword options, not both")
    step = on_step or (lambda _name: None)
    target = preflight(opts)

    given = read_labels_option(opts.labels)  # a bad labels file fails before any work

    step("build")
    weights = load_weights(
        opts.weights, opts.alpha, opts.res, seed=opts.seed, overrides=dict(opts.overrides),
        sha256=opts.weights_sha256, progress=on_download,
        num_classes=None if given is None else len(given),  # random weights: one per label
    )
    alpha, res = model_size(weights, opts.alpha, opts.res)
    check_res(res)
    model = build_model(alpha, res, weights)
    labels = resolve_labels(opts.labels, model.cfg.num_classes)

    mlmodel = export(
        model, weights.settings.normalization, precision=opts.precision, target=target,
        labels=labels, on_step=step,
    )

    step("compress")
    report = None
    if opts.compression is not None:
        from .compress import compress

        mlmodel, report = compress(mlmodel, opts.compression)

    step("save")
    meta = build_metadata(
        model_cfg=model.cfg, weights=weights, precision=opts.precision,
        compression=opts.compression, target=target, labels=labels,
    )
    apply_metadata(mlmodel, meta, weights=weights)
    result = ConvertResult(opts.output, meta, weights, report, target=target)

    def validate_at_birth(package: Path) -> None:
        # before the rename, so the verdict is inside the package it describes; a failing
        # package is still kept (marked), for the user to inspect.
        step("validate")
        from .validation import validate_at_birth

        result.validation = validate_at_birth(package, model, weights, labels=labels)
        mark_validation(package, result.validation.verdict_line())

    save(mlmodel, opts.output, force=opts.force,
         before_commit=validate_at_birth if opts.validate else None)
    return result
