"""The superres service's pure functions."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from PIL import Image

from services.superres.networks import esrgan_upscale
from shared.errors import UnprocessableInput
from shared.ml.catalog import require_ensemble_offered


def bicubic_upscale(image: np.ndarray, scale: int) -> np.ndarray:
    height, width = image.shape[:2]
    size = (width * scale, height * scale)
    return np.asarray(Image.fromarray(image).resize(size, Image.Resampling.BICUBIC))


def upscale(
    image: np.ndarray,
    scale: int = 4,
    model: str = "esrgan",
    strength: float = 0.0,
    *,
    weights_override: str = "",
    on_progress: Callable[[float], None] | None = None,
    should_cancel: Callable[[], bool] | None = None,
    ensemble: bool = False,
) -> np.ndarray:
    """`scale`× super-resolution; `strength` blends PSNR (0) and GAN (1) weights.

    `ensemble` (ESRGAN only) averages the network over 8 flips/rotations.
    """
    if scale != 4:
        raise UnprocessableInput(f"only 4x super-resolution is served, not {scale}x")
    if model == "esrgan":
        return esrgan_upscale(
            image,
            strength,
            override=weights_override,
            on_progress=on_progress,
            should_cancel=should_cancel,
            ensemble=ensemble,
        )[0]
    require_ensemble_offered("superres", model, ensemble)
    if model == "classic":
        return bicubic_upscale(image, scale)
    raise UnprocessableInput(f"superres has no model {model!r}")
