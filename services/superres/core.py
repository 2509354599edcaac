"""The superres service's pure functions."""

from __future__ import annotations

import numpy as np
from PIL import Image

from shared.errors import UnprocessableInput


def bicubic_upscale(image: np.ndarray, scale: int) -> np.ndarray:
    height, width = image.shape[:2]
    resized = Image.fromarray(image).resize(
        (width * scale, height * scale), Image.Resampling.BICUBIC
    )
    return np.asarray(resized)


def upscale(image: np.ndarray, scale: int = 4, model: str = "classic") -> np.ndarray:
    if scale != 4:
        raise UnprocessableInput(f"only 4x super-resolution is served, not {scale}x")
    if model == "classic":
        return bicubic_upscale(image, scale)
    raise UnprocessableInput(f"superres has no model {model!r}")
