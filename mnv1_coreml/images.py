"""Image preparation and input normalisation, shared by convert, golden and validate.

Every path that feeds pixels to a model goes through :func:`prepare_image`, so PyTorch goldens,
the reference interpreter and the Core ML runtime all see the same uint8 RGB array.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from .errors import UserError, one_line
from .fsutil import as_path

if TYPE_CHECKING:  # torch is imported where used: evaluate's decoding workers never need it
    import torch

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


@dataclass(frozen=True)
class Normalization:
    """``x = (pixel / 255 - mean) / std`` per RGB channel, the way timm and torchvision say it."""

    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    def __post_init__(self) -> None:
        if len(self.mean) != 3 or len(self.std) != 3:
            raise ValueError("mean and std need one value per RGB channel")
        if not all(s > 0 for s in self.std):
            raise ValueError(f"std must be > 0, got {self.std}")

    @property
    def uniform_std(self) -> bool:
        return len(set(self.std)) == 1

    def image_type_params(self) -> tuple[float, tuple[float, float, float]]:
        """Scale and per-channel bias for ``coremltools.ImageType``: ``x = scale*p + bias``.

        ImageType has one scale for all channels. With a per-channel std, the ImageType does
        ``p/255 - mean`` and the traced graph multiplies by ``1/std`` (see ``in_graph_scale``).
        """
        if self.uniform_std:
            s = self.std[0]
            return 1.0 / (255.0 * s), tuple(-m / s for m in self.mean)  # type: ignore[return-value]
        return 1.0 / 255.0, tuple(-m for m in self.mean)  # type: ignore[return-value]

    @property
    def in_graph_scale(self) -> tuple[float, float, float] | None:
        """Per-channel factor the graph applies after the ImageType, or None if not needed."""
        return None if self.uniform_std else tuple(1.0 / s for s in self.std)  # type: ignore

    def apply(self, images: np.ndarray) -> torch.Tensor:
        """uint8 (N, H, W, 3) RGB -> normalised float32 (N, 3, H, W) for the PyTorch model."""
        import torch

        x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float()
        mean = torch.tensor(self.mean).view(1, 3, 1, 1)
        std = torch.tensor(self.std).view(1, 3, 1, 1)
        return (x / 255.0 - mean) / std

    def describe(self) -> str:
        return f"(x/255 - mean)/std, mean={list(self.mean)}, std={list(self.std)}"

    def to_json(self) -> dict[str, list[float]]:
        return {"mean": list(self.mean), "std": list(self.std)}


#: Keras/TF-slim Inception-style ``x/127.5 - 1``; also what timm's MobileNet V1 uses.
INCEPTION = Normalization((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
#: torchvision's ImageNet statistics (per-channel std, so it exercises the in-graph scale).
IMAGENET = Normalization((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


def prepare_image(image: Image.Image, res: int) -> np.ndarray:
    """Centre square crop, then resize to res x res: what Vision's ``.centerCrop`` does.

    Grayscale, palette and RGBA images become RGB (alpha is dropped, as Core ML's RGB pixel
    buffers carry none). An image that is already res x res passes through untouched, so stored
    arrays round-trip exactly. Resizing is bilinear with antialiasing (PIL), close to what Core
    Image does when Vision scales a frame.
    """
    image = image.convert("RGB")
    w, h = image.size
    side = min(w, h)
    if (w, h) != (side, side):
        left, top = (w - side) // 2, (h - side) // 2
        image = image.crop((left, top, left + side, top + side))
    if side != res:
        image = image.resize((res, res), Image.Resampling.BILINEAR)
    return np.asarray(image, dtype=np.uint8).copy()


def prepare_image_fraction(image: Image.Image, res: int, crop_fraction: float) -> np.ndarray:
    """The standard ImageNet evaluation protocol: shorter side to ``res / crop_fraction``, then
    a centre ``res`` x ``res`` crop (timm and torchvision: 0.875 gives 256 -> 224).

    Published top-1 numbers are measured this way; :func:`prepare_image` (Vision's
    ``.centerCrop``) is what the iOS app feeds. Same RGB conversion and bilinear resampling.
    """
    if not 0.0 < crop_fraction <= 1.0:
        raise ValueError(f"crop fraction must be in (0, 1], got {crop_fraction}")
    image = image.convert("RGB")
    w, h = image.size
    short = max(res, math.floor(res / crop_fraction))
    size = (short, int(short * h / w)) if w <= h else (int(short * w / h), short)
    if size != (w, h):
        image = image.resize(size, Image.Resampling.BILINEAR)
    w, h = size
    left, top = int(round((w - res) / 2.0)), int(round((h - res) / 2.0))
    image = image.crop((left, top, left + res, top + res))
    return np.asarray(image, dtype=np.uint8).copy()


def probe_images(res: int) -> list[tuple[str, np.ndarray]]:
    """Synthetic probes that catch channel-order and scale errors.

    Pure red, green and blue frames expose RGB/BGR swaps; a gradient and a checkerboard expose
    wrong scale or bias (their pixels span 0..255).
    """
    probes: list[tuple[str, np.ndarray]] = []
    for i, name in enumerate(("red", "green", "blue")):
        frame = np.zeros((res, res, 3), np.uint8)
        frame[..., i] = 255
        probes.append((f"probe_{name}", frame))
    ramp = np.linspace(0, 255, res, dtype=np.float64)
    gradient = np.stack(
        [np.broadcast_to(ramp, (res, res)), np.broadcast_to(ramp[:, None], (res, res)),
         np.broadcast_to(ramp[::-1], (res, res))], axis=-1
    )
    probes.append(("probe_gradient", np.round(gradient).astype(np.uint8)))
    cell = max(res // 8, 1)
    yy, xx = np.indices((res, res)) // cell
    board = ((yy + xx) % 2 * 255).astype(np.uint8)
    probes.append(("probe_checkerboard", np.stack([board] * 3, axis=-1)))
    return probes


def packaged_image_dir() -> Path:
    """The golden photos shipped inside the package (so validation works after pip install)."""
    return Path(str(files("mnv1_coreml").joinpath("data/golden_images")))


def iter_image_files(directory: str | os.PathLike[str]) -> Iterator[Path]:
    """The image files of a directory (by suffix), in name order."""
    try:
        entries = list(as_path(directory).iterdir())
    except OSError as exc:
        raise UserError(f"cannot list images in {directory}: {one_line(exc)}") from None
    yield from sorted(p for p in entries if p.suffix.lower() in IMAGE_SUFFIXES)


def read_image(path: str | os.PathLike[str], res: int) -> np.ndarray:
    """One image file, prepared; an undecodable or truncated file is a UserError naming it.

    A directory with one bad file fails as a whole (nothing is written): a golden silently
    missing an image would validate less than the user asked for.
    """
    try:
        with Image.open(path) as im:
            return prepare_image(im, res)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        # PIL: UnidentifiedImageError (an OSError) for unknown bytes, OSError for truncated
        # data, SyntaxError from some decoders for corrupt headers
        raise UserError(f"cannot read image {path}: {one_line(exc)}") from None


def load_image_set(
    res: int, directory: str | os.PathLike[str] | None = None, with_probes: bool = True
) -> tuple[list[str], np.ndarray]:
    """Names and uint8 (N, res, res, 3) RGB arrays: the photos in ``directory`` plus probes."""
    directory = packaged_image_dir() if directory is None else as_path(directory)
    named: list[tuple[str, np.ndarray]] = []
    for path in iter_image_files(directory):
        named.append((path.name, read_image(path, res)))
    if with_probes:
        named.extend(probe_images(res))
    if not named:
        raise UserError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {directory}")
    names: Sequence[str] = [n for n, _ in named]
    return list(names), np.stack([a for _, a in named])
