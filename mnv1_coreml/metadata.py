"""The ``mnv1.*`` metadata a package carries: written by the pipeline, read by ``validate``.

Human-readable keys (``palettization``, ``quantization``...) sit next to machine-readable ones:
``mnv1.compression`` is JSON (see :mod:`mnv1_coreml.compress.config`) and ``mnv1.normalization``
is JSON, so nothing is ever parsed back out of prose.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ._version import __version__
from .catalog import published_accuracy
from .compress.config import CompressionConfig, describe, from_metadata, to_metadata
from .errors import UserError
from .labels import imagenet_labels, labels_sha256
from .summary import paper_macs_millions, summarize

#: Prefix of our user-defined metadata keys.
META = "mnv1."
PREVIEW_TYPE_KEY = "com.apple.coreml.model.preview.type"
COMPRESSION_KEY = f"{META}compression"
VALIDATION_KEY = f"{META}validation"
#: Architecture settings a golden must share with the model it validates (metadata key suffix
#: and golden-manifest key are the same name).
SETTINGS_KEYS: tuple[str, ...] = ("padding", "activation", "bn_eps", "normalization")


def build_metadata(
    *,
    model_cfg: Any,
    weights: Any,
    precision: str,
    compression: CompressionConfig | None,
    target: str,
    labels: Sequence[str] | None = None,
) -> dict[str, str]:
    """User-defined metadata keys: what validate and the app need to know about this model.

    ``labels`` default to ImageNet's. The published ImageNet accuracy is recorded only for the
    published ImageNet weights with ImageNet's labels: a fine-tuned or random model has none.
    """
    labels = tuple(labels) if labels is not None else imagenet_labels()
    summary = summarize(model_cfg)
    s = weights.settings
    alpha, res = model_cfg.alpha, model_cfg.res
    meta = {
        f"{META}alpha": repr(float(alpha)),
        f"{META}resolution": str(res),
        f"{META}weights": weights.spec,
        f"{META}weights_source": weights.source,
        f"{META}weights_sha256": weights.sha256,
        f"{META}precision": precision,
        f"{META}padding": s.padding,
        f"{META}activation": s.activation,
        f"{META}bn_eps": repr(s.bn_eps),
        f"{META}normalization": json.dumps(s.normalization.to_json()),
        f"{META}mult_adds": str(summary.macs),
        f"{META}params": str(summary.params),
        f"{META}paper_mult_adds_millions": str(paper_macs_millions(alpha, res)),
        f"{META}num_classes": str(len(labels)),
        f"{META}labels_sha256": labels_sha256(labels),
        f"{META}published_imagenet_accuracy": json.dumps(
            (published_accuracy(alpha, res) or {})
            if weights.source == "imagenet" and labels == imagenet_labels() else {}
        ),
        f"{META}target": target,
        f"{META}version": __version__,
        COMPRESSION_KEY: to_metadata(compression),
    }
    for key, value in describe(compression).items():
        meta[f"{META}{key}"] = value
    return meta


def apply_metadata(mlmodel: Any, meta: Mapping[str, str], *, weights: Any) -> None:
    """Descriptions, author, licence, version and ``meta`` onto an unsaved MLModel."""
    from .export import INPUT_NAME, LABEL_OUTPUT, PROBS_OUTPUT

    n = weights.settings.normalization
    alpha, res = meta[f"{META}alpha"], meta[f"{META}resolution"]
    classes = int(meta.get(f"{META}num_classes", "1000"))
    imagenet = meta.get(f"{META}labels_sha256") == labels_sha256(imagenet_labels())
    what = "ImageNet-1k classifier" if imagenet else f"classifier of {classes} classes"
    mlmodel.short_description = (
        f"MobileNet V1 (alpha={float(alpha)}, {res}x{res}) {what}; "
        f"weights: {weights.spec}; {meta[f'{META}precision']}, palettization "
        f"{meta[f'{META}palettization']}. Howard et al. 2017, arXiv 1704.04861."
    )
    mlmodel.author = "mnv1-coreml (MobileNet V1: Howard et al., Google, 2017)"
    mlmodel.license = (
        "Model code: Apache-2.0. Weights: see the weights source's licence "
        "(Keras Applications: Apache-2.0; timm: model card)."
    )
    mlmodel.version = __version__
    mlmodel.input_description[INPUT_NAME] = (
        f"RGB image, {res}x{res}; normalised inside the model as {n.describe()}. "
        "Use Vision with .centerCrop for other sizes."
    )
    kind = "ImageNet " if imagenet else ""
    mlmodel.output_description[LABEL_OUTPUT] = f"Most likely {kind}class label"
    mlmodel.output_description[PROBS_OUTPUT] = (
        f"Probability of each of the {classes} {kind}classes"
    )
    mlmodel.user_defined_metadata[PREVIEW_TYPE_KEY] = "imageClassifier"
    for key, value in meta.items():
        mlmodel.user_defined_metadata[key] = value


def mark_validation(package: str | Path, verdict: str) -> None:
    """Record the validation verdict in a saved package's metadata (its spec file only)."""
    from .coreml import ct

    package = Path(package)
    manifest = json.loads((package / "Manifest.json").read_text())
    root = manifest["itemInfoEntries"][manifest["rootModelIdentifier"]]["path"]
    spec = ct.utils.load_spec(str(package))
    spec.description.metadata.userDefined[VALIDATION_KEY] = verdict
    (package / "Data" / root).write_bytes(spec.SerializeToString())


