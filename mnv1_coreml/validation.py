"""Does the ``.mlpackage`` compute what PyTorch computes? Contract first, then numbers.

Metrics per golden image (all on *centred* logits, ``z - mean(z)``, so a constant shift that
softmax ignores is not an error):

* top-1 agreement (the model's ``classLabel`` against the golden argmax) and top-5 overlap;
* max abs error, cosine similarity, and PSNR = 10 log10(range(golden)^2 / MSE) in dB.

Where a backend only returns probabilities (the Core ML runtime), log-probabilities stand in for
logits: they are centred logits up to a constant. Classes whose fp16 softmax underflowed to 0
have no log; they are left out of the error and counted, and each one must be a class whose
golden log-probability is below the fp16 underflow point (else it is an error, not underflow).

A top-1 disagreement fails only when the golden margin (top-1 minus top-2 logit) is larger than
the max-abs tolerance: below that, the model is allowed to break the tie either way, and the
image is reported as ambiguous.
"""

from __future__ import annotations

import json
import math
import os
import shlex
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np

from .backends import Backend, BackendName, BackendOutput, ComputeUnits, make_backend
from .errors import UserError
from .fsutil import as_path
from .golden import GoldenSet, find_golden, read_golden
from .metadata import META, model_kind, settings_differences, settings_of
from .modelspec import ModelContract, read_contract

#: log of the smallest positive fp16 (subnormal 2^-24): probabilities below it become 0.
FP16_LOG_UNDERFLOW = math.log(2.0**-24)
#: Cosine and PSNR are judged only with at least this many classes. They measure the error
#: relative to the spread of the centred logits; a fine-tuned head with a few classes can have
#: logits spread by well under one unit, where fp16 rounding alone (measured: 0.018 max abs on
#: the 4-class Keras 3 fixture) gives cosine 0.995 and PSNR 26 dB. Max abs, an absolute bound
#: in logit units, and top-1 still decide for every class count.
RELATIVE_METRICS_MIN_CLASSES = 100


@dataclass(frozen=True)
class Tolerances:
    """Bounds an image must meet. Errors are in logits (natural-log units)."""

    max_abs: float
    min_cosine: float
    min_psnr: float

    def with_overrides(self, **changes: float | None) -> Tolerances:
        return replace(self, **{k: v for k, v in changes.items() if v is not None})


#: Per model kind, measured on the committed goldens (random and Keras/timm-fixture weights at
#: 0.25-128 and 1.0-224, reference backend) with headroom; see README "Tolerances".
TOLERANCES: dict[str, Tolerances] = {
    "fp32": Tolerances(max_abs=1e-4, min_cosine=0.9999999, min_psnr=80.0),
    "fp16": Tolerances(max_abs=0.15, min_cosine=0.9999, min_psnr=50.0),
    "int8": Tolerances(max_abs=1.0, min_cosine=0.995, min_psnr=36.0),
    # int8 activations too; calibrated on the golden's own images (the default calibration set)
    "w8a8": Tolerances(max_abs=3.0, min_cosine=0.97, min_psnr=28.0),
    "palettized-8": Tolerances(max_abs=0.75, min_cosine=0.998, min_psnr=40.0),
    "palettized-6": Tolerances(max_abs=2.5, min_cosine=0.97, min_psnr=28.0),
    "palettized-4": Tolerances(max_abs=6.0, min_cosine=0.85, min_psnr=20.0),
    "palettized-low": Tolerances(max_abs=12.0, min_cosine=0.5, min_psnr=10.0),
}
#: The Core ML runtime may run fp32 on the GPU with another summation order than PyTorch.
COREML_FP32 = Tolerances(max_abs=1e-3, min_cosine=0.999999, min_psnr=60.0)


def tolerances_for(kind: str, backend: str) -> Tolerances:
    """The documented bounds for a model kind on a backend; an unknown kind is a UserError."""
    if kind == "fp32" and backend == "coreml":
        return COREML_FP32
    if kind not in TOLERANCES:
        raise UserError(
            f"no tolerances for model kind {kind!r} (known: {', '.join(TOLERANCES)}); "
            "give explicit tolerances (--max-abs, --min-cosine, --min-psnr)"
        )
    return TOLERANCES[kind]


@dataclass
class ImageResult:
    name: str
    status: str  # "pass" | "ambiguous" | "FAIL"
    top1_golden: str
    top1_model: str
    top1_agree: bool
    top5_overlap: int
    margin: float
    max_abs: float
    cosine: float
    psnr: float
    underflow: int = 0  # classes whose probability underflowed to 0 (probabilities only)
    reasons: list[str] = field(default_factory=list)


