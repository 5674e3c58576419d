"""Image and spatial kernels (ops_image), on MIL programs built directly, at fp32 and fp16:
against PyTorch's own op where it defines the same thing (conv_transpose, bilinear resizing,
pixel shuffles, L2 pooling, local response norm), against NumPy formulas (TensorFlow's
depth_to_space / space_to_batch layouts, crops, sliding windows), and against Core ML's
expected outputs copied from coremltools' op tests where only those settle a rule. fp16 runs
compare with the fp32 reference on the same fp16 inputs, rounded once to fp16: data movement
exactly, arithmetic within one fp16 step (a kernel computing in fp32, rounded once)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mnv1_coreml.mil import ReferenceModel, UnsupportedOpError
from mnv1_coreml.mil.loader import ct

mb = ct.converters.mil.Builder
types = ct.converters.mil.mil.types
IOS15, IOS16, IOS17 = ct.target.iOS15, ct.target.iOS16, ct.target.iOS17
RNG = np.random.default_rng(2024)
DTYPES = {"fp32": (np.float32, types.fp32), "fp16": (np.float16, types.fp16)}


def _input(shape: tuple[int, ...], dtype: str, scale: float = 1.0) -> np.ndarray:
    return (RNG.standard_normal(shape) * scale).astype(DTYPES[dtype][0])


def _run_op(build, x: np.ndarray, target=IOS15) -> np.ndarray:
    """Run ``build(x_var)`` as a one-input program; the output, in the program's dtype."""
    dtype = types.fp16 if x.dtype == np.float16 else types.fp32

    @mb.program(input_specs=[mb.TensorSpec(shape=x.shape, dtype=dtype)], opset_version=target)
    def prog(x_in):
        return build(x_in)

    (out,) = ReferenceModel.from_program(prog).run({"x_in": x}).values()
    return out


def _expect(out: np.ndarray, want: np.ndarray, exact: bool) -> None:
    """fp32: ``want`` to float32 rounding (exactly if ``exact``); fp16: within one fp16 step
    of the fp32 reference (exactly if ``exact``)."""
    assert out.shape == want.shape, (out.shape, want.shape)
    want = np.asarray(want, np.float64)
    if exact:
        np.testing.assert_array_equal(out.astype(np.float64), want.astype(out.dtype))
        return
    if out.dtype == np.float16:
        step = np.spacing(np.abs(want).astype(np.float16)).astype(np.float64)
        assert np.all(np.abs(out.astype(np.float64) - want) <= step + 1e-7), \
            np.max(np.abs(out - want) / step)
    else:
        np.testing.assert_allclose(out, want, rtol=2e-6, atol=2e-6)


def _param(value: float, dtype: str) -> np.floating:
    """A float parameter in the input's dtype (coremltools requires it); the references use
    this stored value."""
    return DTYPES[dtype][0](value)


