"""Training data for ``mnv1-coreml train``: class folders, a deterministic split, decoded images.

Layouts (see :func:`discover`):

* ``DATA/<class>/...images``: class folders, sorted by name; the folder names become the labels.
  A seeded, per-class (stratified) ``val_split`` holds images out for validation.
* ``DATA/train/<class>/...`` and ``DATA/val/<class>/...``: an explicit split; both must hold the
  same class folders.

Every image is prepared exactly as the app and the golden see it (:func:`prepare_image`, Vision's
``.centerCrop``). For fine-tuning, a slightly larger copy of the whole picture is kept so that
:func:`augment` can take random resized crops from it.
"""

from __future__ import annotations

import math
import os
import zlib
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .errors import UserError
from .images import IMAGE_SUFFIXES, prepare_image

#: Fraction of images that may fail to decode before the run is refused.
DEFAULT_MAX_BAD_FRACTION = 0.1
#: The augmentation copy's shorter side, relative to the model resolution: room for crops.
BASE_SCALE = 1.25
#: Augmentation: random resized crop area and aspect ranges, flip probability, jitter strength.
CROP_AREA = (0.35, 1.0)
CROP_RATIO = (3 / 4, 4 / 3)
FLIP_P = 0.5
JITTER = 0.2  # brightness, contrast and saturation factors drawn from [1 - J, 1 + J]
AUGMENTATION = (
    f"random resized crop (area {CROP_AREA[0]:g}-{CROP_AREA[1]:g} of the picture, aspect "
    f"{CROP_RATIO[0]:.2f}-{CROP_RATIO[1]:.2f}), horizontal flip (p={FLIP_P:g}), colour jitter "
    f"(brightness, contrast, saturation x[{1 - JITTER:g}, {1 + JITTER:g}])"
)


@dataclass(frozen=True)
class ImageItem:
    """One image file and its class index."""

    path: Path
    label: int


@dataclass(frozen=True)
class DataSplit:
    """Classes (sorted folder names) and the train and validation images."""

    classes: tuple[str, ...]
    train: tuple[ImageItem, ...]
    val: tuple[ImageItem, ...]
    layout: str  # a sentence saying how the split was made

    def counts(self) -> list[tuple[str, int, int]]:
        """(class, train images, validation images) per class."""
        tr = np.bincount([i.label for i in self.train], minlength=len(self.classes))
        va = np.bincount([i.label for i in self.val], minlength=len(self.classes))
        return [(c, int(tr[k]), int(va[k])) for k, c in enumerate(self.classes)]


def _visible(path: Path, root: Path) -> bool:
    return not any(part.startswith(".") for part in path.relative_to(root).parts)


