"""The `classic` restorers: non-local means (denoise, JPEG), bicubic (superres), Telea (inpaint).

They need no weights and no torch: the baselines the networks are measured against, and what a
machine without weights still serves.
"""

from __future__ import annotations

import cv2
import numpy as np
from PIL import Image

from shared.ml.imaging import composite_masked
from shared.ml.inpaint_window import telea_fill
from shared.ml.restorers.common import (
    Restored,
    RestoreJob,
    require_mask,
    require_scale,
    resolve_quality,
    resolve_sigma,
)

# cv2's filter strength `h` per unit of noise sigma; chosen on synthetic noise (see
# benchmarks/quality.py) as a good compromise between residual noise and lost detail.
_H_PER_SIGMA = 0.9
# NLM search/patch windows: OpenCV's recommended values.
_TEMPLATE, _SEARCH = 7, 21


def nlm_denoise(image: np.ndarray, sigma: float) -> np.ndarray:
    """Non-local means at a strength matched to the noise level (0–255 scale)."""
    if sigma <= 0:
        return image.copy()
    h = float(_H_PER_SIGMA * sigma)
    if image.ndim == 2:
        return cv2.fastNlMeansDenoising(image, None, h, _TEMPLATE, _SEARCH)
    bgr = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
    out = cv2.fastNlMeansDenoisingColored(bgr, None, h, h, _TEMPLATE, _SEARCH)
    return cv2.cvtColor(out, cv2.COLOR_BGR2RGB)


def jpeg_equivalent_sigma(quality: int) -> float:
    """A noise level that makes NLM smooth JPEG blocking about as much as it needs.

    JPEG error grows roughly as 1/quality at low qualities; the constants fit the RMS error
    of Pillow JPEG on natural images (≈ 8 at Q10, ≈ 3 at Q50, ≈ 1.5 at Q90).
    """
    q = float(np.clip(quality, 1, 100))
    return 1.0 + 70.0 / q


def nlm_deblock(image: np.ndarray, quality: int) -> np.ndarray:
    return nlm_denoise(image, jpeg_equivalent_sigma(quality))


def bicubic_upscale(image: np.ndarray, scale: int) -> np.ndarray:
    height, width = image.shape[:2]
    size = (width * scale, height * scale)
    return np.asarray(Image.fromarray(image).resize(size, Image.Resampling.BICUBIC))


# --------------------------------------------------------------------------- restorers


def denoise(_runtime: object, job: RestoreJob) -> Restored:
    sigma = resolve_sigma(job.pixels, job.sigma)
    return Restored(nlm_denoise(job.pixels, sigma), {"sigma": round(sigma, 2)})


def deblock(_runtime: object, job: RestoreJob) -> Restored:
    quality = resolve_quality(job.quality)
    return Restored(nlm_deblock(job.pixels, quality), {"quality": quality})


def upscale(_runtime: object, job: RestoreJob) -> Restored:
    require_scale(job.scale)
    return Restored(bicubic_upscale(job.pixels, job.scale), {"scale": job.scale})


def inpaint(_runtime: object, job: RestoreJob) -> Restored:
    mask = require_mask(job)
    return Restored(composite_masked(job.pixels, telea_fill(job.pixels, mask), mask))
