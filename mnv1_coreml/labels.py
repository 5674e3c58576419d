"""ImageNet-1k class labels in the standard index order (Keras, timm, torchvision).

Core ML class labels must be unique, but two WordNet first names repeat: ``crane`` (134, the
bird; 517, the machine) and ``maillot`` (638, dancers' tights; 639, the swimsuit). Those get a
short WordNet-gloss qualifier; every other label is the first lemma name.
"""

from __future__ import annotations

import csv
from functools import lru_cache
from importlib.resources import files

#: wnid -> unique human-readable label, for the first names WordNet repeats.
DISAMBIGUATION = {
    "n02012849": "crane (bird)",
    "n03126707": "crane (machine)",
    "n03710637": "maillot (tights)",
    "n03710721": "maillot (swimsuit)",
}


@lru_cache(maxsize=1)
def imagenet_labels() -> tuple[str, ...]:
    """The 1000 labels, unique, index i being class i of the model's output."""
    text = files("mnv1_coreml").joinpath("data/imagenet_classes.tsv").read_text("utf-8")
    rows = list(csv.DictReader(text.splitlines(), delimiter="\t"))
    labels = tuple(
        DISAMBIGUATION.get(r["wnid"], r["names"].split(",")[0].strip()) for r in rows
    )
    if [int(r["index"]) for r in rows] != list(range(1000)) or len(set(labels)) != 1000:
        raise RuntimeError("packaged imagenet_classes.tsv is corrupt: expected 1000 unique rows")
    return labels
