"""What every restorer takes and gives back, and the option rules they share."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from shared.errors import UnprocessableInput
from shared.ml.noise_estimation import estimate_noise_sigma

JPEG_QUALITY_RANGE = (10, 90)  # what the artifact-removal model is trained on and the API serves
SIGMA_RANGE = (0.0, 75.0)  # what the denoising model is trained on and the API serves
SCALES: tuple[int, ...] = (4,)  # super-resolution factors served
# Without quantisation tables (a PNG of a once-JPEG image) we assume a typical web quality.
DEFAULT_QUALITY_WITHOUT_TABLES = 50


def _no_progress(_fraction: float) -> None:
    return None


def _never() -> bool:
    return False


@dataclass(frozen=True)
class RestoreJob:
    """One restoration: pixels and the user's options, nothing about queues or stores."""

    pixels: np.ndarray  # uint8 H×W or H×W×3
    mask: np.ndarray | None = None  # bool H×W, True = fill (inpaint)
    sigma: float | None = None  # denoise: noise level on the 0–255 scale; None = estimate
    quality: int | None = None  # artifacts: the JPEG quality; None = assume a web quality
    scale: int = 4  # superres
    strength: float = 0.0  # superres: 0 = faithful network, 1 = GAN network
    iterations: int | None = None  # Deep Image Prior
    ensemble: bool = False  # average the network over 8 flips/rotations
    on_progress: Callable[[float], None] = _no_progress
    should_cancel: Callable[[], bool] = _never


@dataclass(frozen=True)
class Restored:
    """The restored pixels and what the job record should say about how they were made."""

    pixels: np.ndarray
    details: dict[str, Any] = field(default_factory=dict)


def resolve_sigma(image: np.ndarray, sigma: float | None) -> float:
    """The noise level to remove: the user's, or estimated from the image ("auto")."""
    value = estimate_noise_sigma(image) if sigma is None else float(sigma)
    return float(np.clip(value, *SIGMA_RANGE))


def resolve_quality(quality: int | None) -> int:
    value = DEFAULT_QUALITY_WITHOUT_TABLES if quality is None else int(quality)
    return int(np.clip(value, *JPEG_QUALITY_RANGE))


def require_mask(job: RestoreJob) -> np.ndarray:
    """The job's mask, checked against the image: inpainting needs something to fill."""
    mask = job.mask
    if mask is None:
        raise UnprocessableInput("inpaint needs a mask")
    if mask.shape != job.pixels.shape[:2]:
        raise UnprocessableInput(f"mask {mask.shape} does not match image {job.pixels.shape[:2]}")
    if not mask.any():
        raise UnprocessableInput("the mask is empty: paint the region to fill in white")
    return mask


def require_scale(scale: int) -> None:
    if scale not in SCALES:
        raise UnprocessableInput(f"only {SCALES[0]}x super-resolution is served, not {scale}x")
