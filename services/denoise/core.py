"""The denoise service's pure functions: arrays in, arrays out, no queues or stores."""

from __future__ import annotations

import numpy as np

from services.denoise.classic import nlm_deblock, nlm_denoise
from shared.catalog import JPEG_QUALITY_RANGE, SIGMA_RANGE
from shared.errors import UnprocessableInput
from shared.noise_estimation import estimate_noise_sigma

# Without quantisation tables (a PNG of a once-JPEG image) we assume a typical web quality.
DEFAULT_QUALITY_WITHOUT_TABLES = 50


def resolve_sigma(image: np.ndarray, sigma: float | None) -> float:
    """The noise level to remove: the user's, or estimated from the image ("auto")."""
    value = estimate_noise_sigma(image) if sigma is None else float(sigma)
    return float(np.clip(value, *SIGMA_RANGE))


def resolve_quality(quality: int | None) -> int:
    value = DEFAULT_QUALITY_WITHOUT_TABLES if quality is None else int(quality)
    return int(np.clip(value, *JPEG_QUALITY_RANGE))


def denoise(image: np.ndarray, sigma: float | None = None, model: str = "classic") -> np.ndarray:
    level = resolve_sigma(image, sigma)
    if model == "classic":
        return nlm_denoise(image, level)
    raise UnprocessableInput(f"denoise has no model {model!r}")


def remove_artifacts(
    image: np.ndarray, quality: int | None = None, model: str = "classic"
) -> np.ndarray:
    level = resolve_quality(quality)
    if model == "classic":
        return nlm_deblock(image, level)
    raise UnprocessableInput(f"artifacts has no model {model!r}")