def _torch(x: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(x.astype(np.float32))


# --------------------------------------------------------------------------------------------
# conv_transpose


@pytest.mark.parametrize("dtype", sorted(DTYPES))
@pytest.mark.parametrize("strides, pad, dilations, groups", [
    ([1, 1], [0, 0, 0, 0], [1, 1], 1),
    ([2, 2], [1, 1, 1, 1], [1, 1], 1),
    ([2, 3], [0, 1, 2, 0], [1, 2], 2),
    ([3, 1], [1, 0, 0, 1], [2, 1], 4),
])
def test_conv_transpose_custom_pad_matches_torch(dtype, strides, pad, dilations, groups):
    x = _input((1, 4, 5, 6), dtype)
    w = _input((4, 6 // groups * 1, 3, 3), dtype, 0.5)  # [C_in, C_out / groups, kH, kW]
    b = _input((6 // groups * groups,), dtype)
    out = _run_op(lambda v: mb.conv_transpose(x=v, weight=w, bias=b, pad_type="custom", pad=pad,
                                              strides=strides, dilations=dilations,
                                              groups=groups), x)
    full = F.conv_transpose2d(_torch(x), _torch(w), _torch(b), stride=strides,
                              dilation=dilations, groups=groups)
    h, wd = full.shape[2:]
    want = full[:, :, pad[0] : h - pad[1], pad[2] : wd - pad[3]].numpy()
    if dtype == "fp32":
        np.testing.assert_allclose(out, want, rtol=1e-5, atol=1e-5)
    else:  # fp16 weights and inputs, fp32 accumulation, one rounding
        np.testing.assert_allclose(out.astype(np.float32), want, rtol=2e-3, atol=2e-3)


@pytest.mark.parametrize("pad_type", ["valid", "same"])
def test_conv_transpose_output_sizes(pad_type):
    """valid: ``(in - 1) s + k_eff``; same: ``in * s`` (coremltools' type inference)."""
    x = _input((1, 2, 4, 5), "fp32")
    w = _input((2, 3, 3, 2), "fp32")
    out = _run_op(lambda v: mb.conv_transpose(x=v, weight=w, pad_type=pad_type,
                                              strides=[2, 3]), x)
    assert out.shape == ((1, 3, 9, 14) if pad_type == "valid" else (1, 3, 8, 15))
    full = F.conv_transpose2d(_torch(x), _torch(w), stride=[2, 3]).numpy()
    if pad_type == "valid":
        np.testing.assert_allclose(out, full, rtol=1e-5, atol=1e-5)


# --------------------------------------------------------------------------------------------
# resizing


@pytest.mark.parametrize("dtype", sorted(DTYPES))
@pytest.mark.parametrize("align", [True, False])
def test_upsample_bilinear_matches_torch(dtype, align):
    x = _input((1, 3, 4, 5), dtype)
    out = _run_op(lambda v: mb.upsample_bilinear(x=v, scale_factor_height=2,
                                                 scale_factor_width=3, align_corners=align), x)
    want = F.interpolate(_torch(x).double(), scale_factor=(2, 3), mode="bilinear",
                         align_corners=align).numpy()
    _expect(out, want, exact=False)


@pytest.mark.parametrize("dtype", sorted(DTYPES))
@pytest.mark.parametrize("mode, align", [("STRICT_ALIGN_CORNERS", True),
                                         ("UNALIGN_CORNERS", False)])
def test_resize_bilinear_matches_torch(dtype, mode, align):
    x = _input((2, 3, 6, 4), dtype)
    out = _run_op(lambda v: mb.resize_bilinear(x=v, target_size_height=4, target_size_width=7,
                                               sampling_mode=mode), x)
    want = F.interpolate(_torch(x).double(), size=(4, 7), mode="bilinear",
                         align_corners=align).numpy()
    _expect(out, want, exact=False)


def test_resize_bilinear_default_mode_docstring_example():
    """coremltools' resize_bilinear docstring: DEFAULT samples ``i * in / out``: 2 -> 4
    gives positions 0, 0.5, 1, 1.5 (clamped to the last pixel)."""
    x = np.array([[[[0.0, 10.0]]]], np.float32)
    out = _run_op(lambda v: mb.resize_bilinear(x=v, target_size_height=1, target_size_width=4,
                                               sampling_mode="DEFAULT"), x)
    np.testing.assert_array_equal(out, [[[[0.0, 5.0, 10.0, 10.0]]]])


@pytest.mark.parametrize("dtype", sorted(DTYPES))
def test_resize_nearest_neighbor_half_pixel(dtype):
    x = _input((1, 2, 3, 4), dtype)
    out = _run_op(lambda v: mb.resize_nearest_neighbor(x=v, target_size_height=7,
                                                       target_size_width=3), x)
    rows = np.floor((np.arange(7) + 0.5) * 3 / 7).astype(int)
    cols = np.floor((np.arange(3) + 0.5) * 4 / 3).astype(int)
    _expect(out, x[:, :, rows][:, :, :, cols], exact=True)


def test_resize_nearest_iOS17_core_ml_rows():
    """Core ML's expected output in coremltools' iOS17 TestResize: 2 -> 3 rows read 0, 1, 1."""
    x = np.array([[[[1.0], [2.0]]]], np.float32)
    out = _run_op(lambda v: mb.resize(x=v, shape=[3, 1], resized_dims=np.uint32(2),
                                      interpolation_mode="NEAREST_NEIGHBOR"), x, IOS17)
    np.testing.assert_array_equal(out.reshape(-1), [1.0, 2.0, 2.0])


@pytest.mark.parametrize("dtype", sorted(DTYPES))
def test_crop(dtype):
    x = _input((1, 2, 6, 7), dtype)
    out = _run_op(lambda v: mb.crop(x=v, crop_height=[1, 2], crop_width=[0, 3]), x)
    _expect(out, x[:, :, 1:4, 0:4], exact=True)


def test_resize_refuses_unspecified_modes():
    @mb.program(input_specs=[mb.TensorSpec(shape=(1, 1, 2, 2))], opset_version=IOS17)
    def prog(x):
        return mb.resize(x=x, shape=[1, 4, 4], resized_dims=np.uint32(3))

    with pytest.raises(UnsupportedOpError, match="resized_dims 3"):
        ReferenceModel.from_program(prog)


# --------------------------------------------------------------------------------------------
# depth / space rearrangements


def _depth_to_space_dcr(x: np.ndarray, bs: int) -> np.ndarray:
    """TensorFlow's depth_to_space: channel ``(i bs + j) C_out + c`` -> pixel (i, j)."""
    n, c, h, w = x.shape
    y = x.reshape(n, bs, bs, c // bs**2, h, w).transpose(0, 3, 4, 1, 5, 2)
    return y.reshape(n, c // bs**2, h * bs, w * bs)


@pytest.mark.parametrize("dtype", sorted(DTYPES))
def test_depth_space_round_trip(dtype):
    x = _input((2, 8, 3, 5), dtype)
    out = _run_op(lambda v: mb.depth_to_space(x=v, block_size=2), x)
    _expect(out, _depth_to_space_dcr(x, 2), exact=True)
    back = _run_op(lambda v: mb.space_to_depth(x=v, block_size=2), out)
    _expect(back, x, exact=True)


@pytest.mark.parametrize("dtype", sorted(DTYPES))
def test_pixel_shuffle_and_unshuffle_match_torch(dtype):
    x = _input((1, 18, 2, 4), dtype)
    out = _run_op(lambda v: mb.pixel_shuffle(x=v, upscale_factor=3), x)
    _expect(out, F.pixel_shuffle(_torch(x), 3).numpy(), exact=True)
    back = _run_op(lambda v: mb.pixel_unshuffle(x=v, downscale_factor=np.uint32(3)), out, IOS16)
    _expect(back, x, exact=True)


@pytest.mark.parametrize("dtype", sorted(DTYPES))
def test_space_to_batch_matches_tensorflow_layout(dtype):
    """``tf.space_to_batch_nd`` with NCHW: batch index ``(i bh + j) N + n`` holds pixels
    ``(h bh + i, w bw + j)`` of the zero-padded image."""
    x = _input((2, 3, 4, 3), dtype)
    paddings = [[0, 2], [1, 2]]
    out = _run_op(lambda v: mb.space_to_batch(x=v, block_shape=[3, 2], paddings=paddings), x)
    padded = np.pad(x, [(0, 0), (0, 0), (0, 2), (1, 2)])
    n, c, hp, wp = padded.shape
    want = padded.reshape(n, c, hp // 3, 3, wp // 2, 2).transpose(3, 5, 0, 1, 2, 4)
    _expect(out, want.reshape(3 * 2 * n, c, hp // 3, wp // 2), exact=True)
    back = _run_op(lambda v: mb.batch_to_space(x=v, block_shape=[3, 2], crops=paddings), out)
    _expect(back, x, exact=True)


@pytest.mark.parametrize("dtype", sorted(DTYPES))
def test_sliding_windows(dtype):
    x = _input((2, 9, 3), dtype)
    out = _run_op(lambda v: mb.sliding_windows(x=v, axis=1, size=4, stride=2), x)
    want = np.stack([x[:, k * 2 : k * 2 + 4] for k in range(3)], axis=1)
    _expect(out, want, exact=True)


# --------------------------------------------------------------------------------------------
# L2 pooling and normalizations


@pytest.mark.parametrize("dtype", sorted(DTYPES))
def test_l2_pool_matches_torch_lp_pool(dtype):
    x = _input((1, 3, 6, 7), dtype)
    out = _run_op(lambda v: mb.l2_pool(x=v, kernel_sizes=[2, 3], strides=[2, 2],
                                       pad_type="valid"), x)
    want = F.lp_pool2d(_torch(x).double(), 2, [2, 3], [2, 2]).numpy()
    _expect(out, want, exact=False)


@pytest.mark.parametrize("dtype", sorted(DTYPES))
def test_l2_norm_over_last_three_dims(dtype):
    x = _input((2, 3, 4, 5), dtype)
    eps = _param(1e-3, dtype)
    out = _run_op(lambda v: mb.l2_norm(x=v, epsilon=eps), x)
    x64 = x.astype(np.float64)
    want = x64 / np.sqrt((x64**2).sum(axis=(1, 2, 3), keepdims=True) + float(eps))
    _expect(out, want, exact=False)


@pytest.mark.parametrize("dtype", sorted(DTYPES))
@pytest.mark.parametrize("size", [1, 2, 3, 4, 5])
def test_local_response_norm_matches_torch(dtype, size):
    x = _input((1, 6, 3, 4), dtype, 2.0)
    alpha, beta, k = (_param(v, dtype) for v in (0.3, 0.6, 1.5))
    out = _run_op(lambda v: mb.local_response_norm(x=v, size=size, alpha=alpha, beta=beta, k=k),
                  x)
    want = F.local_response_norm(_torch(x).double(), size, alpha=float(alpha), beta=float(beta),
                                 k=float(k)).numpy()
    _expect(out, want, exact=False)
