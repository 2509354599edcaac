"""The DIP service's pure functions: Deep Image Prior (Ulyanov et al.) for inpaint and denoise.

Training-free but slow (an iteration at 256² is ~0.8 s on one AVX2 core for width 32), so it has
its own queue and worker: a DIP job never waits in front of the fast networks.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from shared.errors import UnprocessableInput
from shared.ml import accel
from shared.ml.inpaint_window import FEATHER_PX, fill_through_window
from shared.ml.models.deep_image_prior import DIPConfig, denoise_dip, fit_dip

ProgressFn = Callable[[float], None]
CancelFn = Callable[[], bool]

#: On a CPU, DIP fits at most a 256² window (an iteration at 512² costs hundreds of GFLOP).
DIP_CPU_MAX_SIDE = 256
#: DIP on a CPU: a narrow network and a bounded iteration count. Measured (2026-11-25, one busy
#: AVX2 core, nice 19): 0.76 s per iteration at 256² for width 32 (width 64: 2.0 s, the paper's
#: 128: 6.7 s), so the default 600 iterations take about 8 minutes on a 256² window.
DIP_CPU_CONFIG = DIPConfig(width=32, skip=0, upsample="nearest")
DIP_DEFAULT_ITERATIONS = 600
DIP_DENOISE_ITERATIONS = 1200


def inpaint_dip(
    image: np.ndarray,
    mask: np.ndarray,
    iterations: int = DIP_DEFAULT_ITERATIONS,
    on_progress: ProgressFn | None = None,
    should_cancel: CancelFn | None = None,
    *,
    max_side: int | None = None,
    config: DIPConfig | None = None,
    seed: int = 0,
    feather: float = FEATHER_PX,
    device: torch.device | None = None,
) -> np.ndarray:
    """Fill the True pixels of ``mask`` by fitting a Deep Image Prior to the window around them.

    On a CPU the window is downscaled to at most :data:`DIP_CPU_MAX_SIDE` and the network is
    :data:`DIP_CPU_CONFIG`; on a GPU (or with ``max_side``/``config`` given) as asked — the
    paper's width-128 network at full size by default. Pixels outside the mask are unchanged.
    """
    device = device or accel.best_device()
    cpu = device.type == "cpu"
    if max_side is None and cpu:
        max_side = DIP_CPU_MAX_SIDE
    if config is None:
        config = DIP_CPU_CONFIG if cpu else DIPConfig(skip=0, upsample="nearest")
    channels = 1 if image.ndim == 2 else image.shape[2]
    config = DIPConfig(
        config.width, config.depth, config.skip, config.input_channels, channels, config.upsample
    )

    def fill(window: np.ndarray, hole: np.ndarray) -> np.ndarray:
        result = fit_dip(window, hole, iterations, config=config, seed=seed,
                         on_progress=on_progress, should_cancel=should_cancel, device=device)
        return result.image

    return fill_through_window(image, mask, fill, max_side=max_side, min_context=32,
                               feather=feather)


def dip_restore(
    task: str,
    image: np.ndarray,
    mask: np.ndarray | None,
    *,
    sigma: float | None = None,
    iterations: int | None = None,
    on_progress: ProgressFn | None = None,
    should_cancel: CancelFn | None = None,
) -> np.ndarray:
    """DIP for `inpaint` (needs the mask) or `denoise` (σ adds the discrepancy stop)."""
    if task == "inpaint":
        if mask is None or not mask.any():
            raise UnprocessableInput("inpaint needs a mask with something to fill")
        return inpaint_dip(
            image, mask, iterations or DIP_DEFAULT_ITERATIONS, on_progress, should_cancel
        )
    if task == "denoise":
        max_side = DIP_CPU_MAX_SIDE if accel.best_device().type == "cpu" else None
        return denoise_dip(
            image,
            iterations or DIP_DENOISE_ITERATIONS,
            sigma=sigma,
            max_side=max_side,
            on_progress=on_progress,
            should_cancel=should_cancel,
            device=accel.best_device(),
        )
    raise UnprocessableInput(f"Deep Image Prior does not serve the task {task!r}")
