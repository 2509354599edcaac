"""Realistic low-resolution inputs for the ESRGAN GAN stage: blur, ×4 MATLAB-bicubic downscale,
noise, JPEG.

Order (as in BSRGAN / Real-ESRGAN, simplified to one pass): the camera's optical blur acts on
the scene, so it is applied to the HR crop *before* the ×4 downscale; sensor noise and JPEG
compression act on the pixels the phone actually stores, i.e. the LR image, so they come
*after* it. Applied before the downscale, noise and JPEG blocks would be averaged away by the
16-tap antialiasing filter and the network would never see them. A share of samples stays
clean (plain bicubic), so the GAN model keeps working on benchmark-style inputs.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray
from scipy.ndimage import gaussian_filter

from training.degradations import jpeg_compress
from training.matlab_resize import imresize


@dataclass(frozen=True)
class DegradationConfig:
    scale: int = 4
    p_clean: float = 0.3  # share of samples left as plain bicubic
    p_blur: float = 0.6
    blur_sigma: tuple[float, float] = (0.3, 2.4)  # in HR pixels
    p_noise: float = 0.5
    noise_sigma: tuple[float, float] = (1.0, 12.0)  # grey levels on the LR image
    p_gray_noise: float = 0.3  # luminance-only noise, as many phone pipelines leave
    p_jpeg: float = 0.6
    jpeg_quality: tuple[int, int] = (35, 95)


def gaussian_blur(img: NDArray[np.float64], sigma: float) -> NDArray[np.float64]:
    """Isotropic Gaussian blur of an H×W×C float image, edges mirrored."""
    return gaussian_filter(img, sigma=(sigma, sigma, 0), mode="mirror", truncate=3.0)


def add_noise(
    img: NDArray[np.float64], sigma: float, gray: bool, rng: np.random.Generator
) -> NDArray[np.float64]:
    shape = (*img.shape[:2], 1) if gray else img.shape
    return img + rng.normal(0.0, sigma, size=shape)


def degrade(
    hr: NDArray[np.uint8], rng: np.random.Generator, cfg: DegradationConfig | None = None
) -> NDArray[np.uint8]:
    """A realistic LR image (uint8, H/scale × W/scale) for an HR crop (uint8 H×W×3)."""
    cfg = cfg or DegradationConfig()
    if rng.random() < cfg.p_clean:
        return imresize(hr, 1 / cfg.scale)
    img = hr.astype(np.float64)
    if rng.random() < cfg.p_blur:
        img = gaussian_blur(img, rng.uniform(*cfg.blur_sigma))
    img = imresize(img, 1 / cfg.scale)
    if rng.random() < cfg.p_noise:
        gray = rng.random() < cfg.p_gray_noise
        img = add_noise(img, rng.uniform(*cfg.noise_sigma), gray, rng)
    lr = np.floor(np.clip(img, 0, 255) + 0.5).astype(np.uint8)
    if rng.random() < cfg.p_jpeg:
        lr = jpeg_compress(lr, int(rng.integers(cfg.jpeg_quality[0], cfg.jpeg_quality[1] + 1)))
    return lr
