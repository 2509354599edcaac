"""Working on a window around an inpainting mask: shared by DeepFill and Deep Image Prior.

Both networks see the hole's bounding box plus context on every side (clipped to the image),
downscaled when larger than the network should see; the fill is feathered into an OpenCV Telea
fill over the first pixels from the hole's edge (Telea continues the surrounding pixels exactly,
so a colour offset or the blur of an upscaled fill leaves no seam), and only the hole is written
back: every pixel outside the mask is returned bit for bit.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import cv2
import numpy as np

from shared.ml.imaging import composite_masked

#: Feather width (pixels at the network's scale) of the blend into Telea at the hole's edge.
FEATHER_PX = 2.0
TELEA_RADIUS = 3

#: Paints the hole of a window: (window image, bool hole mask) at the working size → the
#: window with the hole filled, same shape (only the hole's pixels are used).
WindowFill = Callable[[np.ndarray, np.ndarray], np.ndarray]


@dataclass(frozen=True)
class Window:
    top: int
    left: int
    bottom: int
    right: int

    @property
    def slices(self) -> tuple[slice, slice]:
        return slice(self.top, self.bottom), slice(self.left, self.right)


def context_window(mask: np.ndarray, min_context: int = 64) -> Window:
    """The mask's bounding box grown by max(``min_context``, half its longer side) per side."""
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    top, bottom, left, right = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
    margin = max(min_context, max(bottom - top, right - left) // 2)
    height, width = mask.shape
    return Window(
        max(0, top - margin),
        max(0, left - margin),
        min(height, bottom + margin),
        min(width, right + margin),
    )


def resize_hw(image: np.ndarray, size: tuple[int, int], interpolation: int) -> np.ndarray:
    """cv2.resize to (height, width), keeping a trailing channel axis of 1 if there was one."""
    out = cv2.resize(image, (size[1], size[0]), interpolation=interpolation)
    return out.reshape(*size, *image.shape[2:]) if image.ndim == 3 else out


def scaled_size(height: int, width: int, max_side: int | None) -> tuple[int, int]:
    if max_side is None or max(height, width) <= max_side:
        return height, width
    factor = max_side / max(height, width)
    return max(1, round(height * factor)), max(1, round(width * factor))


def downscale_mask(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """A hole pixel at the small scale wherever any part of it was a hole."""
    if mask.shape == size:
        return mask.copy()
    area = resize_hw(mask.astype(np.float32), size, cv2.INTER_AREA)
    return area > 0


def telea_fill(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """OpenCV Telea inpainting of the True pixels of ``mask`` (uint8 H×W or H×W×C image).

    The hole is zeroed first so the result can never depend on what the hole held. Telea
    treats channels alike, so RGB needs no conversion to OpenCV's BGR.
    """
    hole = np.asarray(mask, bool)
    holed = np.ascontiguousarray(image).copy()
    holed[hole] = 0
    filled = cv2.inpaint(holed, hole.astype(np.uint8) * 255, TELEA_RADIUS, cv2.INPAINT_TELEA)
    return filled.reshape(image.shape)


def feathered_fill(
    window: np.ndarray, mask: np.ndarray, fill: np.ndarray, feather: float,
    telea: np.ndarray | None = None,
) -> np.ndarray:
    """``fill`` inside the hole, blended into a Telea fill over ``feather`` px from the edge.

    ``telea``: ``telea_fill(window, mask)`` where the caller has it already.
    """
    if feather <= 1.0:
        return fill
    hole = mask.astype(np.uint8)
    distance = cv2.distanceTransform(hole, cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
    alpha = np.clip(distance / feather, 0.0, 1.0)
    if telea is None:
        telea = telea_fill(window, mask)
    if window.ndim == 3:
        alpha = alpha[..., None]
    blended = alpha * fill.astype(np.float32) + (1 - alpha) * telea.astype(np.float32)
    return np.clip(np.rint(blended), 0, 255).astype(np.uint8)


def paste_window(
    image: np.ndarray, mask: np.ndarray, window: Window, filled: np.ndarray
) -> np.ndarray:
    full = image.copy()
    full[window.slices] = filled
    return composite_masked(image, full, mask)


def check_image_and_mask(image: np.ndarray, mask: np.ndarray) -> None:
    if image.dtype != np.uint8 or image.ndim not in (2, 3):
        raise ValueError(f"expected a uint8 H×W or H×W×C image, got {image.dtype} {image.shape}")
    if mask.shape != image.shape[:2]:
        raise ValueError(f"mask {mask.shape} does not match image {image.shape[:2]}")


def fill_through_window(
    image: np.ndarray,
    mask: np.ndarray,
    fill: WindowFill,
    *,
    max_side: int | None,
    min_context: int = 64,
    feather: float = FEATHER_PX,
    prefill: bool = False,
) -> np.ndarray:
    """Fill the True pixels of ``mask`` with ``fill`` run on a window around them.

    The window (:func:`context_window`) is shrunk to ``max_side`` when larger, ``fill`` paints
    its hole, the result comes back to full size (bicubic) and is feathered in at the hole's
    edge; every pixel outside the mask is returned bit for bit. ``prefill``: ``fill`` gets the
    window with its hole Telea-filled (what DeepFill's weights were trained on); where the
    window is not shrunk, that same Telea fill is the one the feather blends into, made once.
    """
    check_image_and_mask(image, mask)
    mask = np.asarray(mask, bool)
    window = context_window(mask, min_context)
    crop, crop_mask = image[window.slices], mask[window.slices]
    size = scaled_size(crop_mask.shape[0], crop_mask.shape[1], max_side)
    shrunk = size != crop_mask.shape
    small = resize_hw(crop, size, cv2.INTER_AREA) if shrunk else crop
    small_mask = downscale_mask(crop_mask, size)
    prefilled = telea_fill(small, small_mask) if prefill else None
    filled = fill(small if prefilled is None else prefilled, small_mask)
    if shrunk:
        filled = resize_hw(filled, crop_mask.shape, cv2.INTER_CUBIC)
    filled = filled.reshape(crop.shape)
    scale = crop_mask.shape[0] / size[0]  # the feather is given in pixels at the working size
    telea = None if shrunk else prefilled
    feathered = feathered_fill(crop, crop_mask, filled, feather * scale, telea=telea)
    return paste_window(image, mask, window, feathered)
