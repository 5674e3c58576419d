"""ReferenceModel.predict on a dict: coremltools' MLModel.predict contract, so test code written
for the Core ML runtime runs unchanged against the interpreter."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mnv1_coreml.coreml import ct
from mnv1_coreml.mil import InterpreterError, ReferenceModel

RNG = np.random.default_rng(7)


@pytest.fixture(scope="module")
def classifier(small_packages: dict[str, Path]) -> ReferenceModel:
    return ReferenceModel.load(small_packages["fp16"])


def _photo(size: int = 128) -> np.ndarray:
    return RNG.integers(0, 256, (size, size, 3), dtype=np.uint8)


def test_classifier_dict_gives_label_and_probability_dict(classifier: ReferenceModel) -> None:
    pixels = _photo()
    got = classifier.predict({"image": Image.fromarray(pixels)})
    assert set(got) == {"classLabel", "classLabelProbs"}
    probs = got["classLabelProbs"]
    assert isinstance(got["classLabel"], str) and isinstance(probs, dict)
    assert list(probs) == classifier.class_labels
    assert all(isinstance(p, float) for p in probs.values())
    assert got["classLabel"] == max(probs, key=probs.__getitem__)
    # the same numbers as the array path, which validation uses
    arrays = classifier.predict(pixels[None])
    np.testing.assert_array_equal(
        np.array(list(probs.values()), np.float32), arrays["classLabelProbs"][0]
    )
    assert arrays["classLabel"] == [got["classLabel"]]


def test_list_of_dicts_is_a_batch(classifier: ReferenceModel) -> None:
    photos = [_photo(), _photo()]
    got = classifier.predict([{"image": Image.fromarray(p)} for p in photos])
    assert isinstance(got, list) and len(got) == 2
    for one, pixels in zip(got, photos, strict=True):
        assert one == classifier.predict({"image": Image.fromarray(pixels)})


def test_input_checks_are_coremltools_own(classifier: ReferenceModel) -> None:
    pixels = _photo()
    with pytest.raises(KeyError, match='Provided key "img"'):
        classifier.predict({"img": Image.fromarray(pixels)})
    with pytest.raises(TypeError, match="must be of type PIL.Image.Image in the input dict"):
        classifier.predict({"image": pixels})
    with pytest.raises(TypeError, match="mode=='RGB'"):
        classifier.predict({"image": Image.fromarray(pixels).convert("L")})
    with pytest.raises(InterpreterError, match="128x128.*got a 96x96 image: resize it first"):
        classifier.predict({"image": Image.fromarray(_photo(96))})
    with pytest.raises(InterpreterError, match="lacks"):
        classifier.predict({})
    with pytest.raises(InterpreterError, match="outputs= is for image arrays"):
        classifier.predict({"image": Image.fromarray(pixels)}, outputs=["classLabel"])


class _TwoHeads(torch.nn.Module):
    def forward(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.relu(x) * 2 + y, (x * y).sum(dim=1)


@pytest.mark.parametrize("output_dtype", [np.float32, np.float16])
def test_multiarray_model_takes_arrays_and_tensors(tmp_path: Path, output_dtype) -> None:
    """A foreign model (plain ct.convert, two multi-array inputs): outputs come back in the
    declared dtype and shape, from NumPy or torch inputs (fp16 inputs widened, as coremltools
    does)."""
    shape = (2, 3)
    traced = torch.jit.trace(_TwoHeads().eval(), (torch.zeros(shape), torch.zeros(shape)))
    mlmodel = ct.convert(
        traced, convert_to="mlprogram", minimum_deployment_target=ct.target.iOS16,
        inputs=[ct.TensorType(name="x", shape=shape), ct.TensorType(name="y", shape=shape)],
        outputs=[ct.TensorType(name="a", dtype=output_dtype),
                 ct.TensorType(name="b", dtype=output_dtype)],
        compute_precision=ct.precision.FLOAT32, skip_model_load=True,
    )
    path = tmp_path / "two.mlpackage"
    mlmodel.save(str(path))
    model = ReferenceModel.load(path)
    x = RNG.standard_normal(shape).astype(np.float32)
    y = RNG.standard_normal(shape).astype(np.float16)
    got = model.predict({"x": torch.from_numpy(x), "y": y})
    assert set(got) == {"a", "b"}
    assert got["a"].dtype == output_dtype and got["a"].shape == shape
    assert got["b"].dtype == output_dtype and got["b"].shape == (2,)
    yf = y.astype(np.float32)
    np.testing.assert_allclose(got["a"], (np.maximum(x, 0) * 2 + yf).astype(output_dtype),
                               rtol=1e-6)
    np.testing.assert_allclose(got["b"], (x * yf).sum(axis=1).astype(output_dtype), rtol=1e-3)


class _Double(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * 2


@pytest.mark.parametrize(("layout", "mode"), [("RGB", "RGB"), ("BGR", "RGB"), ("G", "L"),
                                              ("G_FLOAT16", "F")])
def test_image_pixels_enter_as_core_ml_feeds_them(tmp_path: Path, layout: str, mode: str) -> None:
    channels = 3 if mode == "RGB" else 1
    shape = (1, channels, 4, 6)
    color = {"RGB": ct.colorlayout.RGB, "BGR": ct.colorlayout.BGR,
             "G": ct.colorlayout.GRAYSCALE, "G_FLOAT16": ct.colorlayout.GRAYSCALE_FLOAT16}[layout]
    traced = torch.jit.trace(_Double().eval(), torch.zeros(shape))
    half = layout == "G_FLOAT16"
    mlmodel = ct.convert(
        traced, convert_to="mlprogram", minimum_deployment_target=ct.target.iOS16,
        inputs=[ct.ImageType(name="img", shape=shape, color_layout=color)],
        outputs=[ct.TensorType(name="out", dtype=np.float16 if half else np.float32)],
        compute_precision=ct.precision.FLOAT16 if half else ct.precision.FLOAT32,
        skip_model_load=True,
    )
    path = tmp_path / f"{layout}.mlpackage"
    mlmodel.save(str(path))
    model = ReferenceModel.load(path)
    if mode == "F":
        pixels = RNG.uniform(0, 1, (4, 6)).astype(np.float32)
        want = pixels.astype(np.float16).astype(np.float32)[None, None] * 2
    else:
        pixels = RNG.integers(0, 256, (4, 6, 3) if mode == "RGB" else (4, 6), dtype=np.uint8)
        want = pixels.astype(np.float32)
        want = want.transpose(2, 0, 1)[None] if mode == "RGB" else want[None, None]
        want = (want[:, ::-1] if layout == "BGR" else want) * 2
    image = Image.fromarray(pixels)
    assert image.mode == mode
    got = model.predict({"img": image})["out"]
    assert got.shape == shape
    np.testing.assert_array_equal(got.astype(np.float32), want.astype(got.dtype))
