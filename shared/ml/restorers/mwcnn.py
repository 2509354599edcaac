"""MWCNN restorers for `denoise` and `artifacts`: the shipped weights through the shared tiler."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from shared.ml.backends import Signature
from shared.ml.colour_planes import OPPONENT, ColourBasis, denoise_planes
from shared.ml.imaging import is_gray
from shared.ml.inference import LoadedNetwork, prepare_for_inference
from shared.ml.models.mwcnn import (
    MWCNN,
    SIZE_MULTIPLE,
    WaveletFusedMWCNN,
    fold_batchnorm,
    fuse_wavelets,
    level_from_quality,
    level_from_sigma,
    load_mwcnn,
)
from shared.ml.restorers.common import Restored, RestoreJob, resolve_quality, resolve_sigma
from shared.ml.runtime import ModelRuntime

DENOISE_WEIGHTS = "mwcnn-denoise.safetensors"
#: Optional one-channel denoiser: a black-and-white photo goes through it when it is installed.
DENOISE_GRAY_WEIGHTS = "mwcnn-denoise-gray.safetensors"
#: Optional colour-plane denoiser: the gray network with three guide channels, fine-tuned to
#: restore each opponent plane of a colour photo while it sees all three; colour photos go
#: through it when it is installed.
DENOISE_PLANES_WEIGHTS = "mwcnn-denoise-planes.safetensors"
#: Optional chroma network of a cascade beside the colour-plane network: where both are
#: installed, the colour-plane network restores the luminance and this one the two chroma
#: planes, seeing the *denoised* luminance (`colour_planes.cascade_guide`), as CBM3D groups the
#: chroma by the luminance's structure. It was trained against the colour-plane network's
#: output (its provenance names that file's sha256), so it ships and is replaced with it.
DENOISE_CHROMA_WEIGHTS = "mwcnn-denoise-chroma.safetensors"
ARTIFACTS_WEIGHTS = "mwcnn-artifacts.safetensors"
# Peak working memory per input pixel of a tile: 1.5× the largest peak-RSS growth measured by
# benchmarks/tile_memory.py (2-core AMD EPYC, torch 2.13, 128² and 256² tiles): colour denoiser
# 0.84 / 0.62 KiB fp32, 0.32 / 0.48 bf16; gray 0.78 / 0.69 fp32, 0.43 / 0.61 bf16.
MWCNN_PIXEL_COST = 1280
MWCNN_PIXEL_COST_BF16 = 1024
# The same on ONNX Runtime (no arena, see shared.ml.backends.open_session), 1.5× the largest
# peak-RSS growth measured the same way for its export (2-core AMD EPYC, onnxruntime 1.32, 128²
# to 1024² tiles, batches of 1 and 4): gray 0.88 KiB at 512², colour 0.65, artifacts 0.50.
MWCNN_PIXEL_COST_ORT = 1408
# The tile the backend choice times PyTorch against ONNX Runtime on: MWCNN's tiles are large
# (a whole photo where it fits the budget), and the winner changes with the size: on a 2-core
# EPYC with native bf16 ONNX Runtime won at 256² (0.023 s against 0.031 for the JPEG network)
# and lost at 512² (0.089 against 0.056, freed memory reused), where photos are.
MEASURE_SIDE = 512
#: How many flips/rotations a colour photo's luminance is averaged over (`ensemble=true` turns
#: every plane 8 ways instead). Kodak24 σ25 [float], the cascade: one view 31.85 dB, two 31.91
#: (CBM3D 31.89), four 31.94, eight 31.95; a 768×512 photo took 0.65 / 0.90 / 1.40 / 2.20 s
#: (2-core AMD EPYC, bf16). Two: the luminance holds most of the error left, and the second
#: view costs a third of the time.
LUMA_VIEWS = 2


# --------------------------------------------------------------------------- running


def load_network(runtime: ModelRuntime, weights: str) -> LoadedNetwork:
    """The MWCNN in `weights` (a file name in the runtime's weights directory), loaded once."""
    path = runtime.weights_path(weights)
    return runtime.load(("mwcnn", weights), [path], lambda: _build(path, runtime))


def _build(path: Path, runtime: ModelRuntime) -> LoadedNetwork:
    # Folding BN into the convs, then the wavelets into the convs beside them: the same eval
    # function with fewer memory passes.
    model = prepare_for_inference(fuse_wavelets(fold_batchnorm(load_mwcnn(path))),
                                  runtime.device)
    network = LoadedNetwork(
        module=model,
        device=runtime.device,
        weights_id=runtime.weights_sha256(path.name) or path.name,
        in_channels=model.config.in_channels,
        multiple=SIZE_MULTIPLE,
        pixel_cost=MWCNN_PIXEL_COST,
        pixel_cost_bf16=MWCNN_PIXEL_COST_BF16,
    )
    return runtime.choose_backend(network, signature(model), ort_pixel_cost=MWCNN_PIXEL_COST_ORT)


def signature(model: MWCNN | WaveletFusedMWCNN) -> Signature:
    """How the restorers below call the network: ``net(x, level[, guide])``, level a float."""
    cfg = model.config
    return Signature(channels=cfg.in_channels, level=cfg.level_channel,
                     guide_channels=cfg.guide_channels, measure_side=MEASURE_SIDE)


def _run(runtime: ModelRuntime, network: LoadedNetwork, image: np.ndarray,
         forward: Callable[[torch.Tensor], torch.Tensor], job: RestoreJob) -> np.ndarray:
    return runtime.run(
        network,
        image,
        forward,
        on_progress=job.on_progress,
        should_cancel=job.should_cancel,
        ensemble=job.ensemble,
    )


def run_at_level(runtime: ModelRuntime, weights: str, image: np.ndarray, level: float,
                 job: RestoreJob) -> np.ndarray:
    """`image` through the MWCNN in `weights`, as is, at degradation level `level`."""
    network = load_network(runtime, weights)
    return _run(runtime, network, image, lambda batch: network.net(batch, level), job)


def denoise_colour_planes(runtime: ModelRuntime, weights: str, image: np.ndarray, sigma: float,
                          basis: ColourBasis, job: RestoreJob) -> np.ndarray:
    """A colour image through the one-channel network `weights`, plane by plane in `basis`.

    Each tile is mapped to the basis' three planes, each plane goes through the network with
    its own noise level (σ times its gain) and, where the network takes guide channels, with all
    three noisy planes beside it; the result is mapped back to RGB before the one rounding to
    uint8 at the end (:func:`shared.ml.colour_planes.denoise_planes`; one plane at a time: on a
    768×512 photo, one thread, 1.6 s against 2.8 s for the three as one batch). The luminance
    is averaged over LUMA_VIEWS flips/rotations.
    """
    plane_net = load_network(runtime, weights)
    assert isinstance(plane_net.module, WaveletFusedMWCNN)
    guided = plane_net.module.config.guide_channels > 0
    chroma_net = chroma_network(runtime, weights)
    chroma_id = f"+chroma:{chroma_net.weights_id}" if chroma_net else ""
    network = dataclasses.replace(
        plane_net, in_channels=3, weights_id=f"{plane_net.weights_id}{chroma_id}+{basis.name}"
    )

    # The x8 ensemble turns every plane already: one view of the luminance inside it.
    luma_views = 1 if job.ensemble else LUMA_VIEWS

    def forward(batch: torch.Tensor) -> torch.Tensor:
        return denoise_planes(plane_net.net, batch, sigma, basis, guided,
                              denoise_chroma=chroma_net.net if chroma_net else None,
                              luma_views=luma_views)

    return _run(runtime, network, image, forward, job)


def has_chroma_network(runtime: ModelRuntime, weights: str) -> bool:
    """Whether the cascade's chroma network is installed beside the colour-plane network
    `weights` (another one-channel network has no cascade)."""
    return weights == DENOISE_PLANES_WEIGHTS and runtime.has_weights([DENOISE_CHROMA_WEIGHTS])


def chroma_network(runtime: ModelRuntime, weights: str) -> LoadedNetwork | None:
    """The cascade's chroma network beside `weights`, loaded once, where it is installed."""
    if not has_chroma_network(runtime, weights):
        return None
    return load_network(runtime, DENOISE_CHROMA_WEIGHTS)


# --------------------------------------------------------------------------- restorers

#: How a colour photo is denoised where the gray network is installed: its three OPPONENT planes
#: through the gray network (None: through the colour network). PSNR [float]/[uint8], same noise
#: (`python -m benchmarks.quality --task denoise --models mwcnn,colour-bases`):
#:
#:   path                       CBSD68 σ25     CBSD68 σ50     Kodak24 σ25    Kodak24 σ50
#:   colour network (48/96/96)  29.71 / 29.63  26.41 / 26.28  30.41 / 30.28  27.12 / 26.95
#:   gray net, OPPONENT planes  30.59 / 30.26  27.38 / 26.63  31.41 / 31.12  28.31 / 27.56
#:   gray net, OPPONENT_FITTED  30.55 / 30.23  27.38 / 26.57  31.37 / 31.07  28.31 / 27.48
#:   gray net, YCBCR planes     29.97 / 29.76  26.91 / 26.27  30.89 / 30.68  27.90 / 27.23
#:   gray net, RGB planes       28.61 / 28.58  25.77 / 25.72  29.65 / 29.60  26.81 / 26.72
#:   (CBM3D: 30.80 / 30.30 on CBSD68 σ25)
#:
#: So DENOISE_WEIGHTS, the colour network, stays installed but denoises no colour photo while
#: the gray network is there: it is what makes `mwcnn` available (the registry's weights), and
#: the colour path when DENOISE_GRAY_WEIGHTS is missing. Re-measure after retraining either.
COLOUR_BASIS: ColourBasis | None = OPPONENT


def denoiser_for(runtime: ModelRuntime, image: np.ndarray) -> str:
    """The weights a denoise of ``image`` runs with.

    A gray image (one channel, or three equal ones) goes through the gray network where it is
    installed: all of its width was trained on gray, where the colour network shares it. A
    colour one goes plane by plane in COLOUR_BASIS (unless that is None) through the
    colour-plane network, or else the gray network; without either, both go through the colour
    network.
    """
    gray_installed = runtime.has_weights([DENOISE_GRAY_WEIGHTS])
    if is_gray(image):
        return DENOISE_GRAY_WEIGHTS if gray_installed else DENOISE_WEIGHTS
    if COLOUR_BASIS is not None and runtime.has_weights([DENOISE_PLANES_WEIGHTS]):
        return DENOISE_PLANES_WEIGHTS
    if COLOUR_BASIS is not None and gray_installed:
        return DENOISE_GRAY_WEIGHTS
    return DENOISE_WEIGHTS


def load_denoisers(runtime: ModelRuntime) -> list[LoadedNetwork]:
    """Load every network a denoise job may run here (the colour-plane, gray and chroma ones
    where installed, and the colour one), so that no job pays for loading them."""
    names = [DENOISE_PLANES_WEIGHTS, DENOISE_GRAY_WEIGHTS, DENOISE_WEIGHTS]
    loaded = [load_network(runtime, n) for n in names if runtime.has_weights([n])]
    chroma = chroma_network(runtime, DENOISE_PLANES_WEIGHTS)
    return loaded + ([chroma] if chroma else [])


def denoise(runtime: ModelRuntime, job: RestoreJob) -> Restored:
    """Remove Gaussian-like noise of level ``job.sigma`` (0–255 scale; None = estimate)."""
    sigma = resolve_sigma(job.pixels, job.sigma)
    weights = denoiser_for(runtime, job.pixels)
    image = job.pixels
    if weights == DENOISE_WEIGHTS:
        out = run_at_level(runtime, weights, image, level_from_sigma(sigma), job)
    elif is_gray(image):
        plane = run_at_level(runtime, weights, image if image.ndim == 2 else image[..., 0],
                           level_from_sigma(sigma), job)
        out = plane if image.ndim == 2 else np.repeat(plane[..., None], image.shape[2], axis=2)
    else:
        assert COLOUR_BASIS is not None
        out = denoise_colour_planes(runtime, weights, image, sigma, COLOUR_BASIS, job)
    details: dict[str, object] = {"sigma": round(sigma, 2),
                                  "weights_sha256": runtime.weights_sha256(weights)}
    if weights != DENOISE_WEIGHTS and not is_gray(image):
        details["colour_planes"] = COLOUR_BASIS.name if COLOUR_BASIS else None
        if has_chroma_network(runtime, weights):
            details["chroma_weights_sha256"] = runtime.weights_sha256(DENOISE_CHROMA_WEIGHTS)
    return Restored(out, details)


def deblock(runtime: ModelRuntime, job: RestoreJob) -> Restored:
    """Remove JPEG blocking/ringing of an image saved at ``job.quality`` (None = assume 50)."""
    quality = resolve_quality(job.quality)
    out = run_at_level(runtime, ARTIFACTS_WEIGHTS, job.pixels, level_from_quality(quality), job)
    return Restored(out, {"quality": quality,
                          "weights_sha256": runtime.weights_sha256(ARTIFACTS_WEIGHTS)})
