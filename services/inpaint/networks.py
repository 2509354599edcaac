"""The inpaint service's network path: DeepFill v1 (contextual attention), a pure function.

It works on a window around the mask (see `shared.ml.inpaint_window`) and writes back only the
hole: every pixel outside the mask is returned bit for bit.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open

from shared.ml import accel
from shared.ml.imaging import is_gray
from shared.ml.inference import (
    load_safetensors_strict,
    numpy_to_tensor,
    precision_for,
    prepare_for_inference,
    probe_image,
    self_ensemble,
)
from shared.ml.inpaint_window import FEATHER_PX, fill_through_window, telea_fill
from shared.ml.models.deepfill_contextual_attention import (
    SIZE_MULTIPLE,
    DeepFillV1,
    config_from_metadata,
)
from shared.ml.tiling import Cancelled

ProgressFn = Callable[[float], None]
CancelFn = Callable[[], bool]

#: Longest window side DeepFill runs at (trained on 128–256 crops; attention memory grows as
#: (side/8)^4, ~64 MB per image at 512).
DEEPFILL_MAX_SIDE = 512


def _noop_progress(_fraction: float) -> None:
    return None


def _never() -> bool:
    return False


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


def uses_bf16(model: DeepFillV1, weights_id: str) -> bool:
    """The precision policy every network follows (:func:`shared.ml.inference.precision_for`): bf16
    only where the hardware has it natively and the fill stays within 50 dB of fp32's."""
    device = next(model.parameters()).device
    probe = probe_image(3)
    hole = torch.zeros(1, 1, *probe.shape[-2:], device=device)
    hole[..., 16:48, 16:48] = 1.0
    return precision_for(lambda x: model(x, hole)[1], device, probe, model_id=weights_id)


def run_deepfill(
    model: DeepFillV1, image: np.ndarray, mask: np.ndarray, *, bf16: bool = False,
    ensemble: bool = False,
) -> np.ndarray:
    """The refined output (uint8 H×W×3) for a uint8 H×W×3 image and bool mask, any size.

    ``ensemble`` averages the fills of the 8 flips/rotations of the image and its mask.
    """
    device = next(model.parameters()).device
    height, width = mask.shape
    if model.config.prefill == "telea":  # weights trained on Telea-prefilled holes
        image = telea_fill(image, mask)
    x = _pad_to_multiple(numpy_to_tensor(image), SIZE_MULTIPLE)
    m = _pad_to_multiple(torch.from_numpy(mask.astype(np.float32))[None, None], SIZE_MULTIPLE)
    # One tensor (image channels, then the mask) so a flip or rotation moves both together.
    image_and_mask = torch.cat([x, m], dim=1).to(device).contiguous(
        memory_format=torch.channels_last)

    def refined(batch: torch.Tensor) -> torch.Tensor:
        return model(batch[:, :3], batch[:, 3:])[1].float()

    with torch.inference_mode(), accel.autocast_for(device, enabled=bf16):
        out = (self_ensemble(refined) if ensemble else refined)(image_and_mask)
    out = out[0, :, :height, :width].clamp(0, 1).mul(255).round()
    return out.to(torch.uint8).permute(1, 2, 0).cpu().numpy()


def inpaint_deepfill(image: np.ndarray, mask: np.ndarray, weights_path: str | Path,
                     on_progress: ProgressFn | None = None,
                     should_cancel: CancelFn | None = None, *,
                     max_side: int = DEEPFILL_MAX_SIDE, feather: float = FEATHER_PX,
                     device: torch.device | None = None,
                     ensemble: bool = False) -> np.ndarray:
    """Fill the True pixels of ``mask`` in the uint8 ``image`` (H×W or H×W×3) with DeepFill v1.

    Pixels outside the mask are returned unchanged, bit for bit. ``ensemble`` averages the
    fills of 8 flips/rotations (8× the time).
    """
    on_progress, should_cancel = on_progress or _noop_progress, should_cancel or _never
    model = load_deepfill(weights_path, device)
    path = Path(weights_path).resolve()
    bf16 = uses_bf16(model, weights_id=f"deepfill:{path}:{path.stat().st_mtime_ns}")
    on_progress(0.1)

    def fill(window: np.ndarray, hole: np.ndarray) -> np.ndarray:
        if should_cancel():
            raise Cancelled()
        rgb = np.repeat(window[..., None], 3, axis=2) if window.ndim == 2 else window
        filled = run_deepfill(model, rgb, hole, bf16=bf16, ensemble=ensemble)
        on_progress(0.9)
        if is_gray(window):
            # A black-and-white photo (one channel, or three equal ones) was filled as colour:
            # the network's slight tints would show, so the fill is made gray too.
            gray = np.rint(filled.astype(np.float32).mean(axis=2)).astype(np.uint8)
            return gray if window.ndim == 2 else np.repeat(gray[..., None], 3, axis=2)
        return filled

    result = fill_through_window(image, mask, fill, max_side=max_side, feather=feather)
    on_progress(1.0)
    return result
