"""Degradations (seeded, deterministic), JPEG helpers and blind noise estimation."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image
from skimage import data as skdata

from shared.errors import UnprocessableInput
from shared.ml.noise_estimation import estimate_noise_sigma
from training.degradations import (
    add_gaussian_noise,
    jpeg_compress,
    jpeg_quality_from_qtables,
    rgb_to_y,
)


def test_gaussian_noise_is_seeded_and_has_sigma() -> None:
    img = np.full((128, 128), 128.0, dtype=np.float32)
    a = add_gaussian_noise(img, 25.0, np.random.default_rng(7), clip=False)
    b = add_gaussian_noise(img, 25.0, np.random.default_rng(7), clip=False)
    assert a.dtype == np.float32 and np.array_equal(a, b)
    assert abs(float((a - img).std()) - 25.0) < 0.5


def test_strong_noise_on_a_photo_mostly_clipped_is_still_read() -> None:
    """Dark and bright blocks under σ 50: so many pixels clip that fewer than a few hundred
    patches stay unclipped; every patch is then read, with the clipping correction."""
    y, x = np.mgrid[0:256, 0:256]
    blocks = np.where((x // 64 + y // 64) % 2 == 0, 30.0, 225.0)
    clean = np.dstack([blocks, blocks * 0.9 + 10, blocks * 0.8 + 20])
    rng = np.random.default_rng(3)
    noisy = np.clip(np.rint(clean + rng.normal(0, 50, clean.shape)), 0, 255).astype(np.uint8)
    assert estimate_noise_sigma(noisy) == pytest.approx(50.0, abs=3.0)  # read 40.5 before


def test_gaussian_noise_clip_gives_uint8_levels() -> None:
    img = np.zeros((32, 32, 3), dtype=np.float32)
    noisy = add_gaussian_noise(img, 50.0, np.random.default_rng(0), clip=True)
    assert noisy.min() >= 0 and noisy.max() <= 255
    assert np.array_equal(noisy, np.rint(noisy))
    unclipped = add_gaussian_noise(img, 50.0, np.random.default_rng(0), clip=False)
    assert unclipped.min() < 0


@pytest.mark.parametrize("shape", [(40, 56), (40, 56, 3)])
def test_jpeg_compress_gray_and_rgb(shape: tuple[int, ...]) -> None:
    img = np.random.default_rng(1).integers(0, 256, shape, dtype=np.uint8)
    out = jpeg_compress(img, 10)
    assert out.shape == img.shape and out.dtype == np.uint8
    assert np.array_equal(out, jpeg_compress(img, 10))  # deterministic
    err10 = np.abs(out.astype(int) - img).mean()
    err90 = np.abs(jpeg_compress(img, 90).astype(int) - img).mean()
    assert err90 < err10


@pytest.mark.parametrize("quality", [10, 23, 50, 90])
def test_quality_read_back_from_qtables(quality: int) -> None:
    buf = io.BytesIO()
    Image.fromarray(skdata.camera()[:64, :64]).save(buf, format="JPEG", quality=quality)
    with Image.open(io.BytesIO(buf.getvalue())) as im:
        assert jpeg_quality_from_qtables(im.quantization) == quality
    assert jpeg_quality_from_qtables(None) is None


def test_rgb_to_y_matlab_convention() -> None:
    assert rgb_to_y(np.zeros((1, 1, 3)))[0, 0] == pytest.approx(16.0)
    assert rgb_to_y(np.full((1, 1, 3), 255.0))[0, 0] == pytest.approx(235.0)


@pytest.mark.parametrize("sigma", [5.0, 10.0, 25.0, 50.0])
def test_noise_estimation_gray_photo(sigma: float) -> None:
    clean = skdata.camera()[128:384, 128:384].astype(np.float32)
    noisy = add_gaussian_noise(clean, sigma, np.random.default_rng(3), clip=False)
    assert estimate_noise_sigma(noisy) == pytest.approx(sigma, abs=max(1.0, 0.06 * sigma))


def test_noise_estimation_colour_and_clean() -> None:
    clean = skdata.astronaut()[:160, 160:320].astype(np.float32)
    noisy = add_gaussian_noise(clean, 15.0, np.random.default_rng(4), clip=False)
    assert estimate_noise_sigma(noisy) == pytest.approx(15.0, abs=1.0)
    assert estimate_noise_sigma(clean) < 2.0


def test_noise_estimation_of_a_tiny_image_is_a_user_error() -> None:
    with pytest.raises(UnprocessableInput, match=r"3x5: too small .* give sigma explicitly"):
        estimate_noise_sigma(np.zeros((5, 3), np.float32))
