"""MWCNN inference for `denoise` and `artifacts`: the shipped weights through the shared tiler."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from shared.ml.catalog import DEFAULT_WEIGHTS_DIR
from shared.ml.hashing import file_sha256
from shared.ml.imaging import is_gray
from shared.ml.inference import LoadedNetwork, load_once, prepare_for_inference, run_network
from shared.ml.models.mwcnn import (
    SIZE_MULTIPLE,
    fold_batchnorm,
    level_from_quality,
    level_from_sigma,
    load_mwcnn,
)

DENOISE_WEIGHTS = "mwcnn-denoise.safetensors"
#: Optional one-channel denoiser: a black-and-white photo goes through it when it is installed.
DENOISE_GRAY_WEIGHTS = "mwcnn-denoise-gray.safetensors"
ARTIFACTS_WEIGHTS = "mwcnn-artifacts.safetensors"
# Peak working memory per input pixel of a tile (measured for the paper's width: ~2.1 KiB).
MWCNN_PIXEL_COST = 4096


def _build(path: Path, device: torch.device) -> LoadedNetwork:
    # Folding BN into the convs is the same eval function with one memory pass less per layer.
    model = prepare_for_inference(fold_batchnorm(load_mwcnn(path)), device)
    return LoadedNetwork(
        module=model,
        device=device,
        weights_id=file_sha256(path),
        in_channels=model.config.in_channels,
        multiple=SIZE_MULTIPLE,
        pixel_cost=MWCNN_PIXEL_COST,
    )


def _device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _run(
    weights: Path,
    image: np.ndarray,
    level: float,
    on_progress: Callable[[float], None] | None,
    should_cancel: Callable[[], bool] | None,
    ensemble: bool,
) -> tuple[np.ndarray, str]:
    network = load_once(weights, _device(), _build)
    out = run_network(
        network,
        image,
        lambda batch: network.module(batch, level),
        on_progress=on_progress,
        should_cancel=should_cancel,
        ensemble=ensemble,
    )
    return out, network.weights_id


def denoiser_for(image: np.ndarray, weights_dir: Path = DEFAULT_WEIGHTS_DIR) -> Path:
    """The weights a denoise of ``image`` runs with.

    A gray image (one channel, or three equal ones) goes through the gray network where it is
    installed: all of its width was trained on gray, where the colour network shares it.
    """
    gray = weights_dir / DENOISE_GRAY_WEIGHTS
    return gray if is_gray(image) and gray.is_file() else weights_dir / DENOISE_WEIGHTS


def mwcnn_denoise(
    image: np.ndarray,
    sigma: float,
    weights_dir: Path = DEFAULT_WEIGHTS_DIR,
    on_progress: Callable[[float], None] | None = None,
    should_cancel: Callable[[], bool] | None = None,
    ensemble: bool = False,
) -> tuple[np.ndarray, str]:
    """Denoised image and the weights' sha256; `sigma` on the 0–255 scale.

    A gray image goes through the gray network where it is installed (:func:`denoiser_for`).
    """
    weights = denoiser_for(image, weights_dir)
    if weights.name == DENOISE_GRAY_WEIGHTS:
        plane = image if image.ndim == 2 else image[..., 0]
        out, weights_id = _run(weights, plane, level_from_sigma(sigma), on_progress,
                               should_cancel, ensemble)
        if image.ndim == 3:
            out = np.repeat(out.reshape(*plane.shape, 1), image.shape[2], axis=2)
        return out, weights_id
    return _run(
        weights,
        image,
        level_from_sigma(sigma),
        on_progress,
        should_cancel,
        ensemble,
    )


def mwcnn_deblock(
    image: np.ndarray,
    quality: int,
    weights_dir: Path = DEFAULT_WEIGHTS_DIR,
    on_progress: Callable[[float], None] | None = None,
    should_cancel: Callable[[], bool] | None = None,
    ensemble: bool = False,
) -> tuple[np.ndarray, str]:
    return _run(
        weights_dir / ARTIFACTS_WEIGHTS,
        image,
        level_from_quality(quality),
        on_progress,
        should_cancel,
        ensemble,
    )