@dataclass
class ValidationReport:
    model: str
    golden: str
    backend: str
    kind: str
    tolerances: Tolerances
    contract_errors: list[str]
    images: list[ImageResult]
    compared_on: str  # "logits" or "log-probabilities"

    @property
    def passed(self) -> bool:
        return not self.contract_errors and bool(self.images) and all(
            r.status != "FAIL" for r in self.images
        )

    @property
    def worst(self) -> ImageResult | None:
        return max(self.images, key=lambda r: r.max_abs, default=None)

    def verdict_line(self) -> str:
        verdict = "PASS" if self.passed else "FAIL"
        n = len(self.images)
        amb = sum(r.status == "ambiguous" for r in self.images)
        fails = sum(r.status == "FAIL" for r in self.images)
        w = self.worst
        worst = (
            f"worst max-abs {w.max_abs:.3g} on {w.name} (tol {self.tolerances.max_abs:g}), "
            f"min cosine {min(r.cosine for r in self.images):.7f}, "
            f"min PSNR {min(r.psnr for r in self.images):.1f} dB"
            if w else "no image compared"
        )
        contract = f"; contract: {'; '.join(self.contract_errors)}" if self.contract_errors else ""
        return (
            f"validate {verdict}: {self.backend} backend, {self.kind}, {n} images "
            f"({fails} failed, {amb} ambiguous), {worst}{contract}"
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "golden": self.golden,
            "backend": self.backend,
            "kind": self.kind,
            "compared_on": self.compared_on,
            "tolerances": asdict(self.tolerances),
            "passed": self.passed,
            "contract_errors": self.contract_errors,
            "images": [asdict(r) for r in self.images],
            "verdict": self.verdict_line(),
        }


def check_contract(contract: ModelContract, golden: GoldenSet) -> list[str]:
    """Everything about the model's interface that must match the golden before any numbers."""
    errors = []
    if contract.kind != "mlProgram":
        errors.append(f"model type is {contract.kind or 'unknown'}, expected an ML Program")
    if contract.input_name != "image":
        errors.append(f"input is named {contract.input_name!r}, expected 'image'")
    if contract.input_kind != "imageType":
        errors.append(f"input is a {contract.input_kind}, expected an image")
    elif (contract.width, contract.height) != (golden.res, golden.res):
        errors.append(
            f"input is {contract.width}x{contract.height}, golden is {golden.res}x{golden.res}"
        )
    if contract.input_kind == "imageType" and contract.color_space != "RGB":
        errors.append(f"input colour space is {contract.color_space}, expected RGB")
    if not contract.labels or not contract.probs_output:
        errors.append("the model is not a classifier (no classify op with class labels); "
                      f"the golden has {golden.logits.shape[1]} classes")
    elif len(contract.labels) != golden.logits.shape[1]:
        errors.append(f"{len(contract.labels)} class labels, golden has {golden.logits.shape[1]}")
    elif contract.labels != golden.labels:
        wrong = sum(a != b for a, b in zip(contract.labels, golden.labels, strict=True))
        errors.append(f"class labels differ from the golden's in order or names ({wrong} of them)")
    meta = contract.metadata
    alpha, res = meta.get(f"{META}alpha"), meta.get(f"{META}resolution")
    if alpha is None or res is None:
        errors.append("model metadata has no mnv1.alpha/mnv1.resolution (not made by convert?)")
    else:
        if not math.isclose(float(alpha), golden.alpha):
            errors.append(f"metadata alpha {alpha} != golden alpha {golden.alpha}")
        if int(res) != golden.res:
            errors.append(f"metadata resolution {res} != golden res {golden.res}")
    # a golden made with other padding, activation, eps or normalisation is another model
    for problem in settings_differences(settings_of(meta), golden.manifest):
        errors.append(f"architecture setting differs from the golden's: {problem}")
    if f"{META}compression" not in meta and f"{META}version" in meta:
        errors.append("model metadata has no mnv1.compression (made by an older version?)")
    return errors


def _centred(x: np.ndarray) -> np.ndarray:
    return x - x.mean()


def _log_softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max()
    return z - np.log(np.exp(z).sum())


