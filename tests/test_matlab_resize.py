"""MATLAB-compatible bicubic imresize: properties and a hand-computed case.

(The match against the benchmark LR files needs the data set: benchmarks/check_matlab_bicubic.py.)
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from training.matlab_resize import cubic, imresize, imresize_torch, resize_matrix


def test_cubic_kernel_values() -> None:
    x = np.array([0.0, 0.25, 0.75, 1.0, 1.25, 1.75, 2.0, 2.5])
    want = [1.0, 0.8671875, 0.2265625, 0.0, -0.0703125, -0.0234375, 0.0, 0.0]
    np.testing.assert_allclose(cubic(x), want)


def test_hand_computed_upscale_by_two() -> None:
    # out(1) sits at u = 0.75: taps 0 (mirror of 1), 1, 2, 3 (mirror of 2) with cubic weights
    # c(1.75), c(0.75), c(0.25), c(1.25) -> 1 * (-0.0234375 - 0.0703125) = -0.09375.
    img = np.array([[0.0, 1.0]])
    out = imresize(img, 2)
    np.testing.assert_allclose(out, [[-0.09375, 0.203125, 0.796875, 1.09375]] * 2)


@pytest.mark.parametrize("scale", [0.25, 4])
@pytest.mark.parametrize("shape", [(12, 20), (12, 20, 3)])
def test_constant_stays_constant(scale: float, shape: tuple[int, ...]) -> None:
    img = np.full(shape, 137, dtype=np.uint8)
    out = imresize(img, scale)
    assert out.dtype == np.uint8
    assert out.shape == (int(shape[0] * scale), int(shape[1] * scale), *shape[2:])
    assert np.all(out == 137)
    np.testing.assert_allclose(imresize(img.astype(np.float64) / 255, scale), 137 / 255)


def test_output_size_rounds_up() -> None:
    assert imresize(np.zeros((10, 7)), 0.25).shape == (3, 2)
    assert imresize(np.zeros((3, 5, 3)), 4).shape == (12, 20, 3)


def test_rows_sum_to_one_and_antialias_width() -> None:
    m = resize_matrix(64, 16, 0.25)
    np.testing.assert_allclose(m.sum(axis=1), 1.0)
    # ×1/4 stretches the 4-tap kernel to a 16-pixel window (centre between two pixels).
    assert (np.abs(m[8]) > 0).sum() == 16


def test_downscale_of_smooth_image_is_close_to_area_mean() -> None:
    y, x = np.mgrid[0:64, 0:64]
    img = (128 + 60 * np.sin(x / 9.0) * np.cos(y / 11.0)).astype(np.uint8)
    lr = imresize(img, 0.25).astype(float)
    area = img.reshape(16, 4, 16, 4).mean(axis=(1, 3))
    assert np.abs(lr - area)[2:-2, 2:-2].max() < 3


def test_torch_matches_numpy_for_floats() -> None:
    rng = np.random.default_rng(0)
    img = rng.random((3, 24, 32))
    want = np.stack([imresize(c, 0.25) for c in img])
    got = imresize_torch(torch.from_numpy(img)[None], 0.25)[0].numpy()
    np.testing.assert_allclose(got, want, atol=1e-12)


def test_rejects_bad_input() -> None:
    with pytest.raises(ValueError):
        imresize(np.zeros((4, 4)), 0)
    with pytest.raises(ValueError):
        imresize(np.zeros(4), 0.5)
