"""The denoise service's pure functions: arrays in, arrays out, no queues or stores."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from services.denoise.classic import nlm_deblock, nlm_denoise
from services.denoise.networks import mwcnn_deblock, mwcnn_denoise
from shared.errors import UnprocessableInput
from shared.ml.catalog import JPEG_QUALITY_RANGE, SIGMA_RANGE, require_ensemble_offered
from shared.ml.noise_estimation import estimate_noise_sigma

# Without quantisation tables (a PNG of a once-JPEG image) we assume a typical web quality.
DEFAULT_QUALITY_WITHOUT_TABLES = 50

Progress = Callable[[float], None] | None
Cancel = Callable[[], bool] | None


def resolve_sigma(image: np.ndarray, sigma: float | None) -> float:
    """The noise level to remove: the user's, or estimated from the image ("auto")."""
    value = estimate_noise_sigma(image) if sigma is None else float(sigma)
    return float(np.clip(value, *SIGMA_RANGE))


def resolve_quality(quality: int | None) -> int:
    value = DEFAULT_QUALITY_WITHOUT_TABLES if quality is None else int(quality)
    return int(np.clip(value, *JPEG_QUALITY_RANGE))


def denoise(
    image: np.ndarray,
    sigma: float | None = None,
    model: str = "mwcnn",
    *,
    on_progress: Progress = None,
    should_cancel: Cancel = None,
    ensemble: bool = False,
) -> np.ndarray:
    """Remove Gaussian-like noise of level `sigma` (0–255 scale; None = estimate).

    `ensemble` (MWCNN only) averages the network over 8 flips/rotations.
    """
    level = resolve_sigma(image, sigma)
    if model == "mwcnn":
        return mwcnn_denoise(
            image, level, on_progress=on_progress, should_cancel=should_cancel, ensemble=ensemble
        )[0]
    require_ensemble_offered("denoise", model, ensemble)
    if model == "classic":
        return nlm_denoise(image, level)
    raise UnprocessableInput(f"denoise has no model {model!r}")


def remove_artifacts(
    image: np.ndarray,
    quality: int | None = None,
    model: str = "mwcnn",
    *,
    on_progress: Progress = None,
    should_cancel: Cancel = None,
    ensemble: bool = False,
) -> np.ndarray:
    """Remove JPEG blocking/ringing of an image saved at `quality` (None = assume 50)."""
    level = resolve_quality(quality)
    if model == "mwcnn":
        return mwcnn_deblock(
            image, level, on_progress=on_progress, should_cancel=should_cancel, ensemble=ensemble
        )[0]
    require_ensemble_offered("artifacts", model, ensemble)
    if model == "classic":
        return nlm_deblock(image, level)
    raise UnprocessableInput(f"artifacts has no model {model!r}")
