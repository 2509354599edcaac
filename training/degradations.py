"""Synthetic degradations for training and benchmarks (pure numpy + Pillow).

Conventions: images are numpy arrays, (H, W) gray or (H, W, 3) RGB, on the 0–255 scale.
``sigma`` is the Gaussian noise std on that scale. Every random draw comes from the
``numpy.random.Generator`` passed in, so a seeded generator gives identical results.
"""

from __future__ import annotations

import functools
import io

import numpy as np
from PIL import Image


def add_gaussian_noise(
    img_float: np.ndarray, sigma: float, rng: np.random.Generator, clip: bool
) -> np.ndarray:
    """``img + N(0, sigma²)`` per pixel and channel, as float32 on the 0–255 scale.

    ``clip=False`` is the papers' convention (float, unclipped, unquantised noisy input).
    ``clip=True`` models what a user uploads: clipped to [0, 255] and rounded to integers
    (the result is still float32, holding integer values).
    """
    img = np.asarray(img_float, dtype=np.float32)
    noisy = img + rng.standard_normal(img.shape, dtype=np.float32) * np.float32(sigma)
    if clip:
        noisy = np.clip(np.rint(noisy), 0.0, 255.0)
    return noisy.astype(np.float32, copy=False)


def _check_uint8_image(img: np.ndarray) -> None:
    if img.dtype != np.uint8:
        raise TypeError(f"expected uint8 image, got {img.dtype}")
    if img.ndim not in (2, 3) or (img.ndim == 3 and img.shape[2] not in (1, 3)):
        raise ValueError(f"expected (H, W) or (H, W, 3) image, got shape {img.shape}")


def jpeg_encode(img_uint8: np.ndarray, quality: int) -> bytes:
    """Pillow baseline JPEG bytes at ``quality`` (Pillow's defaults: 4:2:0 chroma for RGB)."""
    _check_uint8_image(img_uint8)
    arr = img_uint8[..., 0] if img_uint8.ndim == 3 and img_uint8.shape[2] == 1 else img_uint8
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=int(quality))
    return buf.getvalue()


def jpeg_compress(img_uint8: np.ndarray, quality: int) -> np.ndarray:
    """Round-trip through Pillow JPEG at ``quality``; same shape and dtype (uint8) as the input.

    Pillow's encoder is the IJG one; on gray images it is bit-identical to MATLAB's ``imwrite``
    at the same quality (checked on Classic5), which is how the published tables were made.
    """
    decoded = np.asarray(Image.open(io.BytesIO(jpeg_encode(img_uint8, quality))))
    return decoded.reshape(img_uint8.shape)


def rgb_to_y(img: np.ndarray) -> np.ndarray:
    """BT.601 luma as MATLAB's rgb2ycbcr computes it, float64, not rounded (16–235 range)."""
    rgb = np.asarray(img, dtype=np.float64)
    return 16.0 + (65.481 * rgb[..., 0] + 128.553 * rgb[..., 1] + 24.966 * rgb[..., 2]) / 255.0


@functools.cache
def _pillow_luma_tables() -> dict[int, tuple[int, ...]]:
    """Pillow's luminance quantisation table for every quality 1–100 (encoded once, cached)."""
    tiny = np.zeros((8, 8), dtype=np.uint8)
    tables: dict[int, tuple[int, ...]] = {}
    for q in range(1, 101):
        with Image.open(io.BytesIO(jpeg_encode(tiny, q))) as im:
            tables[q] = tuple(im.quantization[0])  # type: ignore[attr-defined]
    return tables


def jpeg_quality_from_qtables(qtables: dict[int, list[int]] | None) -> int | None:
    """The IJG quality whose luminance table is closest to ``qtables[0]`` (Pillow's
    ``Image.quantization``), or None when there is no table. Exact for IJG/Pillow/MATLAB files;
    a best guess (least squared error) for encoders with their own tables.
    """
    if not qtables or 0 not in qtables:
        return None
    table = np.asarray(list(qtables[0]), dtype=np.float64)
    best_q, best_err = 50, np.inf
    for q, ref in _pillow_luma_tables().items():
        err = float(np.sum((np.asarray(ref, dtype=np.float64) - table) ** 2))
        if err < best_err:
            best_q, best_err = q, err
    return best_q