def _class_dirs(root: Path) -> list[Path]:
    return sorted(
        (p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")),
        key=lambda p: p.name,
    )


def _image_files(class_dir: Path) -> list[Path]:
    return sorted(
        p for p in class_dir.rglob("*")
        if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file() and _visible(p, class_dir)
    )


def _classes_with_files(root: Path, what: str) -> dict[str, list[Path]]:
    dirs = _class_dirs(root)
    if len(dirs) < 2:
        found = ", ".join(repr(d.name) for d in dirs) or "none"
        raise UserError(
            f"{what} {root} needs at least 2 class folders (one per class, named by its label); "
            f"found {len(dirs)} ({found})"
        )
    files: dict[str, list[Path]] = {}
    for d in dirs:
        images = _image_files(d)
        if not images:
            raise UserError(
                f"class {d.name!r} ({d}) has no images ({', '.join(IMAGE_SUFFIXES)}); add some "
                "or remove the folder"
            )
        files[d.name] = images
    return files


def _split_rng(seed: int, name: str) -> np.random.Generator:
    """One generator per class, keyed by its name: adding a class leaves the others' split."""
    return np.random.default_rng([seed & 0xFFFFFFFF, zlib.crc32(name.encode("utf-8"))])


def discover(data_dir: Path, val_split: float = 0.2, seed: int = 0) -> DataSplit:
    """Classes and a deterministic train/validation split of ``data_dir`` (see module doc).

    With class folders, each class keeps ``round(n * val_split)`` images (at least 1, and at
    least 1 for training) for validation, chosen by a generator seeded with ``seed`` and the
    class name. With ``train/`` and ``val/`` folders, ``val_split`` is not used.
    """
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise UserError(f"data directory {data_dir} does not exist or is not a directory")
    train_dir, val_dir = data_dir / "train", data_dir / "val"
    if train_dir.is_dir() and val_dir.is_dir():
        train_files = _classes_with_files(train_dir, "training folder")
        val_files = _classes_with_files(val_dir, "validation folder")
        if sorted(train_files) != sorted(val_files):
            only_t = sorted(set(train_files) - set(val_files))
            only_v = sorted(set(val_files) - set(train_files))
            raise UserError(
                f"{train_dir} and {val_dir} must hold the same class folders; only in train: "
                f"{only_t or 'none'}, only in val: {only_v or 'none'}"
            )
        classes = tuple(sorted(train_files))
        train = tuple(ImageItem(p, k) for k, c in enumerate(classes) for p in train_files[c])
        val = tuple(ImageItem(p, k) for k, c in enumerate(classes) for p in val_files[c])
        return DataSplit(classes, train, val, "explicit train/ and val/ folders")
    if not 0.0 < val_split < 1.0:
        raise UserError(f"--val-split must be between 0 and 1 (exclusive), got {val_split!r}")
    files = _classes_with_files(data_dir, "data directory")
    classes = tuple(sorted(files))
    train_items: list[ImageItem] = []
    val_items: list[ImageItem] = []
    for k, name in enumerate(classes):
        paths = files[name]
        if len(paths) < 2:
            raise UserError(
                f"class {name!r} has only 1 image; each class needs at least 2 (one to train, "
                "one to validate), or use train/ and val/ folders"
            )
        n_val = min(max(round(len(paths) * val_split), 1), len(paths) - 1)
        order = _split_rng(seed, name).permutation(len(paths))
        held = set(order[:n_val].tolist())
        for i, p in enumerate(paths):
            (val_items if i in held else train_items).append(ImageItem(p, k))
    layout = f"class folders, {val_split:g} of each class held out for validation (seed {seed})"
    return DataSplit(classes, tuple(train_items), tuple(val_items), layout)


@dataclass
class LoadedImages:
    """Decoded images: the prepared res x res arrays, labels, and what could not be read."""

    images: np.ndarray  # uint8 (N, res, res, 3), prepare_image's output
    labels: np.ndarray  # int64 (N,)
    paths: list[Path]
    bases: list[np.ndarray] | None = None  # larger whole pictures for augmentation
    bad: list[tuple[Path, str]] = field(default_factory=list)


def _base_picture(image: Image.Image, res: int) -> np.ndarray:
    """The whole picture with its shorter side at ``BASE_SCALE * res`` (never enlarged),
    the longer side capped at twice the shorter one (centred), for random resized crops."""
    w, h = image.size
    short = min(w, h)
    if max(w, h) > 2 * short:
        cw, ch = min(w, 2 * short), min(h, 2 * short)
        left, top = (w - cw) // 2, (h - ch) // 2
        image = image.crop((left, top, left + cw, top + ch))
        w, h = image.size
    target = math.ceil(BASE_SCALE * res)
    if short > target:
        image = image.resize(
            (max(round(w * target / short), 1), max(round(h * target / short), 1)),
            Image.Resampling.BILINEAR,
        )
    return np.asarray(image, dtype=np.uint8).copy()


def _decode(path: Path, res: int, keep_base: bool) -> tuple[np.ndarray, np.ndarray | None] | str:
    """The prepared array (and the augmentation copy), or why the file cannot be decoded."""
    try:
        with Image.open(path) as im:
            im.load()
            rgb = im.convert("RGB")
    except Exception as exc:  # noqa: BLE001 - PIL raises many types for broken files
        text = " ".join(str(exc).split()) or type(exc).__name__
        return text[:160]
    prepared = prepare_image(rgb, res)
    return prepared, (_base_picture(rgb, res) if keep_base else None)


def default_jobs() -> int:
    """Decoding threads: PIL releases the GIL while decoding and resizing."""
    return max(1, min(4, os.cpu_count() or 1))


def load_images(
    items: Sequence[ImageItem],
    res: int,
    *,
    keep_base: bool = False,
    jobs: int | None = None,
    on_image: Callable[[], None] | None = None,
) -> LoadedImages:
    """Decode and prepare ``items`` in threads; unreadable files are recorded in ``bad``."""
    tick = on_image or (lambda: None)
    results: list[tuple[np.ndarray, np.ndarray | None] | str] = []

    def work(item: ImageItem) -> tuple[np.ndarray, np.ndarray | None] | str:
        return _decode(item.path, res, keep_base)

    with ThreadPoolExecutor(max_workers=jobs or default_jobs()) as pool:
        for out in pool.map(work, items):
            results.append(out)
            tick()
    good = [(it, r) for it, r in zip(items, results, strict=True) if not isinstance(r, str)]
    bad = [(it.path, r) for it, r in zip(items, results, strict=True) if isinstance(r, str)]
    images = (
        np.stack([r[0] for _, r in good]) if good else np.zeros((0, res, res, 3), np.uint8)
    )
    return LoadedImages(
        images=images,
        labels=np.asarray([it.label for it, _ in good], dtype=np.int64),
        paths=[it.path for it, _ in good],
        bases=[r[1] for _, r in good] if keep_base else None,  # type: ignore[misc]
        bad=bad,
    )


def check_decoded(
    split: DataSplit,
    train: LoadedImages,
    val: LoadedImages,
    max_bad_fraction: float = DEFAULT_MAX_BAD_FRACTION,
) -> None:
    """Refuse the run when too many images are broken or a class has no readable image."""
    bad = train.bad + val.bad
    total = len(split.train) + len(split.val)
    if bad and len(bad) > max_bad_fraction * total:
        path, reason = bad[0]
        raise UserError(
            f"{len(bad)} of {total} images cannot be decoded, more than the allowed "
            f"{max_bad_fraction:.0%} (--max-bad-fraction); first: {path}: {reason}"
        )
    if split.val and len(val.images) == 0:
        raise UserError(
            f"none of the {len(split.val)} validation images can be decoded (first: "
            f"{val.bad[0][0]}: {val.bad[0][1]}); early stopping needs some"
        )
    have = np.bincount(train.labels, minlength=len(split.classes))
    for k, name in enumerate(split.classes):
        if have[k] == 0:
            in_class = {i.path for i in split.train if i.label == k}
            first = next((p for p, _ in train.bad if p in in_class), None)
            raise UserError(
                f"class {name!r} has no readable training images"
                + (f" (e.g. {first} cannot be decoded)" if first else "")
            )


def random_resized_crop(
    base: np.ndarray, res: int, rng: np.random.Generator
) -> np.ndarray:
    """A random crop of ``CROP_AREA`` of the picture with aspect in ``CROP_RATIO``, at res x res.

    Tries 10 draws (as torchvision does); falls back to the centre square, the eval crop.
    """
    h, w = base.shape[:2]
    area = h * w
    box = None
    for _ in range(10):
        target = area * rng.uniform(*CROP_AREA)
        ratio = math.exp(rng.uniform(math.log(CROP_RATIO[0]), math.log(CROP_RATIO[1])))
        cw = round(math.sqrt(target * ratio))
        ch = round(math.sqrt(target / ratio))
        if 0 < cw <= w and 0 < ch <= h:
            left = int(rng.integers(0, w - cw + 1))
            top = int(rng.integers(0, h - ch + 1))
            box = (left, top, left + cw, top + ch)
            break
    if box is None:
        side = min(w, h)
        left, top = (w - side) // 2, (h - side) // 2
        box = (left, top, left + side, top + side)
    crop = Image.fromarray(base).resize((res, res), Image.Resampling.BILINEAR, box=box)
    return np.asarray(crop, dtype=np.uint8)


def color_jitter(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Brightness, contrast and saturation jitter on (N, 3, H, W) RGB in [0, 1], per image."""
    n = x.shape[0]

    def factors() -> torch.Tensor:
        return (1 + (torch.rand(n, 1, 1, 1, generator=generator) * 2 - 1) * JITTER)

    x = x * factors()
    gray = (0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3])
    mean = gray.mean(dim=(2, 3), keepdim=True)
    x = (x - mean) * factors() + mean
    gray = (0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3])
    x = (x - gray) * factors() + gray
    return x.clamp(0.0, 1.0)


def augment(
    bases: Sequence[np.ndarray],
    res: int,
    rng: np.random.Generator,
    generator: torch.Generator,
) -> torch.Tensor:
    """Augmented (N, 3, res, res) RGB floats in [0, 1]: crop, flip, then colour jitter."""
    crops = []
    for base in bases:
        crop = random_resized_crop(base, res, rng)
        if rng.random() < FLIP_P:
            crop = crop[:, ::-1]
        crops.append(crop)
    x = torch.from_numpy(np.ascontiguousarray(np.stack(crops))).permute(0, 3, 1, 2).float() / 255
    return color_jitter(x, generator)
