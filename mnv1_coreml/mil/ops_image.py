"""Image and spatial kernels: transposed convolution, resizing, cropping, grid sampling,
depth/space rearrangements, sliding windows, L2 pooling and the L2 / local response norms.

Semantics are coremltools' op definitions: ``defs/iOS15/conv.py`` and ``iOS17/conv.py``
(``conv_transpose``); ``iOS15/image_resizing.py``, ``iOS16/image_resizing.py`` and
``iOS17/image_resizing.py`` (``upsample_bilinear``, ``resize_bilinear``,
``resize_nearest_neighbor``, ``resize``, ``crop``, ``crop_resize``, ``resample``, ``affine``);
``iOS15/tensor_transformation.py``, ``iOS16/tensor_transformation.py`` and
``iOS17/tensor_transformation.py`` (``depth_to_space``, ``space_to_depth``, ``pixel_shuffle``,
``pixel_unshuffle``, ``space_to_batch``, ``batch_to_space``, ``sliding_windows``);
``iOS15/pool.py`` (``l2_pool``); ``iOS15/normalization.py`` and ``iOS17/normalization.py``
(``l2_norm``, ``local_response_norm``). Where a docstring leaves a rule open (which source
pixel a nearest-neighbour output reads, how a sampling mode applies to a crop box, where
padding goes), the rule used is the one Core ML's own expected outputs in coremltools' op
tests fix (``ops/tests/iOS14..iOS17``), or the grid definitions of Core ML's
``NeuralNetwork.proto`` (``SamplingMode``); each kernel says which. Modes neither source
settles are refused at load time, by name.

Resampling grids of the resize family are exact rationals (integer arithmetic), so which
pixels an output reads never depends on float rounding; the interpolation weights are then
rounded to fp32. Interpolation is ``(1 - w) * a + w * b``, separable (width, then height).
Gathers and elementwise arithmetic give the same bits for N stacked samples as for N single
runs, so those ops take whole batches; convolutions, sums and ``pow`` run per sample (see
:mod:`.ops`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .errors import InterpreterError, UnsupportedOpError
from .loader import Operation, types
from .ops import (
    PER_SAMPLE,
    UNARY,
    Batched,
    BatchRule,
    OpArgs,
    _check_pad_type,
    _const_ints,
    _const_str,
    _pool_geometry,
    _sum_pool,
    _torch_pad_arg,
    axes_avoid_batch,
    flows,
    register,
)


def _refuse(op: Operation, detail: str) -> UnsupportedOpError:
    return UnsupportedOpError(op.op_type, op.name, detail)


def _const_value(op: Operation, name: str, default: Any = None) -> Any:
    """A constant parameter's value (``default`` if absent); refused if computed at run time."""
    var = op.inputs.get(name)
    if var is None:
        return default
    if var.val is None:
        raise _refuse(op, f"{name!r} must be a constant")
    return var.val


def _const_bool(op: Operation, name: str, default: bool | None) -> bool | None:
    value = _const_value(op, name)
    return default if value is None else bool(np.asarray(value))


def _static_dims(op: Operation, name: str) -> list[int] | None:
    """The input's static shape, None if any dim is symbolic."""
    shape = op.inputs[name].shape
    if any(not isinstance(d, (int, np.integer)) for d in shape):
        return None
    return [int(d) for d in shape]


def _rank_at_least(rank: int) -> BatchRule:
    def check(op: Operation, batched: Batched) -> str:
        return "" if op.outputs[0].rank >= rank else f"rank below {rank}: dim 0 is resized"

    return check


# --------------------------------------------------------------------------------------------
# sampling grids and interpolation


#: Grid rules by name: ``resize_bilinear`` / ``resize`` sampling modes (iOS15
#: ``resize_bilinear`` docstring; NeuralNetwork.proto ``SamplingMode``, whose ``linspace``
#: definition fixes the one-point case), plus ``upsample_bilinear``'s rules.
SAMPLING_MODES = ("STRICT_ALIGN_CORNERS", "ALIGN_CORNERS", "DEFAULT", "OFFSET_CORNERS",
                  "UNALIGN_CORNERS")


def _grid(mode: str, size: int, out: int) -> tuple[np.ndarray, np.ndarray]:
    """Grid point of each of ``out`` outputs along an input axis of ``size`` pixels, as exact
    rationals ``num / den`` (int64), clamped to ``[0, size - 1]``:

    - STRICT_ALIGN_CORNERS: ``i (X-1) / (N-1)``; one output: 0 (``linspace(0, X-1, 1)``).
    - ALIGN_CORNERS: the same, but one output samples the middle, ``(X-1) / 2``.
    - DEFAULT: ``i (X - X/N) / (N-1) = i X / N`` (TF's legacy resize, NN ``UPSAMPLE_MODE``).
    - OFFSET_CORNERS: ``(i + 1/2) max(1, X-1) / N`` (NN ``ROI_ALIGN_MODE``).
    - UNALIGN_CORNERS: ``(i + 1/2) X / N - 1/2`` (half-pixel centres).
    """
    i = np.arange(out, dtype=np.int64)
    if mode in ("STRICT_ALIGN_CORNERS", "ALIGN_CORNERS") and out > 1:
        num, den = i * (size - 1), out - 1
    elif mode == "STRICT_ALIGN_CORNERS":
        num, den = np.zeros(out, np.int64), 1
    elif mode == "ALIGN_CORNERS":
        num, den = np.full(out, size - 1, np.int64), 2
    elif mode == "DEFAULT":
        num, den = i * size, out
    elif mode == "OFFSET_CORNERS":
        num, den = (2 * i + 1) * max(1, size - 1), 2 * out
    elif mode == "UNALIGN_CORNERS":
        num, den = (2 * i + 1) * size - out, 2 * out
    else:  # refused at load time
        raise InterpreterError(f"unknown sampling mode {mode!r}")
    return np.clip(num, 0, (size - 1) * den), np.full(out, den, np.int64)


