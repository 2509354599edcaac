"""Seeded masks (free-form strokes and rectangles; contour bands): deterministic, in band."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from training.masks import COVERAGE_BANDS, contour_mask, coverage, free_form_mask, random_mask


@pytest.mark.parametrize("band", sorted(COVERAGE_BANDS))
def test_every_band_is_deterministic_and_within_band(band: str) -> None:
    low, high = COVERAGE_BANDS[band]
    for seed in range(6):
        for height, width in ((64, 64), (96, 160)):
            first = free_form_mask(height, width, band, seed)
            again = free_form_mask(height, width, band, seed)
            assert first.dtype == bool and first.shape == (height, width)
            assert np.array_equal(first, again)
            assert low <= coverage(first) < high


def test_different_seeds_give_different_masks() -> None:
    masks = [free_form_mask(64, 64, "20-30", seed) for seed in range(4)]
    assert len({m.tobytes() for m in masks}) == 4


def test_tiny_image_still_lands_in_band() -> None:
    mask = free_form_mask(8, 8, "30-40", 3)
    assert 0.3 <= coverage(mask) < 0.4


def test_random_mask_follows_the_generator() -> None:
    a = random_mask(48, 48, np.random.default_rng(5))
    b = random_mask(48, 48, np.random.default_rng(5))
    assert np.array_equal(a, b) and a.any()


def test_bad_band_is_rejected() -> None:
    with pytest.raises(ValueError):
        free_form_mask(32, 32, (0.5, 0.2), 0)


@pytest.mark.parametrize("band", sorted(COVERAGE_BANDS))
def test_contour_masks_are_deterministic_and_within_band(band: str) -> None:
    low, high = COVERAGE_BANDS[band]
    for seed in range(4):
        for height, width in ((64, 64), (96, 160)):
            first = contour_mask(height, width, band, seed)
            assert first.dtype == bool and first.shape == (height, width)
            assert np.array_equal(first, contour_mask(height, width, band, seed))
            assert low <= coverage(first) < high


def _mean_distance_to_known(mask: np.ndarray) -> float:
    distance = cv2.distanceTransform(mask.astype(np.uint8), cv2.DIST_L2, 5)
    return float(distance[mask].mean())


def test_contour_holes_are_thinner_than_strokes_and_rectangles() -> None:
    """What they are for: at the same coverage, hole pixels lie nearer to known pixels."""
    contour = [_mean_distance_to_known(contour_mask(256, 256, "20-30", s)) for s in range(8)]
    free = [_mean_distance_to_known(free_form_mask(256, 256, "20-30", s)) for s in range(8)]
    assert np.median(contour) < 0.75 * np.median(free)


def test_random_mask_mixes_styles_and_keeps_old_draws_without_contours() -> None:
    old, new = np.random.default_rng(1), np.random.default_rng(1)
    for _ in range(5):  # share 0: the same masks as before the contour style existed
        band = ("20-30",)[int(old.integers(1))]
        expected = free_form_mask(64, 64, band, old)
        assert np.array_equal(random_mask(64, 64, new, ("20-30",)), expected)
    rng, replay = np.random.default_rng(2), np.random.default_rng(2)
    mask = random_mask(64, 64, rng, ("20-30",), contour_share=1.0)
    replay.integers(1), replay.random()  # the band, then the style
    assert np.array_equal(mask, contour_mask(64, 64, "20-30", replay))


def test_contour_shapes_follow_the_side_they_are_proportioned_to() -> None:
    """A 256 crop with shapes for 512 px gets the wider holes of a 512 image, still in band."""
    own = [contour_mask(128, 128, "20-30", s) for s in range(6)]
    larger = [contour_mask(128, 128, "20-30", s, shape_side=256) for s in range(6)]
    assert all(0.2 <= coverage(m) < 0.3 for m in larger)
    assert np.median([_mean_distance_to_known(m) for m in larger]) > 1.3 * np.median(
        [_mean_distance_to_known(m) for m in own])
