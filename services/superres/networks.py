"""ESRGAN (RRDBNet) inference: shipped PSNR/GAN weights, or an operator's official checkpoint.

`strength` is the paper's network interpolation between the PSNR-oriented and the GAN
weights (0 = PSNR, 1 = GAN); the interpolated network is cached per strength step.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from shared.ml.catalog import DEFAULT_WEIGHTS_DIR
from shared.ml.hashing import cached_file_sha256
from shared.ml.inference import LoadedNetwork, prepare_for_inference, run_network
from shared.ml.models.esrgan import RRDBNet, interpolate_state_dicts, load_rrdbnet

PSNR_WEIGHTS = "esrgan-psnr.safetensors"
GAN_WEIGHTS = "esrgan-gan.safetensors"
# Peak working memory per input pixel of a tile at ×4 (measured ~13 KiB for 64×23).
RRDBNET_PIXEL_COST = 16 * 1024
# Strengths are rounded to this step so a handful of interpolated networks cover the range.
STRENGTH_STEP = 0.05


def _device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _wrap(model: RRDBNet, weights_id: str, device: torch.device) -> LoadedNetwork:
    return LoadedNetwork(
        module=prepare_for_inference(model, device),
        device=device,
        weights_id=weights_id,
        in_channels=model.config.in_channels,
        scale=model.config.scale,
        # Below ×4 the body runs on pixel-unshuffled input: sizes must divide by the factor.
        multiple=4 // model.config.scale,
        pixel_cost=RRDBNET_PIXEL_COST,
    )


@functools.lru_cache(maxsize=4)
def _network(psnr_path: str, gan_path: str | None, strength: float, mtimes: tuple) -> LoadedNetwork:
    psnr = load_rrdbnet(psnr_path)
    weights_id = cached_file_sha256(Path(psnr_path))
    if gan_path is not None and strength > 0:
        gan = load_rrdbnet(gan_path)
        mixed = interpolate_state_dicts(psnr.state_dict(), gan.state_dict(), strength)
        psnr.load_state_dict(mixed, strict=True)
        weights_id = f"{weights_id}+{cached_file_sha256(Path(gan_path))}@{strength:.2f}"
    return _wrap(psnr, weights_id, _device())


def resolve_weights(weights_dir: Path, override: str = "") -> tuple[Path, Path | None]:
    """The PSNR weights (an operator's checkpoint if given) and the GAN weights if shipped."""
    psnr = Path(override) if override else weights_dir / PSNR_WEIGHTS
    gan = weights_dir / GAN_WEIGHTS
    return psnr, (gan if gan.is_file() and not override else None)


def esrgan_upscale(
    image: np.ndarray,
    strength: float = 0.0,
    weights_dir: Path = DEFAULT_WEIGHTS_DIR,
    override: str = "",
    on_progress: Callable[[float], None] | None = None,
    should_cancel: Callable[[], bool] | None = None,
    ensemble: bool = False,
) -> tuple[np.ndarray, str]:
    """4× upscaled image and the id of the weights used."""
    psnr, gan = resolve_weights(weights_dir, override)
    step = round(round(float(np.clip(strength, 0, 1)) / STRENGTH_STEP) * STRENGTH_STEP, 2)
    mtimes = (psnr.stat().st_mtime, gan.stat().st_mtime if gan else 0.0)
    network = _network(str(psnr), str(gan) if gan else None, step if gan else 0.0, mtimes)
    out = run_network(
        network, image, on_progress=on_progress, should_cancel=should_cancel, ensemble=ensemble
    )
    return out, network.weights_id