def _lerp_dim(x: torch.Tensor, dim: int, num: np.ndarray, den: np.ndarray) -> torch.Tensor:
    """Linear interpolation along ``dim`` at the grid points ``num / den``."""
    size = x.shape[dim]
    lo = num // den
    frac = (num - lo * den) / den
    if not frac.any():
        return x.index_select(dim, torch.from_numpy(lo))
    hi = np.minimum(lo + 1, size - 1)
    shape = [1] * x.dim()
    shape[dim] = -1
    w = torch.from_numpy(frac.astype(np.float32)).reshape(shape)
    w0 = torch.from_numpy((1.0 - frac).astype(np.float32)).reshape(shape)
    a = x.index_select(dim, torch.from_numpy(lo))
    b = x.index_select(dim, torch.from_numpy(hi))
    return a * w0 + b * w


def _resize_linear(x: torch.Tensor, out_h: int, out_w: int, mode: str) -> torch.Tensor:
    """Bilinear resize of the last two dims under one grid rule (width, then height)."""
    x = _lerp_dim(x, x.dim() - 1, *_grid(mode, x.shape[-1], out_w))
    return _lerp_dim(x, x.dim() - 2, *_grid(mode, x.shape[-2], out_h))


def _half_pixel_nearest(x: torch.Tensor, out_h: int, out_w: int) -> torch.Tensor:
    """Output ``o`` reads input ``floor((o + 1/2) in / out)`` on each of the last two dims."""
    for dim, out in ((x.dim() - 2, out_h), (x.dim() - 1, out_w)):
        size = x.shape[dim]
        if out != size:
            o = torch.arange(out)
            x = x.index_select(dim, torch.div((2 * o + 1) * size, 2 * out,
                                              rounding_mode="floor"))
    return x


def _gather_hw(x: torch.Tensor, yi: torch.Tensor, xi: torch.Tensor) -> torch.Tensor:
    """``x[b, :, yi[b, i, j], xi[b, i, j]]`` for x (B, C, H, W), indices (B, Ho, Wo)."""
    b, c, h, w = x.shape
    flat = x.reshape(b, c, h * w)
    index = (yi * w + xi).reshape(b, 1, -1).expand(b, c, -1)
    return flat.gather(2, index).reshape(b, c, *yi.shape[1:])


def _bilinear_at(x: torch.Tensor, iy: torch.Tensor, ix: torch.Tensor,
                 pad: float | None) -> torch.Tensor:
    """Bilinear samples of x (B, C, H, W) at float64 pixel coordinates (B, Ho, Wo). A tap
    outside the image is ``pad`` (constant padding); with ``pad`` None the coordinates are
    already inside ``[0, size - 1]``."""
    h, w = x.shape[-2:]
    if pad is not None:  # keep floor() in int64 range; taps stay outside either way
        iy, ix = iy.clamp(-2.0, h + 1.0), ix.clamp(-2.0, w + 1.0)
    y0, x0 = torch.floor(iy), torch.floor(ix)
    wy, wx = (iy - y0).float().unsqueeze(1), (ix - x0).float().unsqueeze(1)
    y0, x0 = y0.long(), x0.long()

    def tap(yi: torch.Tensor, xi: torch.Tensor) -> torch.Tensor:
        v = _gather_hw(x, yi.clamp(0, h - 1), xi.clamp(0, w - 1))
        if pad is None:
            return v
        inside = ((yi >= 0) & (yi < h) & (xi >= 0) & (xi < w)).unsqueeze(1)
        return torch.where(inside, v, torch.tensor(pad, dtype=v.dtype))

    top = tap(y0, x0) * (1 - wx) + tap(y0, x0 + 1) * wx
    bottom = tap(y0 + 1, x0) * (1 - wx) + tap(y0 + 1, x0 + 1) * wx
    return top * (1 - wy) + bottom * wy


def _nearest_at(x: torch.Tensor, iy: torch.Tensor, ix: torch.Tensor,
                pad: float | None) -> torch.Tensor:
    """The pixel nearest each coordinate (ties to even, PyTorch's ``grid_sample``); outside
    the image: ``pad``."""
    h, w = x.shape[-2:]
    yi = torch.round(iy.clamp(-2.0, h + 1.0)).long()
    xi = torch.round(ix.clamp(-2.0, w + 1.0)).long()
    v = _gather_hw(x, yi.clamp(0, h - 1), xi.clamp(0, w - 1))
    if pad is None:
        return v
    inside = ((yi >= 0) & (yi < h) & (xi >= 0) & (xi < w)).unsqueeze(1)
    return torch.where(inside, v, torch.tensor(pad, dtype=v.dtype))


def _reflect(coord: torch.Tensor, low2: float, high2: float) -> torch.Tensor:
    """Reflect coordinates into ``[low2 / 2, high2 / 2]`` (PyTorch's
    ``reflect_coordinates``)."""
    if low2 == high2:
        return torch.zeros_like(coord)
    low, span = low2 / 2, (high2 - low2) / 2
    dist = (coord - low).abs()
    extra = torch.fmod(dist, span)
    flips = torch.floor(dist / span)
    return torch.where(flips % 2 == 0, extra + low, span - extra + low)


def _pad_coords(coord: torch.Tensor, size: int, padding: str) -> torch.Tensor:
    """Map a pixel coordinate into the image per ``padding_mode`` (constant: unchanged).

    border: clamp. reflection: mirror about the first and last pixel centres (the edge
    pixel is not repeated: ``|1,2,3| -> 3,2,|1,2,3|,2,1``). symmetric: mirror about the
    image edges, then clamp (``|1,2,3| -> 2,1,|1,2,3|,3,2``). In pixel space these are the
    docstring's padded images; interpolating in them equals interpolating the mirrored
    coordinate.
    """
    if padding == "border":
        return coord.clamp(0, size - 1)
    if padding == "reflection":
        return _reflect(coord, 0.0, 2.0 * (size - 1))
    if padding == "symmetric":
        return _reflect(coord, -1.0, 2.0 * size - 1).clamp(0, size - 1)
    return coord


# --------------------------------------------------------------------------------------------
# conv_transpose


_CONV_TRANSPOSE = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}


