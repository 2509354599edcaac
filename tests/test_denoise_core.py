"""The denoise service's pure functions: classic and network paths, any size in → same size out."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from skimage import data

from services.denoise import networks
from services.denoise.core import denoise, remove_artifacts, resolve_quality, resolve_sigma
from shared.errors import UnprocessableInput
from shared.ml.models.mwcnn import MWCNN, MWCNNConfig, save_mwcnn
from training.degradations import jpeg_compress


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(float) - b.astype(float)) ** 2)
    return float(10 * np.log10(255.0**2 / mse))


def noisy(clean: np.ndarray, sigma: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.clip(clean + rng.normal(0, sigma, clean.shape), 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def tiny_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random MWCNN saved the way shipped weights are, under both task names."""
    torch.manual_seed(0)
    model = MWCNN(MWCNNConfig(widths=(8, 8, 8), block_depth=2, bottom_depth=2)).eval()
    folder = tmp_path_factory.mktemp("weights")
    for name in (networks.DENOISE_WEIGHTS, networks.ARTIFACTS_WEIGHTS):
        save_mwcnn(model, folder / name)
    return folder


def test_a_gray_photo_goes_through_the_gray_network_where_installed(
    tiny_weights: Path, tmp_path: Path
) -> None:
    torch.manual_seed(1)
    gray_model = MWCNN(MWCNNConfig(widths=(8, 8, 8), block_depth=2, bottom_depth=2,
                                   in_channels=1)).eval()
    with torch.no_grad():
        gray_model.dec1[-1].weight.normal_(0, 0.05)  # not the identity
    folder = tmp_path / "weights"
    folder.mkdir()
    (folder / networks.DENOISE_WEIGHTS).write_bytes(
        (tiny_weights / networks.DENOISE_WEIGHTS).read_bytes())
    image = data.camera()[:40, :48]
    colour_out, colour_sha = networks.mwcnn_denoise(image, 25, weights_dir=folder)
    save_mwcnn(gray_model, folder / networks.DENOISE_GRAY_WEIGHTS)

    gray_out, gray_sha = networks.mwcnn_denoise(image, 25, weights_dir=folder)
    assert gray_sha != colour_sha and not np.array_equal(gray_out, colour_out)
    as_rgb, rgb_sha = networks.mwcnn_denoise(np.dstack([image] * 3), 25, weights_dir=folder)
    assert rgb_sha == gray_sha and as_rgb.shape == (40, 48, 3)
    assert all(np.array_equal(as_rgb[..., c], gray_out) for c in range(3))
    photo = data.astronaut()[:40, :48]
    assert networks.mwcnn_denoise(photo, 25, weights_dir=folder)[1] == colour_sha
    # what the job record names (services/denoise/service.py)
    assert networks.denoiser_for(image, folder).name == networks.DENOISE_GRAY_WEIGHTS
    assert networks.denoiser_for(photo, folder).name == networks.DENOISE_WEIGHTS


def test_classic_denoise_improves_psnr() -> None:
    clean = data.camera()[100:228, 100:260]
    degraded = noisy(clean, 25)
    assert psnr(denoise(degraded, 25, "classic"), clean) > psnr(degraded, clean) + 3


def test_classic_deblocking_keeps_size_and_colour() -> None:
    clean = data.astronaut()[:72, :88]
    out = remove_artifacts(jpeg_compress(clean, 10), 10, "classic")
    assert out.shape == clean.shape and out.dtype == np.uint8


@pytest.mark.parametrize("shape", [(37, 53), (64, 64), (21, 90, 3), (9, 9, 3)])
def test_network_any_size_in_same_size_out(tiny_weights: Path, shape: tuple[int, ...]) -> None:
    image = np.random.default_rng(1).integers(0, 256, shape, dtype=np.uint8)
    out, sha = networks.mwcnn_denoise(image, 25, weights_dir=tiny_weights)
    assert out.shape == image.shape and out.dtype == np.uint8
    assert len(sha) == 64
    out, _ = networks.mwcnn_deblock(image, 20, weights_dir=tiny_weights)
    assert out.shape == image.shape


def test_network_reports_progress_and_cancels(tiny_weights: Path) -> None:
    from shared.ml.tiling import Cancelled

    image = np.zeros((40, 40), np.uint8)
    fractions: list[float] = []
    networks.mwcnn_denoise(image, 10, tiny_weights, on_progress=fractions.append)
    assert fractions and fractions[-1] == 1.0
    with pytest.raises(Cancelled):
        networks.mwcnn_denoise(image, 10, tiny_weights, should_cancel=lambda: True)


def test_levels_are_resolved_within_the_served_ranges() -> None:
    clean = data.camera()[:128, :128]
    estimated = resolve_sigma(noisy(clean, 20), None)
    assert 14 < estimated < 26
    assert resolve_sigma(clean, 500) == 75.0
    assert resolve_quality(None) == 50 and resolve_quality(5) == 10


def test_unknown_model_is_a_clear_error() -> None:
    with pytest.raises(UnprocessableInput, match="no model"):
        denoise(np.zeros((8, 8), np.uint8), 10, "magic")


def test_ensemble_is_only_for_the_network() -> None:
    image = np.zeros((16, 16), np.uint8)
    with pytest.raises(UnprocessableInput, match="no ensemble"):
        denoise(image, 10, "classic", ensemble=True)
    with pytest.raises(UnprocessableInput, match="no ensemble"):
        remove_artifacts(image, 30, "classic", ensemble=True)
