"""Class labels: the packaged ImageNet-1k list, or the user's own (``--labels FILE``).

Core ML class labels must be unique (Vision identifiers), so ImageNet's two repeated WordNet
first names get a qualifier: ``crane`` (134, the bird; 517, the machine) and ``maillot`` (638,
dancers' tights; 639, the swimsuit); every other ImageNet label is the first lemma name.

A labels file is UTF-8 text with one label per line in class-index order (trailing whitespace
trimmed, a UTF-8 BOM and a final newline ignored), or a JSON list of strings. Every label must
be non-empty and unique; Unicode is kept exactly ("Löwchen", "柴犬"). The class count always
comes from the checkpoint; :func:`resolve_labels` matches the two.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Sequence
from functools import lru_cache
from importlib.resources import files
from pathlib import Path

from .errors import UserError
from .hashing import bytes_sha256

IMAGENET_CLASSES = 1000

#: wnid -> unique human-readable label, for the first names WordNet repeats.
DISAMBIGUATION = {
    "n02012849": "crane (bird)",
    "n03126707": "crane (machine)",
    "n03710637": "maillot (tights)",
    "n03710721": "maillot (swimsuit)",
}


class LabelsError(UserError):
    """A labels file or list that cannot be used as a model's class labels."""


@lru_cache(maxsize=1)
def imagenet_labels() -> tuple[str, ...]:
    """The 1000 labels, unique, index i being class i of the model's output."""
    text = files("mnv1_coreml").joinpath("data/imagenet_classes.tsv").read_text("utf-8")
    rows = list(csv.DictReader(text.splitlines(), delimiter="\t"))
    labels = tuple(
        DISAMBIGUATION.get(r["wnid"], r["names"].split(",")[0].strip()) for r in rows
    )
    if [int(r["index"]) for r in rows] != list(range(IMAGENET_CLASSES)) or len(
        set(labels)
    ) != IMAGENET_CLASSES:
        raise RuntimeError("packaged imagenet_classes.tsv is corrupt: expected 1000 unique rows")
    return labels


def check_labels(labels: Sequence[str], origin: str = "labels") -> tuple[str, ...]:
    """The labels as a tuple after the rules Core ML needs; a one-line LabelsError otherwise.

    Non-empty strings, no line breaks, unique; the message names the first offender.
    """
    if isinstance(labels, str) or not isinstance(labels, Sequence):
        raise LabelsError(
            f"{origin}: expected a list of label strings, got {type(labels).__name__}"
        )
    if not labels:
        raise LabelsError(f"{origin} holds no labels")
    seen: dict[str, int] = {}
    for i, label in enumerate(labels):
        if not isinstance(label, str):
            raise LabelsError(
                f"{origin}: label {i + 1} is {type(label).__name__} {label!r}, not a string"
            )
        if not label.strip():
            raise LabelsError(f"{origin}: label {i + 1} is empty; every class needs a name")
        if "\n" in label or "\r" in label:
            raise LabelsError(f"{origin}: label {i + 1} {label!r} contains a line break")
        if label in seen:
            raise LabelsError(
                f"{origin}: label {label!r} appears twice (labels {seen[label] + 1} and {i + 1}); "
                "class labels must be unique"
            )
        seen[label] = i
    return tuple(labels)


def read_labels(path: str | os.PathLike[str]) -> tuple[str, ...]:
    """Labels from a UTF-8 text file (one per line) or a JSON list of strings.

    Raises a one-line LabelsError for a missing, unreadable, non-UTF-8, empty or malformed
    file, and for an empty or duplicate label (naming the first one).
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise LabelsError(f"labels file {path} does not exist") from None
    except IsADirectoryError:
        raise LabelsError(f"labels file {path} is a directory, not a file") from None
    except OSError as exc:
        raise LabelsError(f"cannot read labels file {path}: {exc.strerror or exc}") from None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise LabelsError(
            f"labels file {path} is not UTF-8 text (byte {exc.start}); save it as UTF-8"
        ) from None
    if "\x00" in text:
        raise LabelsError(f"labels file {path} is binary, not UTF-8 text")
    stripped = text.strip()
    origin = f"labels file {path}"
    if stripped.startswith("[") or path.suffix.lower() == ".json":
        try:
            parsed = json.loads(stripped)
        except ValueError as exc:
            if path.suffix.lower() == ".json":
                raise LabelsError(f"{origin} is not valid JSON ({exc})") from None
        else:
            if not isinstance(parsed, list):
                raise LabelsError(
                    f"{origin} holds JSON {type(parsed).__name__}; expected a list of strings"
                )
            return check_labels(parsed, origin)
    lines = [line.rstrip() for line in text.split("\n")]
    while lines and not lines[-1]:
        lines.pop()
    for i, line in enumerate(lines):
        if not line:
            raise LabelsError(
                f"{origin}: line {i + 1} is empty; every class needs a name, one per line"
            )
    return check_labels(lines, origin)


def read_labels_option(
    labels: str | os.PathLike[str] | Sequence[str] | None,
) -> tuple[str, ...] | None:
    """A ``labels`` option read and checked now (a file, or a list), so bad input fails early."""
    if labels is None:
        return None
    if isinstance(labels, (str, os.PathLike)):
        return read_labels(labels)
    return check_labels(labels)


def resolve_labels(
    labels: str | os.PathLike[str] | Sequence[str] | None, num_classes: int
) -> tuple[str, ...]:
    """The labels for a checkpoint with ``num_classes`` classes.

    ``labels`` is a path to a labels file, a list of strings, or None: the ImageNet labels
    for a 1000-class checkpoint, an error telling to pass ``--labels`` for any other count.
    """
    if labels is None:
        if num_classes == IMAGENET_CLASSES:
            return imagenet_labels()
        raise LabelsError(
            f"the checkpoint has {num_classes} classes, not ImageNet's 1000: pass --labels FILE "
            f"(UTF-8 text with {num_classes} labels, one per line, or a JSON list)"
        )
    if isinstance(labels, (str, os.PathLike)):
        origin = f"labels file {labels}"
        resolved = read_labels(labels)
    else:
        origin = "labels"
        resolved = check_labels(labels)
    if len(resolved) != num_classes:
        raise LabelsError(
            f"{origin} has {len(resolved)} labels but the checkpoint has {num_classes} classes; "
            "give one label per class, in class-index order"
        )
    return resolved


def labels_sha256(labels: Sequence[str]) -> str:
    """SHA-256 of the labels as a UTF-8 text file, one per line (what ``validate`` compares)."""
    return bytes_sha256(("\n".join(labels) + "\n").encode("utf-8"))


def write_labels(path: str | os.PathLike[str], labels: Sequence[str]) -> None:
    """Write labels as UTF-8 text, one per line, that :func:`read_labels` reads back exactly."""
    path = Path(path)
    text = "\n".join(check_labels(labels)) + "\n"
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
