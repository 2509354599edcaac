"""The inpaint service's pure functions. Pixels outside the mask are never changed."""

from __future__ import annotations

import cv2
import numpy as np

from shared.errors import UnprocessableInput
from shared.imaging import composite_masked

# Telea's neighbourhood radius in pixels (OpenCV's documented typical value).
TELEA_RADIUS = 3


def telea_inpaint(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    mask_u8 = mask.astype(np.uint8) * 255
    if image.ndim == 2:
        return cv2.inpaint(image, mask_u8, TELEA_RADIUS, cv2.INPAINT_TELEA)
    bgr = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
    filled = cv2.inpaint(bgr, mask_u8, TELEA_RADIUS, cv2.INPAINT_TELEA)
    return cv2.cvtColor(filled, cv2.COLOR_BGR2RGB)


def inpaint(image: np.ndarray, mask: np.ndarray, model: str = "classic") -> np.ndarray:
    if mask.shape != image.shape[:2]:
        raise UnprocessableInput(f"mask {mask.shape} does not match image {image.shape[:2]}")
    if not mask.any():
        raise UnprocessableInput("the mask is empty: paint the region to fill in white")
    if model == "classic":
        filled = telea_inpaint(image, mask)
    else:
        raise UnprocessableInput(f"inpaint has no model {model!r}")
    return composite_masked(image, filled, mask)