def compare_image(
    name: str,
    golden_logits: np.ndarray,
    pred: np.ndarray,
    pred_is_prob: bool,
    top1_model: int,
    labels: list[str],
    tol: Tolerances,
) -> ImageResult:
    """Metrics of one image; ``pred`` is logits, or probabilities if ``pred_is_prob``."""
    g = golden_logits.astype(np.float64)
    underflow = 0
    reasons: list[str] = []
    if pred_is_prob:
        g_lp = _log_softmax(g)
        zero = pred <= 0
        underflow = int(zero.sum())
        not_tiny = zero & (g_lp > FP16_LOG_UNDERFLOW + tol.max_abs)
        if not_tiny.any():
            reasons.append(f"{int(not_tiny.sum())} classes have probability 0 but should not")
        keep = ~zero
        # log-probabilities are logits up to a constant: centre over the classes that exist
        gc, pc = _centred(g_lp[keep]), _centred(np.log(pred[keep]))
    else:
        gc, pc = _centred(g), _centred(pred.astype(np.float64))
    diff = pc - gc
    max_abs = float(np.abs(diff).max()) if diff.size else math.inf
    mse = float(np.mean(diff**2)) if diff.size else math.inf
    peak = float(gc.max() - gc.min()) if gc.size else 0.0
    psnr = math.inf if mse == 0 else 10 * math.log10(peak**2 / mse) if peak > 0 else -math.inf
    denom = float(np.linalg.norm(pc) * np.linalg.norm(gc))
    cosine = float(pc @ gc / denom) if denom > 0 else (1.0 if np.allclose(pc, gc) else 0.0)

    order = np.argsort(-g, kind="stable")
    margin = float(g[order[0]] - g[order[1]])
    pred_order = np.argsort(-(np.log(np.maximum(pred, 1e-300)) if pred_is_prob else pred),
                            kind="stable")
    top5 = len(set(order[:5].tolist()) & set(pred_order[:5].tolist()))
    agree = int(order[0]) == top1_model

    if max_abs > tol.max_abs:
        reasons.append(f"max abs error {max_abs:.3g} > {tol.max_abs:g}")
    relative = len(labels) >= RELATIVE_METRICS_MIN_CLASSES
    if relative and cosine < tol.min_cosine:
        reasons.append(f"cosine {cosine:.7f} < {tol.min_cosine}")
    if relative and psnr < tol.min_psnr:
        reasons.append(f"PSNR {psnr:.1f} dB < {tol.min_psnr}")
    status = "pass"
    if not agree:
        if margin > tol.max_abs:
            reasons.append(f"top-1 differs with golden margin {margin:.3g} > {tol.max_abs:g}")
        else:
            status = "ambiguous"
    if reasons:
        status = "FAIL"
    label = labels[top1_model] if 0 <= top1_model < len(labels) else "?"
    return ImageResult(
        name, status, labels[int(order[0])], label, agree, top5, margin, max_abs, cosine, psnr,
        underflow, reasons,
    )


def _align(output: BackendOutput, labels: list[str]) -> tuple[np.ndarray, list[int]]:
    """Model probabilities in golden label order, and the model's top-1 as a golden index.

    Mapping goes by label name, so a model whose labels are shuffled is caught numerically
    (the right name carries the wrong probability) as well as by the contract check.
    """
    index = {name: i for i, name in enumerate(labels)}
    n = len(labels)
    probs = np.zeros((len(output.probabilities), n))
    cols = [index.get(name, -1) for name in output.labels]
    for j, col in enumerate(cols):
        if 0 <= col < n:
            probs[:, col] = output.probabilities[:, j]
    top1 = [index.get(name, -1) for name in output.class_label]
    return probs, top1


