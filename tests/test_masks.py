"""Seeded free-form masks: deterministic and inside their coverage band."""

from __future__ import annotations

import numpy as np
import pytest

from shared.masks import COVERAGE_BANDS, coverage, free_form_mask, random_mask


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