def compression_of(metadata: Mapping[str, str]) -> CompressionConfig | None:
    """The compression config recorded in ``mnv1.compression`` (None: uncompressed)."""
    text = metadata.get(COMPRESSION_KEY)
    return None if text is None else from_metadata(text)


def model_kind(metadata: Mapping[str, str]) -> str:
    """fp32, fp16, int8, palettized-N (...): the tolerance kind, from ``mnv1.compression``.

    A package without the key (not made by ``convert``) counts as uncompressed at its
    precision; the contract check reports the missing metadata separately.
    """
    config = compression_of(metadata)
    if config is not None:
        return config.kind()
    precision = metadata.get(f"{META}precision", "fp16")
    if precision not in ("fp16", "fp32"):
        raise UserError(f"mnv1.precision must be fp16 or fp32, got {precision!r}")
    return precision


def settings_of(metadata: Mapping[str, str]) -> dict[str, Any]:
    """The architecture settings recorded in the metadata, as a golden manifest spells them.

    Missing keys are left out; malformed values are a UserError.
    """
    found: dict[str, Any] = {}
    try:
        for key in SETTINGS_KEYS:
            value = metadata.get(f"{META}{key}")
            if value is None:
                continue
            if key == "bn_eps":
                found[key] = float(value)
            elif key == "normalization":
                found[key] = json.loads(value)
            else:
                found[key] = value
    except ValueError as exc:
        raise UserError(f"model metadata mnv1.{key} is malformed ({exc})") from None
    return found


def settings_differences(model: Mapping[str, Any], golden: Mapping[str, Any]) -> list[str]:
    """One line per architecture setting where a model and a golden manifest disagree."""
    problems = []
    for key in SETTINGS_KEYS:
        a, b = model.get(key), golden.get(key)
        if a is None or b is None:
            if a is not b:
                problems.append(f"{key}: model has {a!r}, golden has {b!r}")
            continue
        if key == "bn_eps":
            same = math.isclose(float(a), float(b), rel_tol=1e-9)
        elif key == "normalization":
            same = all(
                len(a.get(p, ())) == len(b.get(p, ())) == 3
                and all(math.isclose(x, y, rel_tol=1e-9) for x, y in zip(a[p], b[p], strict=True))
                for p in ("mean", "std")
            )
        else:
            same = a == b
        if not same:
            problems.append(f"{key}: model has {a}, golden has {b}")
    return problems