def validate(
    model_path: str | os.PathLike[str],
    golden: GoldenSet | str | os.PathLike[str] | None = None,
    *,
    backend: BackendName | Backend = "auto",
    compute_units: ComputeUnits = "all",
    tolerances: Tolerances | None = None,
    overrides: dict[str, float | None] | None = None,
    golden_label: str | None = None,
) -> ValidationReport:
    """Check the contract, run the golden images through ``backend`` (a name, or a backend
    already made, e.g. one that also watches layer outputs for ``--layers``), compare.

    ``golden`` is a :class:`GoldenSet`, a golden directory, or None: the versioned golden
    made from the model's exact weights and settings (see :func:`resolve_golden`).
    Tolerances default to the documented ones for the model's kind (read from its metadata)
    and backend; ``overrides`` replaces single bounds of those. Check ``report.passed``.
    """
    model_path = as_path(model_path)
    if not isinstance(golden, GoldenSet):
        golden, found_label = resolve_golden(model_path, golden)
        golden_label = golden_label or found_label
    golden_label = golden_label or "(in memory)"
    contract = read_contract(model_path)
    errors = check_contract(contract, golden)
    runner = make_backend(backend, model_path, compute_units) if isinstance(backend, str) \
        else backend
    kind = model_kind(contract.metadata)
    tol = (tolerances or tolerances_for(kind, runner.name)).with_overrides(**(overrides or {}))
    report = ValidationReport(
        str(model_path), golden_label, runner.name, kind, tol, errors, [], "logits"
    )
    if contract.input_kind != "imageType" or (contract.width, contract.height) != (
        golden.res, golden.res
    ) or not contract.labels or not contract.probs_output:
        return report  # nothing comparable can run: the contract errors say why
    output = runner.run(golden.images)
    probs, top1 = _align(output, golden.labels)
    use_logits = output.logits is not None and output.logits.shape == golden.logits.shape
    if use_logits:
        # logits columns are in the model's own label order; put them in golden order too
        logits, _ = _align(replace(output, probabilities=output.logits), golden.labels)
    else:
        report.compared_on = "log-probabilities"
    for i, name in enumerate(golden.names):
        pred = logits[i] if use_logits else probs[i]
        report.images.append(
            compare_image(name, golden.logits[i], pred, not use_logits, top1[i], golden.labels, tol)
        )
    return report


def golden_command(meta: dict[str, str], golden_root: str = "golden") -> str:
    """The ``mnv1-coreml golden`` command that makes the golden for a model's metadata."""
    from .golden import golden_name, weights_cli_args

    alpha, res, spec = float(meta[f"{META}alpha"]), int(meta[f"{META}resolution"]), meta[
        f"{META}weights"
    ]
    args = ["mnv1-coreml", "golden", "--alpha", str(alpha), "--res", str(res),
            *weights_cli_args(spec, settings_of(meta)),
            "-o", f"{golden_root}/{golden_name(alpha, res, spec)}"]
    command = shlex.join(args)
    imagenet = _imagenet_labels_sha256()
    if meta.get(f"{META}labels_sha256", imagenet) != imagenet:
        command += " --labels YOUR_LABELS_FILE"  # your own classes: the file it was made with
    return command


def _imagenet_labels_sha256() -> str:
    from .labels import imagenet_labels, labels_sha256

    return labels_sha256(imagenet_labels())


def resolve_golden(
    model_path: str | os.PathLike[str], golden_dir: str | os.PathLike[str] | None
) -> tuple[GoldenSet, str]:
    """The given golden, or the versioned one made from the model's exact weights and
    architecture settings (found by its metadata)."""
    model_path = as_path(model_path)
    if golden_dir is not None:
        return read_golden(golden_dir), str(golden_dir)
    meta = read_contract(model_path).metadata
    try:
        alpha, res = float(meta[f"{META}alpha"]), int(meta[f"{META}resolution"])
        sha = meta[f"{META}weights_sha256"]
        meta[f"{META}weights"]  # noqa: B018 - needed for the golden command below
    except (KeyError, ValueError):
        raise UserError(
            f"{model_path} has no mnv1 metadata to find its golden by; give a golden "
            "directory (--golden DIR)"
        ) from None
    settings = settings_of(meta)
    found = find_golden(alpha, res, sha, settings, meta.get(f"{META}labels_sha256"))
    if found is None:
        described = ", ".join(f"{k}={v}" for k, v in settings.items() if k != "normalization")
        raise UserError(
            f"no golden for alpha={alpha} res={res} weights {meta[f'{META}weights']} "
            f"(sha256 {sha[:12]}..., {described}) in golden/; make it with: "
            f"{golden_command(meta)}"
        )
    return read_golden(found), str(found)


def validate_at_birth(
    model_path: str | os.PathLike[str], model: Any, weights: Any,
    labels: Sequence[str] | None = None,
) -> ValidationReport:
    """Compare a freshly converted package with PyTorch on the packaged golden images."""
    from .golden import make_golden
    from .images import load_image_set

    names, images = load_image_set(model.cfg.res)
    golden = make_golden(model, weights, names, images, labels=labels)
    return validate(model_path, golden, golden_label="fresh PyTorch logits (packaged images)")


def write_report_json(report: ValidationReport, path: str | os.PathLike[str]) -> None:
    """The full report as JSON, written atomically."""
    from .fsutil import atomic_path

    with atomic_path(path, force=True) as tmp:
        tmp.write_text(json.dumps(report.to_json(), indent=2, default=float) + "\n")
