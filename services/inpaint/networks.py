"""The inpaint service's network paths: DeepFill v1 (contextual attention) and Deep Image Prior.

Pure functions on uint8 arrays. Both work on a *window* around the mask's bounding box (the hole
plus context on every side, clipped to the image), downscaled when it is larger than the network
should see, and write back only the hole: every pixel outside the mask is returned bit for bit.

Within the hole, the network's fill is feathered into an OpenCV Telea fill over the first
pixels from the hole's edge (``alpha = distance / feather``): Telea continues the surrounding
pixels exactly at the edge, so a colour offset of the network (or the blur of an upscaled fill)
does not leave a visible seam, while the hole's interior is the network's.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
from safetensors import safe_open

from shared import accel
from shared.imaging import composite_masked
from shared.inference import load_safetensors_strict, numpy_to_tensor, prepare_for_inference
from shared.models.deep_image_prior import DIPConfig, fit_dip
from shared.models.deepfill_contextual_attention import (
    SIZE_MULTIPLE,
    DeepFillV1,
    config_from_metadata,
)
from shared.tiling import Cancelled

ProgressFn = Callable[[float], None]
CancelFn = Callable[[], bool]

#: Longest window side DeepFill runs at (trained on 128–256 crops; attention memory grows as
#: (side/8)^4, ~64 MB per image at 512).
DEEPFILL_MAX_SIDE = 512
#: On a CPU, DIP fits at most a 256² window (an iteration at 512² costs hundreds of GFLOP).
DIP_CPU_MAX_SIDE = 256
#: DIP on a CPU: a narrow network and a bounded iteration count. Measured (2026-11-25, one busy
#: AVX2 core, nice 19): 0.76 s per iteration at 256² for width 32 (width 64: 2.0 s, the paper's
#: 128: 6.7 s), so the default 600 iterations take about 8 minutes on a 256² window.
DIP_CPU_CONFIG = DIPConfig(width=32, skip=0, upsample="nearest")
DIP_DEFAULT_ITERATIONS = 600
#: Feather width (pixels at the network's scale) of the blend into Telea at the hole's edge.
FEATHER_PX = 2.0
TELEA_RADIUS = 3


def _noop_progress(_fraction: float) -> None:
    return None


def _never() -> bool:
    return False


# --------------------------------------------------------------------------- windows


@dataclass(frozen=True)
class Window:
    top: int
    left: int
    bottom: int
    right: int

    @property
    def slices(self) -> tuple[slice, slice]:
        return slice(self.top, self.bottom), slice(self.left, self.right)

    @property
    def longest(self) -> int:
        return max(self.bottom - self.top, self.right - self.left)


def context_window(mask: np.ndarray, min_context: int = 64) -> Window:
    """The mask's bounding box grown by max(``min_context``, half its longer side) per side."""
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    top, bottom, left, right = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
    margin = max(min_context, max(bottom - top, right - left) // 2)
    height, width = mask.shape
    return Window(max(0, top - margin), max(0, left - margin),
                  min(height, bottom + margin), min(width, right + margin))


def _resize(image: np.ndarray, size: tuple[int, int], interpolation: int) -> np.ndarray:
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
    area = _resize(mask.astype(np.float32), size, cv2.INTER_AREA)
    return area > 0


def feathered_fill(window: np.ndarray, mask: np.ndarray, fill: np.ndarray,
                   feather: float) -> np.ndarray:
    """``fill`` inside the hole, blended into a Telea fill over ``feather`` px from the edge."""
    if feather <= 1.0:
        return fill
    hole = mask.astype(np.uint8)
    distance = cv2.distanceTransform(hole, cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
    alpha = np.clip(distance / feather, 0.0, 1.0)
    telea = cv2.inpaint(np.ascontiguousarray(window), hole * 255, TELEA_RADIUS, cv2.INPAINT_TELEA)
    if window.ndim == 3:
        alpha = alpha[..., None]
    blended = alpha * fill.astype(np.float32) + (1 - alpha) * telea.astype(np.float32)
    return np.clip(np.rint(blended), 0, 255).astype(np.uint8)


def _paste(image: np.ndarray, mask: np.ndarray, window: Window, filled: np.ndarray) -> np.ndarray:
    full = image.copy()
    full[window.slices] = filled
    return composite_masked(image, full, mask)


def _check(image: np.ndarray, mask: np.ndarray) -> None:
    if image.dtype != np.uint8 or image.ndim not in (2, 3):
        raise ValueError(f"expected a uint8 H×W or H×W×C image, got {image.dtype} {image.shape}")
    if mask.shape != image.shape[:2]:
        raise ValueError(f"mask {mask.shape} does not match image {image.shape[:2]}")


# --------------------------------------------------------------------------- DeepFill


@functools.lru_cache(maxsize=2)
def _load_deepfill(path: str, _mtime_ns: int, device: str) -> DeepFillV1:
    with safe_open(path, framework="pt", device="cpu") as handle:
        metadata = dict(handle.metadata() or {})
    model = DeepFillV1(config_from_metadata(metadata))
    load_safetensors_strict(model, path)
    return prepare_for_inference(model, torch.device(device))


def load_deepfill(weights_path: str | Path, device: torch.device | None = None) -> DeepFillV1:
    """The model for ``weights_path`` (cached; reloaded when the file changes)."""
    path = Path(weights_path)
    device = device or accel.best_device()
    return _load_deepfill(str(path.resolve()), path.stat().st_mtime_ns, str(device))


def _pad_to_multiple(x: torch.Tensor, multiple: int) -> torch.Tensor:
    height, width = x.shape[-2:]
    ph, pw = -height % multiple, -width % multiple
    if not ph and not pw:
        return x
    mode = "reflect" if ph < height and pw < width else "replicate"
    return torch.nn.functional.pad(x, (0, pw, 0, ph), mode=mode)


def run_deepfill(model: DeepFillV1, image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The refined output (uint8 H×W×3) for a uint8 H×W×3 image and bool mask, any size."""
    device = next(model.parameters()).device
    height, width = mask.shape
    x = _pad_to_multiple(numpy_to_tensor(image), SIZE_MULTIPLE)
    m = _pad_to_multiple(torch.from_numpy(mask.astype(np.float32))[None, None], SIZE_MULTIPLE)
    x = x.to(device).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode(), accel.autocast_for(device):
        _, refined = model(x, m.to(device))
    out = refined[0, :, :height, :width].float().clamp(0, 1).mul(255).round()
    return out.to(torch.uint8).permute(1, 2, 0).cpu().numpy()


def inpaint_deepfill(image: np.ndarray, mask: np.ndarray, weights_path: str | Path,
                     on_progress: ProgressFn | None = None,
                     should_cancel: CancelFn | None = None, *,
                     max_side: int = DEEPFILL_MAX_SIDE, feather: float = FEATHER_PX,
                     device: torch.device | None = None) -> np.ndarray:
    """Fill the True pixels of ``mask`` in the uint8 ``image`` (H×W or H×W×3) with DeepFill v1.

    Pixels outside the mask are returned unchanged, bit for bit.
    """
    _check(image, mask)
    on_progress, should_cancel = on_progress or _noop_progress, should_cancel or _never
    mask = np.asarray(mask, bool)
    model = load_deepfill(weights_path, device)
    on_progress(0.1)
    window = context_window(mask)
    crop, crop_mask = image[window.slices], mask[window.slices]
    rgb = np.repeat(crop[..., None], 3, axis=2) if crop.ndim == 2 else crop
    size = scaled_size(*crop_mask.shape, max_side)
    small = _resize(rgb, size, cv2.INTER_AREA) if size != crop_mask.shape else rgb
    small_mask = downscale_mask(crop_mask, size)
    if should_cancel():
        raise Cancelled()
    fill = run_deepfill(model, small, small_mask)
    on_progress(0.9)
    if size != crop_mask.shape:
        fill = _resize(fill, crop_mask.shape, cv2.INTER_CUBIC)
    if crop.ndim == 2:
        fill = np.rint(fill.astype(np.float32).mean(axis=2)).astype(np.uint8)
    scale = crop_mask.shape[0] / size[0]
    filled = feathered_fill(crop, crop_mask, fill, feather * scale)
    result = _paste(image, mask, window, filled)
    on_progress(1.0)
    return result


# --------------------------------------------------------------------------- Deep Image Prior


def inpaint_dip(image: np.ndarray, mask: np.ndarray, iterations: int = DIP_DEFAULT_ITERATIONS,
                on_progress: ProgressFn | None = None, should_cancel: CancelFn | None = None, *,
                max_side: int | None = None, config: DIPConfig | None = None, seed: int = 0,
                feather: float = FEATHER_PX, device: torch.device | None = None) -> np.ndarray:
    """Fill the True pixels of ``mask`` by fitting a Deep Image Prior to the window around them.

    On a CPU the window is downscaled to at most :data:`DIP_CPU_MAX_SIDE` and the network is
    :data:`DIP_CPU_CONFIG`; on a GPU (or with ``max_side``/``config`` given) as asked — the
    paper's width-128 network at full size by default. Pixels outside the mask are unchanged.
    """
    _check(image, mask)
    mask = np.asarray(mask, bool)
    device = device or accel.best_device()
    cpu = device.type == "cpu"
    if max_side is None and cpu:
        max_side = DIP_CPU_MAX_SIDE
    if config is None:
        config = DIP_CPU_CONFIG if cpu else DIPConfig(skip=0, upsample="nearest")
    channels = 1 if image.ndim == 2 else image.shape[2]
    config = DIPConfig(config.width, config.depth, config.skip, config.input_channels, channels,
                       config.upsample)
    window = context_window(mask, min_context=32)
    crop, crop_mask = image[window.slices], mask[window.slices]
    size = scaled_size(*crop_mask.shape, max_side)
    small = _resize(crop, size, cv2.INTER_AREA) if size != crop_mask.shape else crop
    small_mask = downscale_mask(crop_mask, size)
    result = fit_dip(small, small_mask, iterations, config=config, seed=seed,
                     on_progress=on_progress, should_cancel=should_cancel, device=device)
    fill = result.image
    if size != crop_mask.shape:
        fill = _resize(fill, crop_mask.shape, cv2.INTER_CUBIC)
    fill = fill.reshape(crop.shape)
    scale = crop_mask.shape[0] / size[0]
    return _paste(image, mask, window, feathered_fill(crop, crop_mask, fill, feather * scale))
