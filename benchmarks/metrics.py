"""Image-quality metrics exactly as the published restoration tables compute them.

The recipes were checked against published numbers on the benchmark data (see
``../shared/data/SOURCES.md``); change them only together with ``METRICS_VERSION``, which is part
of every cached benchmark result's key.

* PSNR: ``10·log10(255² / MSE)`` in float64, on the 0–255 scale, over all pixels and channels.
  Restored images are rounded to uint8 *before* scoring (:func:`to_uint8`), as the papers do.
* SSIM: scikit-image's ``structural_similarity`` with ``gaussian_weights=True, sigma=1.5,
  use_sample_covariance=False, data_range=255`` on float64 — the MATLAB ``ssim_index``
  convention (11×11 Gaussian window, K1 = 0.01, K2 = 0.03). Scikit-image's default settings
  give different numbers (0.8314 instead of 0.8254 on MWCNN's LIVE1 outputs). Colour images are
  scored per channel and averaged (the KAIR/FFDNet convention for colour denoising).
* Y channel: BT.601 luma as MATLAB's ``rgb2ycbcr``, float, *not* rounded (for SR; rounding costs
  ~0.02 dB). JPEG deblocking instead uses ``round(Y)`` as ground truth, which is what the
  JPEG images were made from.
* ``border``: pixels shaved off every side before scoring (4 for ×4 SR).
* Inside-hole scores for inpainting: MSE / L1 over the hole's pixels only; SSIM as the mean of
  the SSIM map over the hole (the map is computed on the whole image so the window sees context).
"""

from __future__ import annotations

import math

import numpy as np
from numpy.typing import NDArray
from skimage.metrics import structural_similarity

from training.degradations import rgb_to_y

METRICS_VERSION = "1"
PEAK = 255.0
# The MATLAB ssim_index settings; see the module docstring.
SSIM_SETTINGS = {
    "gaussian_weights": True,
    "sigma": 1.5,
    "use_sample_covariance": False,
    "data_range": PEAK,
}

# skimage averages the SSIM map without the border where its 11×11 window (Gaussian σ=1.5,
# truncated at 3.5σ) would leave the image: (win_size - 1) // 2 pixels.
SSIM_MAP_CROP = 5

Array = NDArray[np.generic]


def to_uint8(image: Array) -> NDArray[np.uint8]:
    """Round and clip a restored image to uint8 (the papers score rounded outputs)."""
    if image.dtype == np.uint8:
        return np.asarray(image)
    return np.clip(np.rint(np.asarray(image, dtype=np.float64)), 0, 255).astype(np.uint8)


def luma(image: Array) -> NDArray[np.float64]:
    """Float64 Y of an RGB image (MATLAB rgb2ycbcr, unrounded); a gray image as float64."""
    arr = np.asarray(image)
    if arr.ndim == 3 and arr.shape[2] == 3:
        return rgb_to_y(arr)
    if arr.ndim == 2:
        return arr.astype(np.float64)
    raise ValueError(f"expected H×W or H×W×3, got shape {arr.shape}")


def round_luma(image: Array) -> NDArray[np.uint8]:
    """``round(Y)`` as uint8: the JPEG-deblocking ground truth (MATLAB rounds halves up)."""
    return np.floor(luma(image) + 0.5).clip(0, 255).astype(np.uint8)


def shave(image: Array, border: int) -> Array:
    """Drop `border` pixels from each side (SR benchmarks ignore the border)."""
    if border <= 0:
        return image
    return image[border:-border, border:-border]


def _pair(reference: Array, output: Array, border: int) -> tuple[NDArray[np.float64], ...]:
    ref = np.asarray(reference, dtype=np.float64)
    out = np.asarray(output, dtype=np.float64)
    if ref.shape != out.shape:
        raise ValueError(f"shapes differ: reference {ref.shape}, output {out.shape}")
    return shave(ref, border), shave(out, border)


def psnr_from_mse(mse: float) -> float:
    return math.inf if mse == 0 else 10.0 * math.log10(PEAK * PEAK / mse)


def psnr(reference: Array, output: Array, border: int = 0) -> float:
    """PSNR in dB on the 0–255 scale over all pixels and channels, float64."""
    ref, out = _pair(reference, output, border)
    return psnr_from_mse(float(np.mean((ref - out) ** 2)))


def ssim_map(reference: Array, output: Array) -> NDArray[np.float64]:
    """The per-pixel SSIM map (H×W; colour: the mean of the per-channel maps)."""
    ref, out = _pair(reference, output, 0)
    if ref.ndim == 2:
        return structural_similarity(ref, out, full=True, **SSIM_SETTINGS)[1]
    maps = [
        structural_similarity(ref[..., c], out[..., c], full=True, **SSIM_SETTINGS)[1]
        for c in range(ref.shape[2])
    ]
    return np.mean(maps, axis=0)


def ssim(reference: Array, output: Array, border: int = 0) -> float:
    """Mean SSIM by the MATLAB recipe; colour images: mean over channels."""
    ref, out = _pair(reference, output, border)
    if ref.ndim == 2:
        return float(structural_similarity(ref, out, **SSIM_SETTINGS))
    return float(
        np.mean(
            [
                structural_similarity(ref[..., c], out[..., c], **SSIM_SETTINGS)
                for c in range(ref.shape[2])
            ]
        )
    )


def y_psnr_ssim(reference: Array, output: Array, border: int) -> tuple[float, float]:
    """PSNR and SSIM on unrounded float Y with a border shave (the SR recipe)."""
    ref_y, out_y = luma(reference), luma(output)
    return psnr(ref_y, out_y, border), ssim(ref_y, out_y, border)


def _hole_values(image: Array, mask: NDArray[np.bool_]) -> NDArray[np.float64]:
    arr = np.asarray(image, dtype=np.float64)
    if mask.shape != arr.shape[:2]:
        raise ValueError(f"mask {mask.shape} does not match image {arr.shape[:2]}")
    return arr[mask]


def l1(reference: Array, output: Array, mask: NDArray[np.bool_] | None = None) -> float:
    """Mean absolute error as a fraction of the 0–255 range (× 100 = the papers' "ℓ1 %")."""
    if mask is None:
        ref, out = _pair(reference, output, 0)
    else:
        ref, out = _hole_values(reference, mask), _hole_values(output, mask)
    return float(np.mean(np.abs(ref - out)) / PEAK)


def masked_psnr(reference: Array, output: Array, mask: NDArray[np.bool_]) -> float:
    """PSNR over the pixels where `mask` is True (every channel of them)."""
    ref, out = _hole_values(reference, mask), _hole_values(output, mask)
    if ref.size == 0:
        raise ValueError("empty mask")
    return psnr_from_mse(float(np.mean((ref - out) ** 2)))


def inpaint_scores(reference: Array, output: Array, mask: NDArray[np.bool_]) -> dict[str, float]:
    """Whole-image and inside-hole PSNR, SSIM and L1 of an inpainting result."""
    full_map = ssim_map(reference, output)
    crop = SSIM_MAP_CROP
    return {
        "psnr": psnr(reference, output),
        "ssim": float(np.mean(full_map[crop:-crop, crop:-crop])),  # = ssim(reference, output)
        "l1": l1(reference, output),
        "hole_psnr": masked_psnr(reference, output, mask),
        "hole_ssim": float(np.mean(full_map[mask])),
        "hole_l1": l1(reference, output, mask),
    }
