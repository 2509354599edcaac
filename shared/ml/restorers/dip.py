"""Deep Image Prior (Ulyanov et al.) restorers for `inpaint` and `denoise`.

Training-free but slow (an iteration at 256² is ~0.8 s on one AVX2 core for width 32), so it has
its own queue and worker: a DIP job never waits in front of the fast networks.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from shared.ml.inpaint_window import FEATHER_PX, fill_through_window
from shared.ml.models.deep_image_prior import DIPConfig, denoise_dip, fit_dip
from shared.ml.restorers.common import Restored, RestoreJob, require_mask
from shared.ml.runtime import ModelRuntime

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
    device: torch.device,
) -> np.ndarray:
    """Fill the True pixels of ``mask`` by fitting a Deep Image Prior to the window around them.

    On a CPU the window is downscaled to at most :data:`DIP_CPU_MAX_SIDE` and the network is
    :data:`DIP_CPU_CONFIG`; on a GPU (or with ``max_side``/``config`` given) as asked — the
    paper's width-128 network at full size by default. Pixels outside the mask are unchanged.
    """
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


def inpaint(runtime: ModelRuntime, job: RestoreJob) -> Restored:
    """Fill the mask by fitting a Deep Image Prior to the window around it."""
    mask = require_mask(job)
    iterations = job.iterations or DIP_DEFAULT_ITERATIONS
    pixels = inpaint_dip(job.pixels, mask, iterations, job.on_progress, job.should_cancel,
                         device=runtime.device)
    return Restored(pixels, {"iterations": job.iterations})


def denoise(runtime: ModelRuntime, job: RestoreJob) -> Restored:
    """Denoise by fitting a Deep Image Prior; a given σ adds the discrepancy stop."""
    on_cpu = runtime.device.type == "cpu"
    pixels = denoise_dip(
        job.pixels,
        job.iterations or DIP_DENOISE_ITERATIONS,
        sigma=job.sigma,
        max_side=DIP_CPU_MAX_SIDE if on_cpu else None,
        on_progress=job.on_progress,
        should_cancel=job.should_cancel,
        device=runtime.device,
    )
    return Restored(pixels, {"iterations": job.iterations})
