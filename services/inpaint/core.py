"""The inpaint service's pure functions. Pixels outside the mask are never changed."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from shared.errors import UnprocessableInput
from shared.ml.catalog import DEFAULT_WEIGHTS_DIR, require_ensemble_offered
from shared.ml.imaging import composite_masked
from shared.ml.inpaint_window import telea_fill

DEEPFILL_WEIGHTS = "deepfill-contextual-attention.safetensors"


def inpaint(
    image: np.ndarray,
    mask: np.ndarray,
    model: str = "classic",
    on_progress: Callable[[float], None] | None = None,
    should_cancel: Callable[[], bool] | None = None,
    *,
    ensemble: bool = False,
) -> np.ndarray:
    """Fill the True pixels of ``mask``; ``ensemble`` (DeepFill only) averages the fills of 8
    flips/rotations."""
    if mask.shape != image.shape[:2]:
        raise UnprocessableInput(f"mask {mask.shape} does not match image {image.shape[:2]}")
    if not mask.any():
        raise UnprocessableInput("the mask is empty: paint the region to fill in white")
    require_ensemble_offered("inpaint", model, ensemble)
    if model == "classic":
        filled = telea_fill(image, mask)
    elif model == "deepfill":
        # Imported here: the classic path must not pay for torch.
        from services.inpaint import networks

        weights = DEFAULT_WEIGHTS_DIR / DEEPFILL_WEIGHTS
        if not weights.is_file():
            raise UnprocessableInput(f"model 'deepfill' is not installed ({weights.name})")
        filled = networks.inpaint_deepfill(
            image, mask, weights, on_progress, should_cancel, ensemble=ensemble
        )
    else:
        raise UnprocessableInput(f"inpaint has no model {model!r}")
    return composite_masked(image, filled, mask)