def _deconv_geometry(
    pad_type: str, pad: Sequence[int], in_sizes: Sequence[int], kernel: Sequence[int],
    strides: Sequence[int], dilations: Sequence[int],
) -> list[tuple[int, int]]:
    """(crop before, output size) per spatial dim of the full transposed convolution (length
    ``(in - 1) s + (k - 1) d + 1``), per coremltools' type inference of ``conv_transpose``:

    - valid: nothing cropped;
    - custom: ``pad[2i]`` cropped before and ``pad[2i+1]`` after (a conv's input padding);
    - same: output ``in * s``; TensorFlow's ``conv2d_transpose(padding="SAME")``, the
      frontend's source of it and the reference of coremltools' tests: the forward conv's
      SAME padding of that output, ``max(0, k_eff - s)``, with the smaller half before.
    """
    geometry = []
    for i, (size, k, s, d) in enumerate(zip(in_sizes, kernel, strides, dilations, strict=True)):
        k_eff = (k - 1) * d + 1
        full = (size - 1) * s + k_eff
        if pad_type == "valid":
            geometry.append((0, full))
        elif pad_type == "custom":
            geometry.append((pad[2 * i], full - pad[2 * i] - pad[2 * i + 1]))
        else:
            geometry.append((max(0, k_eff - s) // 2, size * s))
    return geometry


def _check_conv_transpose(op: Operation) -> None:
    x = op.inputs["x"]
    nd = x.rank - 2
    if not 1 <= nd <= 3:
        raise _refuse(op, f"{nd} spatial dims")
    pad_type = _const_str(op, "pad_type", "valid")
    if pad_type not in ("valid", "same", "custom"):
        raise _refuse(op, f"pad_type {pad_type!r}")
    pad = _const_ints(op, "pad") or [0] * (2 * nd)
    if pad_type == "custom" and any(p < 0 for p in pad):
        raise _refuse(op, f"negative pad {pad}")
    if op.inputs.get("output_shape") is None:
        return
    wanted = _const_ints(op, "output_shape")
    x_dims, w_dims = _static_dims(op, "x"), _static_dims(op, "weight")
    strides = _const_ints(op, "strides") or [1] * nd
    dilations = _const_ints(op, "dilations") or [1] * nd
    groups = int(_const_value(op, "groups", 1))
    natural = None
    if wanted is not None and x_dims is not None and w_dims is not None:
        geometry = _deconv_geometry(pad_type, pad, x_dims[2:], w_dims[2:], strides, dilations)
        natural = [x_dims[0], w_dims[1] * groups, *(size for _, size in geometry)]
    if wanted != natural:
        # A larger output (TF's output_shape for strided convs) has to place its extra
        # rows somewhere; neither the MIL nor the NeuralNetwork spec says where.
        raise _refuse(op, f"output_shape {wanted} differs from the {pad_type!r} padding's "
                          f"{natural}: where the difference goes is not specified")


@register("conv_transpose", check=_check_conv_transpose, batch=PER_SAMPLE, fast_batch=UNARY)
def _conv_transpose(a: OpArgs) -> torch.Tensor:
    """Transposed convolution (weight ``[C_in, C_out / groups, *K]``, PyTorch's layout), 1-3
    spatial dims, strides, dilations, groups, optional bias (iOS17: weight and bias may be
    computed and of another float dtype). The full transposed convolution is cropped per
    ``pad_type`` (:func:`_deconv_geometry`, zero-extended where ``same`` asks for more than
    it has), then the bias is added. ``output_shape`` is accepted when it equals that shape.
    """
    x = a.tensor("x")
    w = a.tensor("weight").float()
    bias = a.opt_tensor("bias")
    nd = x.dim() - 2
    strides = a.ints("strides", [1] * nd)
    dilations = a.ints("dilations", [1] * nd)
    groups = int(a.scalar("groups", 1))
    pad_type = str(a.scalar("pad_type", "valid"))
    geometry = _deconv_geometry(pad_type, a.ints("pad", [0] * (2 * nd)), x.shape[2:],
                                w.shape[2:], strides, dilations)
    out = _CONV_TRANSPOSE[nd](x.float(), w, None, stride=strides, dilation=dilations,
                              groups=groups)
    for i, (before, size) in enumerate(geometry):
        dim = 2 + i
        have = out.shape[dim] - before
        out = out.narrow(dim, before, min(size, have))
        if size > have:  # "same" with k_eff < s: the full result is shorter than in * s
            extra = [0, 0] * (out.dim() - dim - 1) + [0, size - have]
            out = F.pad(out, extra)
    if bias is not None:
        out = out + bias.float().reshape([1, -1] + [1] * nd)
    return out


# --------------------------------------------------------------------------------------------
# resizing


def _check_upsample_bilinear(op: Operation) -> None:
    align = _const_bool(op, "align_corners", True)
    half_pixel = _const_bool(op, "half_pixel_centers", not align)
    if align and half_pixel:
        raise _refuse(op, "align_corners with half_pixel_centers (no such sampling grid)")
    dims = _static_dims(op, "x")
    for dim, name in ((-2, "scale_factor_height"), (-1, "scale_factor_width")):
        scale = float(np.asarray(_const_value(op, name, 1)))
        if not math.isfinite(scale) or scale <= 0:
            raise _refuse(op, f"{name} {scale}: must be positive")
        if align and dims is not None and _scaled(_const_value(op, name, 1), dims[dim]) == 1:
            raise _refuse(op, f"align_corners with an output size of 1 along {name}: "
                              "the spacing (in - 1) / (out - 1) is undefined")


def _scaled(scale: Any, size: int) -> int:
    """``floor(size * scale)``, multiplied in the scale's dtype as coremltools' type
    inference does (an fp32 scale in fp32)."""
    return int(np.floor(np.asarray(scale)[()] * size))


@register("upsample_bilinear", check=_check_upsample_bilinear, batch=flows("x"))
def _upsample_bilinear(a: OpArgs) -> torch.Tensor:
    """Bilinear upsampling of the last two dims to ``floor(in * scale)``, the spacing
    recomputed from the sizes (``in / out``, the docstring's ``recompute_scale_factor``):
    align_corners (default True): ``i (in-1) / (out-1)``; else half-pixel centres
    ``(i + 1/2) in / out - 1/2``; iOS16's ``half_pixel_centers=False`` without align_corners:
    ``i in / out``. Clamped to the input. Each matches Core ML's expected outputs in
    coremltools' iOS14 and iOS16 ``TestUpsampleBilinear``."""
    x = a.tensor("x")
    align = bool(a.scalar("align_corners", True))
    half_pixel = bool(a.scalar("half_pixel_centers", not align))
    mode = "STRICT_ALIGN_CORNERS" if align else "UNALIGN_CORNERS" if half_pixel else "DEFAULT"
    out_h = _scaled(a.value("scale_factor_height", 1), x.shape[-2])
    out_w = _scaled(a.value("scale_factor_width", 1), x.shape[-1])
    return _resize_linear(x, out_h, out_w, mode)


def _check_resize_bilinear(op: Operation) -> None:
    mode = _const_str(op, "sampling_mode", "DEFAULT")
    if mode not in SAMPLING_MODES:
        raise _refuse(op, f"sampling_mode {mode!r}")


@register("resize_bilinear", check=_check_resize_bilinear, batch=flows("x"))
def _resize_bilinear(a: OpArgs) -> torch.Tensor:
    """Bilinear resize of the last two dims to the target size; the grid per
    ``sampling_mode`` (:func:`_grid`), every mode's docstring example reproduced."""
    x = a.tensor("x")
    return _resize_linear(x, int(a.scalar("target_size_height", 1)),
                          int(a.scalar("target_size_width", 1)),
                          str(a.scalar("sampling_mode", "DEFAULT")))


@register("resize_nearest_neighbor", exact=True, batch=flows("x"))
def _resize_nearest_neighbor(a: OpArgs) -> torch.Tensor:
    """Output ``o`` reads input ``floor((o + 1/2) in / out)`` (half-pixel centres): the
    TensorFlow frontend converts ``ResizeNearestNeighbor(half_pixel_centers=True)`` to this op
    (its ``upsample_nearest_neighbor`` is the legacy rule) and coremltools' tests compare it
    with TensorFlow at 10 -> 25 rows; exact integer arithmetic."""
    x = a.tensor("x")
    return _half_pixel_nearest(x, int(a.scalar("target_size_height")),
                               int(a.scalar("target_size_width")))


def _check_resize(op: Operation) -> None:
    resized = int(np.asarray(_const_value(op, "resized_dims")))
    if resized != 2:
        raise _refuse(op, f"resized_dims {resized}: only 2, the op's resize_bilinear / "
                          "resize_nearest_neighbor form, has documented semantics")
    interpolation = _const_str(op, "interpolation_mode", "LINEAR")
    sampling = _const_str(op, "sampling_mode", "DEFAULT")
    if interpolation == "LINEAR":
        if sampling not in SAMPLING_MODES:
            raise _refuse(op, f"sampling_mode {sampling!r}")
        if op.inputs["x"].dtype not in (types.fp16, types.fp32):
            raise _refuse(op, "LINEAR interpolation of an integer tensor (rounding unspecified)")
    elif interpolation == "NEAREST_NEIGHBOR":
        if sampling != "DEFAULT":
            raise _refuse(op, f"NEAREST_NEIGHBOR with sampling_mode {sampling!r} "
                              "(only DEFAULT's pixel choice is established)")
    else:
        raise _refuse(op, f"interpolation_mode {interpolation!r}")
    if op.inputs["x"].rank < 2:
        raise _refuse(op, f"rank {op.inputs['x'].rank} input")


@register("resize", check=_check_resize, batch=flows("x", check=_rank_at_least(3)))
def _resize(a: OpArgs) -> torch.Tensor:
    """iOS17 ``resize`` with ``resized_dims=2``: the last two dims take the last two entries
    of ``shape`` (0 keeps the input's size). LINEAR is ``resize_bilinear`` with the same
    sampling mode; NEAREST_NEIGHBOR (DEFAULT sampling) is ``resize_nearest_neighbor``'s
    half-pixel rule (Core ML's expected output in coremltools' iOS17 ``TestResize``: 2 -> 3
    rows read 0, 1, 1, which the floor rule of ``upsample_nearest_neighbor`` would not)."""
    x = a.tensor("x")
    shape = a.ints("shape")
    sizes = [shape[-2] or x.shape[-2], shape[-1] or x.shape[-1]]
    if min(sizes) < 0:
        raise InterpreterError(f"resize {a.op.name!r}: negative target size {sizes}")
    if str(a.scalar("interpolation_mode", "LINEAR")) == "NEAREST_NEIGHBOR":
        return _half_pixel_nearest(x, *sizes)
    return _resize_linear(x, *sizes, str(a.scalar("sampling_mode", "DEFAULT")))


# --------------------------------------------------------------------------------------------
# crop and crop_resize


def _check_crop(op: Operation) -> None:
    for name in ("crop_height", "crop_width"):
        amounts = _const_ints(op, name)
        if amounts is None or len(amounts) != 2 or min(amounts) < 0:
            raise _refuse(op, f"{name} {amounts}: two non-negative amounts")


@register("crop", exact=True, check=_check_crop, batch=flows("x"))
def _crop(a: OpArgs) -> torch.Tensor:
    """Drop ``crop_height`` rows (top, bottom) and ``crop_width`` columns (left, right)."""
    x = a.tensor("x")
    top, bottom = a.ints("crop_height")
    left, right = a.ints("crop_width")
    h, w = x.shape[-2:]
    return x[..., top : h - bottom, left : w - right]


_BOX_MODES = ("CORNERS_HEIGHT_FIRST", "CORNERS_WIDTH_FIRST", "CENTER_SIZE_HEIGHT_FIRST",
              "CENTER_SIZE_WIDTH_FIRST")
_CROP_SAMPLING = ("STRICT_ALIGN_CORNERS", "ALIGN_CORNERS")


def _check_crop_resize(op: Operation) -> None:
    mode = _const_str(op, "sampling_mode", "DEFAULT")
    if mode not in _CROP_SAMPLING:
        # DEFAULT and OFFSET_CORNERS are defined on a pixel axis [0, X-1], not on a box
        # (is a box's "X" its length or length + 1?); UNALIGN_CORNERS' one Core ML datum
        # (coremltools' iOS15 TestCropResize) fits no box-based formula.
        raise _refuse(op, f"sampling_mode {mode!r}: how it samples a box is not specified "
                          "(STRICT_ALIGN_CORNERS and ALIGN_CORNERS are)")
    box_mode = _const_str(op, "box_coordinate_mode", "CORNERS_HEIGHT_FIRST")
    if box_mode not in _BOX_MODES:
        raise _refuse(op, f"box_coordinate_mode {box_mode!r}")
    for name in ("target_height", "target_width"):
        if int(np.asarray(_const_value(op, name, 1))) < 1:
            raise _refuse(op, f"{name} below 1")
    roi = op.inputs.get("roi")
    if roi is not None:
        x_dims = _static_dims(op, "x")
        if roi.rank != 5 or roi.shape[2] not in (4, 5):
            raise _refuse(op, f"roi of shape {roi.shape}")
        if roi.shape[2] == 5 and (x_dims is None or x_dims[0] != 1):
            # documented output [N, 1, C, h, w] vs type inference's [N, B, C, h, w]
            raise _refuse(op, "a 5-element roi (box index first) on a batch of several images")


def _box_grid(mode: str, start: torch.Tensor, end: torch.Tensor, n: int) -> torch.Tensor:
    """``linspace(start, end, n)`` per box (rows): the ALIGN modes applied to a box, which
    Core ML's expected outputs in coremltools' crop_resize tests confirm (box ``[1, 2]`` into
    4 points: 1, 4/3, 5/3, 2; an inverted box runs backwards). One point: STRICT takes the
    start, ALIGN the middle."""
    if n == 1:
        mid = start if mode == "STRICT_ALIGN_CORNERS" else (start + end) / 2
        return mid.unsqueeze(1)
    steps = torch.arange(n, dtype=torch.float64) / (n - 1)
    return start.unsqueeze(1) + (end - start).unsqueeze(1) * steps


@register("crop_resize", check=_check_crop_resize, batch=PER_SAMPLE)
def _crop_resize(a: OpArgs) -> torch.Tensor:
    """Bilinear crops of boxes, each resized to ``target_height x target_width``.

    Boxes (``box_coordinate_mode``; centre/size boxes span ``centre -+ size / 2``) are
    multiplied by ``spatial_scale`` and, if ``normalized_coordinates``, by ``(H-1, W-1)``;
    the grid is :func:`_box_grid`. A grid point outside ``[0, H-1] x [0, W-1]`` is
    ``pad_value`` (iOS16+; 0 before, as the TensorFlow frontend requires of
    ``CropAndResize``'s extrapolation value for iOS15): TF ``crop_and_resize``, the
    semantics Core ML's expected outputs in coremltools' iOS16/17 tests show.

    iOS15/16 ``roi [N, 1, 4|5, 1, 1]``: four coordinates crop every image (output
    ``[N, B, C, h, w]``); five put the image index first (``[N, 1, C, h, w]``). iOS17
    ``boxes [N, 4]`` with ``box_indices`` (default ``0..N-1``): output ``[N, C, h, w]``.
    """
    x = a.tensor("x")
    b, c, h, w = x.shape
    th, tw = int(a.scalar("target_height", 1)), int(a.scalar("target_width", 1))
    if a.has("boxes"):
        boxes = a.tensor("boxes").double().reshape(-1, 4)
        n = boxes.shape[0]
        index = (a.tensor("box_indices").long().reshape(-1) if a.has("box_indices")
                 else torch.arange(n))
        out_shape = [n, c, th, tw]
    else:
        roi = a.tensor("roi").double()
        n = roi.shape[0]
        flat = roi.reshape(n, -1)
        if flat.shape[1] == 5:
            if not bool((flat[:, 0] == torch.round(flat[:, 0])).all()):
                raise InterpreterError(f"crop_resize {a.op.name!r}: non-integer box index")
            index, boxes = flat[:, 0].long(), flat[:, 1:]
            out_shape = [n, 1, c, th, tw]
        else:  # every box on every image
            index = torch.arange(b).repeat(n)
            boxes = flat.repeat_interleave(b, dim=0)
            out_shape = [n, b, c, th, tw]
    if bool(((index < 0) | (index >= b)).any()):
        raise InterpreterError(f"crop_resize {a.op.name!r}: box index out of range for a "
                               f"batch of {b}")
    p, q, r, s = boxes.unbind(1)
    box_mode = str(a.scalar("box_coordinate_mode", "CORNERS_HEIGHT_FIRST"))
    if box_mode.endswith("WIDTH_FIRST"):
        p, q, r, s = q, p, s, r  # now height first
    if box_mode.startswith("CENTER_SIZE"):
        p, q, r, s = p - r / 2, q - s / 2, p + r / 2, q + s / 2
    scale = float(a.scalar("spatial_scale", 1.0))
    ys, xs = torch.stack([p, r]) * scale, torch.stack([q, s]) * scale
    if bool(a.scalar("normalized_coordinates", False)):
        ys, xs = ys * (h - 1), xs * (w - 1)
    mode = str(a.scalar("sampling_mode", "DEFAULT"))
    gy = _box_grid(mode, ys[0], ys[1], th)  # (M, th)
    gx = _box_grid(mode, xs[0], xs[1], tw)  # (M, tw)
    m = gy.shape[0]
    iy = gy.unsqueeze(2).expand(m, th, tw)
    ix = gx.unsqueeze(1).expand(m, th, tw)
    inside = ((iy >= 0) & (iy <= h - 1) & (ix >= 0) & (ix <= w - 1)).unsqueeze(1)
    out = _bilinear_at(x.index_select(0, index), iy.clamp(0, h - 1), ix.clamp(0, w - 1), None)
    out = torch.where(inside, out, torch.tensor(float(a.scalar("pad_value", 0.0))))
    return out.reshape(out_shape)


# --------------------------------------------------------------------------------------------
# resample and affine


_RESAMPLE_MODES = {
    "sampling_mode": ("bilinear", "nearest"),
    "padding_mode": ("constant", "border", "reflection", "symmetric"),
    "coordinates_mode": ("unnormalized", "normalized_minus_one_to_one",
                         "normalized_zero_to_one"),
}


def _check_resample(op: Operation) -> None:
    for name, allowed in _RESAMPLE_MODES.items():
        value = _const_str(op, name)
        if value not in allowed:
            raise _refuse(op, f"{name} {value!r}")
    _const_bool(op, "align_corners", None)


def _to_pixels(coord: torch.Tensor, size: int, mode: str, align: bool) -> torch.Tensor:
    """Normalized coordinates to pixel coordinates (pixel centres at integers). With
    align_corners the extremes are the corner pixels' centres, else their outer edges."""
    if mode == "unnormalized":
        return coord
    if mode == "normalized_minus_one_to_one":
        coord = (coord + 1) / 2
    return coord * (size - 1) if align else coord * size - 0.5


def _sample(x: torch.Tensor, iy: torch.Tensor, ix: torch.Tensor, sampling: str,
            padding: str, pad_value: float) -> torch.Tensor:
    """Sample x (B, C, H, W) at pixel coordinates (B' in {B, 1}, Ho, Wo), with padding."""
    if iy.shape[0] != x.shape[0]:  # one side is shared by every sample
        n = max(iy.shape[0], x.shape[0])
        x = x.expand(n, *x.shape[1:])
        iy, ix = iy.expand(n, *iy.shape[1:]), ix.expand(n, *ix.shape[1:])
    h, w = x.shape[-2:]
    iy, ix = _pad_coords(iy, h, padding), _pad_coords(ix, w, padding)
    pad = pad_value if padding == "constant" else None
    if sampling == "nearest":
        return _nearest_at(x, iy, ix, pad)
    return _bilinear_at(x, iy, ix, pad)


@register("resample", check=_check_resample, batch=flows("x", "coordinates"))
def _resample(a: OpArgs) -> torch.Tensor:
    """Sample ``x`` at ``coordinates[b, h, w] = (x, y)``: PyTorch's ``grid_sample`` rules
    (the torch frontend converts it to this op; ``reflection`` without align_corners becomes
    ``symmetric``), checked against Core ML's expected outputs for every mode in coremltools'
    iOS15 ``TestResample``. ``unnormalized`` coordinates are pixel indices; bilinear taps
    outside the image are ``padding_value`` under ``constant`` padding; ``nearest`` rounds
    ties to even. Coordinates of any dtype (iOS16: fp16; iOS17: 8/16-bit ints)."""
    x = a.tensor("x")
    coords = a.tensor("coordinates").double()
    h, w = x.shape[-2:]
    mode = str(a.scalar("coordinates_mode"))
    align = bool(a.scalar("align_corners"))
    ix = _to_pixels(coords[..., 0], w, mode, align)
    iy = _to_pixels(coords[..., 1], h, mode, align)
    return _sample(x, iy, ix, str(a.scalar("sampling_mode")), str(a.scalar("padding_mode")),
                   float(a.scalar("padding_value")))


def _check_affine(op: Operation) -> None:
    allowed = {"sampling_mode": "bilinear", "padding_mode": "constant",
               "coordinates_mode": "normalized_minus_one_to_one"}
    for name, only in allowed.items():
        value = _const_str(op, name)
        if value.lower() != only:
            raise _refuse(op, f"{name} {value!r} (the spec defines only {only!r})")
    pad_value = float(np.asarray(_const_value(op, "padding_value")))
    if pad_value != 0:
        raise _refuse(op, f"padding_value {pad_value} (the spec defines only 0)")
    if not _const_bool(op, "align_corners", None):
        raise _refuse(op, "align_corners False (the spec: not supported)")
    for name in ("output_height", "output_width"):
        if int(np.asarray(_const_value(op, name))) < 2:
            raise _refuse(op, f"{name} below 2: the normalized output grid "
                              "-1 + 2 i / (size - 1) is undefined")
    matrix = op.inputs["transform_matrix"]
    if matrix.rank != 2 or matrix.shape[-1] != 6:
        raise _refuse(op, f"transform_matrix of shape {matrix.shape}")


@register("affine", check=_check_affine, batch=flows("x", "transform_matrix"))
def _affine(a: OpArgs) -> torch.Tensor:
    """Output pixel ``(x, y)``, in ``[-1, 1]`` corner-pixel-centre coordinates, samples the
    input bilinearly at ``(a0 x + a1 y + a2, b0 x + b1 y + b2)``, zeros outside; one matrix
    per image or one for all (``transform_matrix [B|1, 6]``). The one mode the spec defines
    (align_corners, constant 0 padding): PyTorch's ``affine_grid`` + ``grid_sample``, and
    Core ML's expected outputs in coremltools' iOS15 ``TestAffine``."""
    x = a.tensor("x")
    h, w = x.shape[-2:]
    out_h, out_w = int(a.scalar("output_height")), int(a.scalar("output_width"))
    m = a.tensor("transform_matrix").double().reshape(-1, 6, 1, 1)
    gx = (-1 + 2 * torch.arange(out_w, dtype=torch.float64) / (out_w - 1)).reshape(1, 1, -1)
    gy = (-1 + 2 * torch.arange(out_h, dtype=torch.float64) / (out_h - 1)).reshape(1, -1, 1)
    px = m[:, 0] * gx + m[:, 1] * gy + m[:, 2]
    py = m[:, 3] * gx + m[:, 4] * gy + m[:, 5]
    ix = _to_pixels(px, w, "normalized_minus_one_to_one", True)
    iy = _to_pixels(py, h, "normalized_minus_one_to_one", True)
    return _sample(x, iy, ix, "bilinear", "constant", 0.0)


# --------------------------------------------------------------------------------------------
# depth / space rearrangements


def _block_check(param: str, dims: Callable[[list[int], int], list[tuple[str, int, int]]]
                 ) -> Callable[[Operation], None]:
    """Refuse a block below 1 or a dim the block does not divide (the ops require it)."""

    def check(op: Operation) -> None:
        block = int(np.asarray(_const_value(op, param)))
        if block < 1:
            raise _refuse(op, f"{param} {block}")
        shape = _static_dims(op, "x")
        if op.inputs["x"].rank != 4 or shape is None:
            raise _refuse(op, f"input of shape {op.inputs['x'].shape}: rank 4, static")
        for name, size, divisor in dims(shape, block):
            if size % divisor:
                raise _refuse(op, f"{name} {size} not divisible by {divisor}")

    return check


def _channels_by_square(shape: list[int], b: int) -> list[tuple[str, int, int]]:
    return [("channels", shape[1], b * b)]


def _spatial_by_block(shape: list[int], b: int) -> list[tuple[str, int, int]]:
    return [("height", shape[2], b), ("width", shape[3], b)]


@register("depth_to_space", exact=True, check=_block_check("block_size", _channels_by_square),
          batch=flows("x"))
def _depth_to_space(a: OpArgs) -> torch.Tensor:
    """``out[n, c, h b + i, w b + j] = x[n, (i b + j) C_out + c, h, w]``: TensorFlow's
    DepthToSpace ("DCR", depth outermost), which the TF frontend maps to this op (its tests
    compare with TF at C_out 4). ``pixel_shuffle`` is the other channel order."""
    x = a.tensor("x")
    n, c, h, w = x.shape
    bs = int(a.scalar("block_size"))
    out = x.reshape(n, bs, bs, c // (bs * bs), h, w).permute(0, 3, 4, 1, 5, 2)
    return out.reshape(n, c // (bs * bs), h * bs, w * bs)


@register("space_to_depth", exact=True, check=_block_check("block_size", _spatial_by_block),
          batch=flows("x"))
def _space_to_depth(a: OpArgs) -> torch.Tensor:
    """The inverse of ``depth_to_space``: ``out[n, (i b + j) C + c, h, w] =
    x[n, c, h b + i, w b + j]`` (TensorFlow's SpaceToDepth)."""
    x = a.tensor("x")
    n, c, h, w = x.shape
    bs = int(a.scalar("block_size"))
    out = x.reshape(n, c, h // bs, bs, w // bs, bs).permute(0, 3, 5, 1, 2, 4)
    return out.reshape(n, c * bs * bs, h // bs, w // bs)


@register("pixel_shuffle", exact=True,
          check=_block_check("upscale_factor", _channels_by_square), batch=flows("x"))
def _pixel_shuffle(a: OpArgs) -> torch.Tensor:
    """PyTorch's PixelShuffle ("CRD"): ``out[n, c, h f + i, w f + j] =
    x[n, c f^2 + i f + j, h, w]``."""
    x = a.tensor("x")
    n, c, h, w = x.shape
    f = int(a.scalar("upscale_factor"))
    out = x.reshape(n, c // (f * f), f, f, h, w).permute(0, 1, 4, 2, 5, 3)
    return out.reshape(n, c // (f * f), h * f, w * f)


@register("pixel_unshuffle", exact=True,
          check=_block_check("downscale_factor", _spatial_by_block), batch=flows("x"))
def _pixel_unshuffle(a: OpArgs) -> torch.Tensor:
    """PyTorch's PixelUnshuffle (iOS16), the inverse of ``pixel_shuffle``."""
    x = a.tensor("x")
    n, c, h, w = x.shape
    f = int(a.scalar("downscale_factor"))
    out = x.reshape(n, c, h // f, f, w // f, f).permute(0, 1, 3, 5, 2, 4)
    return out.reshape(n, c * f * f, h // f, w // f)


def _check_batch_space(amounts: str) -> Callable[[Operation], None]:
    def check(op: Operation) -> None:
        block = _const_ints(op, "block_shape")
        pads = _const_ints(op, amounts)
        shape = _static_dims(op, "x")
        if block is None or len(block) != 2 or min(block) < 1:
            raise _refuse(op, f"block_shape {block}")
        if pads is None or len(pads) != 4 or min(pads) < 0:
            raise _refuse(op, f"{amounts} {pads}: four non-negative amounts")
        if shape is None or len(shape) != 4:
            raise _refuse(op, f"input of shape {op.inputs['x'].shape}: rank 4, static")
        if amounts == "paddings":
            for i, name in enumerate(("height", "width")):
                padded = shape[2 + i] + pads[2 * i] + pads[2 * i + 1]
                if padded % block[i]:
                    raise _refuse(op, f"padded {name} {padded} not divisible by {block[i]}")
        elif shape[0] % (block[0] * block[1]):
            raise _refuse(op, f"batch {shape[0]} not divisible by {block[0] * block[1]}")
        elif any(pads[2 * i] + pads[2 * i + 1] > shape[2 + i] * block[i] for i in range(2)):
            raise _refuse(op, f"crops {pads} exceed the output")

    return check


@register("space_to_batch", exact=True, check=_check_batch_space("paddings"),
          batch=PER_SAMPLE)
def _space_to_batch(a: OpArgs) -> torch.Tensor:
    """TensorFlow's SpaceToBatchND on the spatial dims of NCHW: zero-pad by ``paddings``,
    then block offset ``(i, j)`` of image ``n`` goes to batch ``(i bw + j) N + n``
    (Core ML's expected output in coremltools' iOS14 ``TestSpaceToBatch``)."""
    x = a.tensor("x")
    bh, bw = a.ints("block_shape")
    pt, pb, pl, pr = a.ints("paddings")
    x = F.pad(x, [pl, pr, pt, pb])
    n, c, h, w = x.shape
    out = x.reshape(n, c, h // bh, bh, w // bw, bw).permute(3, 5, 0, 1, 2, 4)
    return out.reshape(bh * bw * n, c, h // bh, w // bw)


@register("batch_to_space", exact=True, check=_check_batch_space("crops"), batch=PER_SAMPLE)
def _batch_to_space(a: OpArgs) -> torch.Tensor:
    """The inverse of ``space_to_batch``, then ``crops`` removed (TensorFlow's
    BatchToSpaceND)."""
    x = a.tensor("x")
    bh, bw = a.ints("block_shape")
    ct, cb, cl, cr = a.ints("crops")
    nb, c, h, w = x.shape
    n = nb // (bh * bw)
    out = x.reshape(bh, bw, n, c, h, w).permute(2, 3, 4, 0, 5, 1).reshape(n, c, h * bh, w * bw)
    return out[:, :, ct : h * bh - cb, cl : w * bw - cr]


# --------------------------------------------------------------------------------------------
# sliding windows


def _check_sliding_windows(op: Operation) -> None:
    x = op.inputs["x"]
    axis = int(np.asarray(_const_value(op, "axis")))
    size = int(np.asarray(_const_value(op, "size")))
    stride = int(np.asarray(_const_value(op, "stride", 1)))
    if not -x.rank <= axis < x.rank:
        raise _refuse(op, f"axis {axis} of a rank-{x.rank} input")
    dims = _static_dims(op, "x")
    if size < 1 or stride < 1 or (dims is not None and size > dims[axis]):
        raise _refuse(op, f"size {size}, stride {stride}")


@register("sliding_windows", exact=True, check=_check_sliding_windows,
          batch=axes_avoid_batch("axis"))
def _sliding_windows(a: OpArgs) -> torch.Tensor:
    """Windows of ``size`` every ``stride`` along ``axis``: the axis becomes
    ``(d - size) // stride + 1`` windows, a new axis after it their ``size`` elements
    (``out[..., k, s, ...] = x[..., k stride + s, ...]``); any dtype (iOS17: 8/16-bit ints,
    bool)."""
    x = a.tensor("x")
    axis = int(a.scalar("axis")) % x.dim()
    windows = x.unfold(axis, int(a.scalar("size")), int(a.scalar("stride", 1)))
    return windows.movedim(-1, axis + 1)


# --------------------------------------------------------------------------------------------
# L2 pooling and normalizations


def _check_l2_pool(op: Operation) -> None:
    _check_pad_type(op)
    if op.inputs["x"].rank - 2 not in (1, 2):
        raise _refuse(op, f"{op.inputs['x'].rank - 2} spatial dims (1 or 2)")


@register("l2_pool", check=_check_l2_pool, batch=PER_SAMPLE, fast_batch=UNARY)
def _l2_pool(a: OpArgs) -> torch.Tensor:
    """``sqrt(sum of x^2 over each window)``; padding (and the ceil_mode overhang) is zeros,
    which add nothing; output sizes as ``avg_pool``'s (every pad_type, ceil_mode)."""
    x = a.tensor("x")
    kernel, strides, pads, extra = _pool_geometry(a, x)
    one_d = x.dim() == 3
    if one_d:
        x = x.unsqueeze(2)
        kernel, strides, pads, extra = [1, *kernel], [1, *strides], [(0, 0), *pads], [0, *extra]
    full = [(p0, p1 + e) for (p0, p1), e in zip(pads, extra, strict=True)]
    squares = F.pad(x * x, _torch_pad_arg(full))
    out = torch.sqrt(_sum_pool(squares, kernel, strides))
    return out.squeeze(2) if one_d else out


def _leading_batch(rank: int) -> BatchRule:
    return flows("x", check=lambda op, batched: "" if batched[0][1].rank >= rank
                 else "normalizes over the batch dim")


def _check_l2_norm(op: Operation) -> None:
    if op.inputs["x"].rank < 3:
        raise _refuse(op, f"rank {op.inputs['x'].rank} input (at least 3)")


@register("l2_norm", check=_check_l2_norm, batch=PER_SAMPLE, fast_batch=_leading_batch(4))
def _l2_norm(a: OpArgs) -> torch.Tensor:
    """``x / sqrt(sum(x^2) + epsilon)``, the sum over the last three dims, each leading
    index separately (value_inference); epsilon defaults to 1e-6."""
    x = a.tensor("x")
    eps = float(a.scalar("epsilon", 1e-6))
    squares = (x * x).sum(dim=(-3, -2, -1), keepdim=True)
    return x / torch.sqrt(squares + eps)


def _check_lrn(op: Operation) -> None:
    rank = op.inputs["x"].rank
    if rank not in (3, 4):
        raise _refuse(op, f"rank {rank} input (3 or 4)")
    size = int(np.asarray(_const_value(op, "size")))
    if size < 1:
        raise _refuse(op, f"size {size}: must be positive")


@register("local_response_norm", check=_check_lrn, batch=PER_SAMPLE,
          fast_batch=_leading_batch(4))
def _local_response_norm(a: OpArgs) -> torch.Tensor:
    """``x / (k + alpha / size * sum of x^2 over the size channels centred on x)^beta``,
    channels outside the tensor count as 0: PyTorch's ``local_response_norm``, whose window
    for an even size has ``size / 2`` channels before and ``size / 2 - 1`` after (coremltools'
    iOS14 ``test_builder_to_backend_stress`` compares Core ML with it at sizes 2, 3, 5).
    The channel axis is -3: dim 1 of a rank-4 input, dim 0 of a rank-3 one, as
    Core ML's expected outputs for a (1, 3, 2) input in coremltools' iOS14
    ``TestNormalizationLocalResponseNorm`` show (each value normalized by itself alone)."""
    x = a.tensor("x")
    size = int(a.scalar("size"))
    alpha = float(a.scalar("alpha", 1e-4))
    beta = float(a.scalar("beta", 0.75))
    k = float(a.scalar("k", 1.0))
    axis = x.dim() - 3
    squares = (x * x).movedim(axis, -1)
    padded = F.pad(squares, [size // 2, (size - 1) // 2])
    channels = squares.shape[-1]
    total = padded[..., 0:channels]
    for t in range(1, size):
        total = total + padded[..., t : t + channels]
    return x / torch.pow(k + alpha / size * total.movedim(-1, axis), beta)
