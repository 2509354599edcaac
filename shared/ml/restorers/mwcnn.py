"""MWCNN restorers for `denoise` and `artifacts`: the shipped weights through the shared tiler."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from shared.ml.imaging import is_gray
from shared.ml.inference import LoadedNetwork, prepare_for_inference
from shared.ml.models.mwcnn import (
    SIZE_MULTIPLE,
    fold_batchnorm,
    level_from_quality,
    level_from_sigma,
    load_mwcnn,
)
from shared.ml.restorers.common import Restored, RestoreJob, resolve_quality, resolve_sigma
from shared.ml.runtime import ModelRuntime

DENOISE_WEIGHTS = "mwcnn-denoise.safetensors"
#: Optional one-channel denoiser: a black-and-white photo goes through it when it is installed.
DENOISE_GRAY_WEIGHTS = "mwcnn-denoise-gray.safetensors"
ARTIFACTS_WEIGHTS = "mwcnn-artifacts.safetensors"
# Peak working memory per input pixel of a tile (measured for the paper's width: ~2.1 KiB).
MWCNN_PIXEL_COST = 4096


def load_network(runtime: ModelRuntime, weights: str) -> LoadedNetwork:
    """The MWCNN in `weights` (a file name in the runtime's weights directory), loaded once."""
    path = runtime.weights_path(weights)
    return runtime.load(("mwcnn", weights), [path], lambda: _build(path, runtime))


def _build(path: Path, runtime: ModelRuntime) -> LoadedNetwork:
    # Folding BN into the convs is the same eval function with one memory pass less per layer.
    model = prepare_for_inference(fold_batchnorm(load_mwcnn(path)), runtime.device)
    return LoadedNetwork(
        module=model,
        device=runtime.device,
        weights_id=runtime.weights_sha256(path.name) or path.name,
        in_channels=model.config.in_channels,
        multiple=SIZE_MULTIPLE,
        pixel_cost=MWCNN_PIXEL_COST,
    )


def _run(runtime: ModelRuntime, weights: str, image: np.ndarray, level: float,
         job: RestoreJob) -> np.ndarray:
    network = load_network(runtime, weights)
    return runtime.run(
        network,
        image,
        lambda batch: network.module(batch, level),
        on_progress=job.on_progress,
        should_cancel=job.should_cancel,
        ensemble=job.ensemble,
    )


def denoiser_for(runtime: ModelRuntime, image: np.ndarray) -> str:
    """The weights a denoise of ``image`` runs with.

    A gray image (one channel, or three equal ones) goes through the gray network where it is
    installed: all of its width was trained on gray, where the colour network shares it.
    """
    gray_installed = runtime.has_weights([DENOISE_GRAY_WEIGHTS])
    return DENOISE_GRAY_WEIGHTS if is_gray(image) and gray_installed else DENOISE_WEIGHTS


def denoise(runtime: ModelRuntime, job: RestoreJob) -> Restored:
    """Remove Gaussian-like noise of level ``job.sigma`` (0–255 scale; None = estimate)."""
    sigma = resolve_sigma(job.pixels, job.sigma)
    weights = denoiser_for(runtime, job.pixels)
    image = job.pixels
    if weights == DENOISE_GRAY_WEIGHTS and image.ndim == 3:
        plane = _run(runtime, weights, image[..., 0], level_from_sigma(sigma), job)
        out = np.repeat(plane[..., None], image.shape[2], axis=2)
    else:
        out = _run(runtime, weights, image, level_from_sigma(sigma), job)
    details = {"sigma": round(sigma, 2), "weights_sha256": runtime.weights_sha256(weights)}
    return Restored(out, details)


def deblock(runtime: ModelRuntime, job: RestoreJob) -> Restored:
    """Remove JPEG blocking/ringing of an image saved at ``job.quality`` (None = assume 50)."""
    quality = resolve_quality(job.quality)
    out = _run(runtime, ARTIFACTS_WEIGHTS, job.pixels, level_from_quality(quality), job)
    return Restored(out, {"quality": quality,
                          "weights_sha256": runtime.weights_sha256(ARTIFACTS_WEIGHTS)})
