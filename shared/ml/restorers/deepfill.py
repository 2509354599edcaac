"""DeepFill v1 (contextual attention) restorer for `inpaint`, a pure function.

It works on a window around the mask (see `shared.ml.inpaint_window`) and writes back only the
hole: every pixel outside the mask is returned bit for bit.
"""

from __future__ import annotations

import numpy as np
import torch
from safetensors import safe_open

from shared.ml import accel
from shared.ml.imaging import composite_masked, is_gray
from shared.ml.inference import (
    load_safetensors_strict,
    numpy_to_tensor,
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
from shared.ml.restorers.common import Restored, RestoreJob, require_mask
from shared.ml.runtime import ModelRuntime
from shared.ml.tiling import Cancelled, pad_to_multiple

WEIGHTS = "deepfill-contextual-attention.safetensors"
#: Longest window side DeepFill runs at (trained on 128–256 crops; attention memory grows as
#: (side/8)^4, ~64 MB per image at 512). It runs whole, not through the tiler: its peak-RSS
#: growth (benchmarks/tile_memory.py) is 0.52 KiB per pixel at 128², 1.49 KiB at 256² (fp32).
DEEPFILL_MAX_SIDE = 512


# --------------------------------------------------------------------------- DeepFill


def build_deepfill(path: str, device: torch.device) -> DeepFillV1:
    """The generator in the safetensors file `path` (its config is in the metadata)."""
    with safe_open(path, framework="pt", device="cpu") as handle:
        metadata = dict(handle.metadata() or {})
    model = DeepFillV1(config_from_metadata(metadata))
    load_safetensors_strict(model, path)
    return prepare_for_inference(model, device)


def load_network(runtime: ModelRuntime) -> DeepFillV1:
    """The shipped generator on the runtime's device, loaded once."""
    path = runtime.weights_path(WEIGHTS)
    return runtime.load(("deepfill",), [path], lambda: build_deepfill(str(path), runtime.device))


def uses_bf16(runtime: ModelRuntime, model: DeepFillV1, weights_id: str) -> bool:
    """The precision policy every network follows (:meth:`ModelRuntime.uses_bf16`): bf16 only
    where the hardware has it natively and the fill stays within 50 dB of fp32's."""
    probe = probe_image(3)
    hole = torch.zeros(1, 1, *probe.shape[-2:], device=runtime.device)
    hole[..., 16:48, 16:48] = 1.0
    return runtime.uses_bf16(lambda x: model(x, hole)[1], probe, model_id=weights_id)


def run_deepfill(
    model: DeepFillV1, image: np.ndarray, mask: np.ndarray, *, bf16: bool = False,
    ensemble: bool = False, prefilled: bool = False,
) -> np.ndarray:
    """The refined output (uint8 H×W×3) for a uint8 H×W×3 image and bool mask, any size.

    ``ensemble`` averages the fills of the 8 flips/rotations of the image and its mask.
    ``prefilled``: the hole already holds the Telea fill the weights expect, where they do.
    """
    device = next(model.parameters()).device
    height, width = mask.shape
    if model.config.prefill == "telea" and not prefilled:  # trained on Telea-prefilled holes
        image = telea_fill(image, mask)
    x = pad_to_multiple(numpy_to_tensor(image), SIZE_MULTIPLE)
    m = pad_to_multiple(torch.from_numpy(mask.astype(np.float32))[None, None], SIZE_MULTIPLE)
    # One tensor (image channels, then the mask) so a flip or rotation moves both together.
    image_and_mask = torch.cat([x, m], dim=1).to(device).contiguous(
        memory_format=torch.channels_last)

    def refined(batch: torch.Tensor) -> torch.Tensor:
        return model(batch[:, :3], batch[:, 3:])[1].float()

    with torch.inference_mode(), accel.autocast_for(device, enabled=bf16):
        out = (self_ensemble(refined) if ensemble else refined)(image_and_mask)
    out = out[0, :, :height, :width].clamp(0, 1).mul(255).round()
    return out.to(torch.uint8).permute(1, 2, 0).cpu().numpy()


def inpaint(runtime: ModelRuntime, job: RestoreJob, *, max_side: int = DEEPFILL_MAX_SIDE,
            feather: float = FEATHER_PX) -> Restored:
    """Fill the True pixels of the mask with DeepFill v1; pixels outside it are unchanged, bit
    for bit. ``job.ensemble`` averages the fills of 8 flips/rotations (8× the time)."""
    mask = require_mask(job)
    model = load_network(runtime)
    weights_id = runtime.weights_sha256(WEIGHTS) or WEIGHTS
    bf16 = uses_bf16(runtime, model, weights_id=f"deepfill:{weights_id}")
    prefill = model.config.prefill == "telea"  # made once, beside the window's feather
    job.on_progress(0.1)

    def fill(window: np.ndarray, hole: np.ndarray) -> np.ndarray:
        if job.should_cancel():
            raise Cancelled()
        rgb = np.repeat(window[..., None], 3, axis=2) if window.ndim == 2 else window
        filled = run_deepfill(model, rgb, hole, bf16=bf16, ensemble=job.ensemble,
                              prefilled=prefill)
        job.on_progress(0.9)
        if is_gray(window):
            # A black-and-white photo (one channel, or three equal ones) was filled as colour:
            # the network's slight tints would show, so the fill is made gray too.
            gray = np.rint(filled.astype(np.float32).mean(axis=2)).astype(np.uint8)
            return gray if window.ndim == 2 else np.repeat(gray[..., None], 3, axis=2)
        return filled

    result = fill_through_window(job.pixels, mask, fill, max_side=max_side, feather=feather,
                                 prefill=prefill)
    job.on_progress(1.0)
    filled = composite_masked(job.pixels, result, mask)
    return Restored(filled, {"weights_sha256": runtime.weights_sha256(WEIGHTS)})
