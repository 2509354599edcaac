"""The denoise and artifacts restorers: classic and network paths, any size in → same size out."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from skimage import data

from shared.errors import UnprocessableInput
from shared.ml import registry
from shared.ml.hashing import file_sha256
from shared.ml.models.mwcnn import MWCNN, MWCNNConfig, save_mwcnn
from shared.ml.restorers import mwcnn
from shared.ml.restorers.common import RestoreJob, resolve_quality, resolve_sigma
from shared.ml.runtime import ModelRuntime
from training.degradations import jpeg_compress


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(float) - b.astype(float)) ** 2)
    return float(10 * np.log10(255.0**2 / mse))


def noisy(clean: np.ndarray, sigma: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.clip(clean + rng.normal(0, sigma, clean.shape), 0, 255).astype(np.uint8)


def cpu_runtime(weights_dir: Path) -> ModelRuntime:
    return ModelRuntime(weights_dir, torch.device("cpu"))


def denoised(runtime: ModelRuntime, image: np.ndarray, sigma: float) -> tuple[np.ndarray, str]:
    """The network's output and the sha256 of the weights the job record names."""
    result = registry.restore(runtime, "denoise", "mwcnn", RestoreJob(image, sigma=sigma))
    return result.pixels, result.details["weights_sha256"]


@pytest.fixture(scope="module")
def tiny_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random MWCNN saved the way shipped weights are, under both task names."""
    torch.manual_seed(0)
    model = MWCNN(MWCNNConfig(widths=(8, 8, 8), block_depth=2, bottom_depth=2)).eval()
    folder = tmp_path_factory.mktemp("weights")
    for name in (mwcnn.DENOISE_WEIGHTS, mwcnn.ARTIFACTS_WEIGHTS):
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
    (folder / mwcnn.DENOISE_WEIGHTS).write_bytes(
        (tiny_weights / mwcnn.DENOISE_WEIGHTS).read_bytes())
    runtime = cpu_runtime(folder)
    image = data.camera()[:40, :48]
    colour_out, colour_sha = denoised(runtime, image, 25)
    assert colour_sha == file_sha256(folder / mwcnn.DENOISE_WEIGHTS)
    photo = data.astronaut()[:40, :48]
    assert denoised(runtime, photo, 25)[1] == colour_sha  # no gray network: the colour one
    save_mwcnn(gray_model, folder / mwcnn.DENOISE_GRAY_WEIGHTS)

    gray_out, gray_sha = denoised(runtime, image, 25)
    assert gray_sha == file_sha256(folder / mwcnn.DENOISE_GRAY_WEIGHTS)
    assert gray_sha != colour_sha and not np.array_equal(gray_out, colour_out)
    as_rgb, rgb_sha = denoised(runtime, np.dstack([image] * 3), 25)
    assert rgb_sha == gray_sha and as_rgb.shape == (40, 48, 3)
    assert all(np.array_equal(as_rgb[..., c], gray_out) for c in range(3))
    # With the gray network installed a colour photo goes through it too, on decorrelated
    # colour planes (it measured better than the colour network: mwcnn.COLOUR_BASIS).
    assert denoised(runtime, photo, 25)[1] == gray_sha
    # what the job record names
    assert mwcnn.denoiser_for(runtime, image) == mwcnn.DENOISE_GRAY_WEIGHTS
    assert mwcnn.denoiser_for(runtime, photo) == mwcnn.DENOISE_GRAY_WEIGHTS


def test_classic_denoise_improves_psnr(tmp_path: Path) -> None:
    clean = data.camera()[100:228, 100:260]
    degraded = noisy(clean, 25)
    out = registry.restore(cpu_runtime(tmp_path), "denoise", "classic",
                           RestoreJob(degraded, sigma=25)).pixels
    assert psnr(out, clean) > psnr(degraded, clean) + 3


def test_classic_deblocking_keeps_size_and_colour(tmp_path: Path) -> None:
    clean = data.astronaut()[:72, :88]
    out = registry.restore(cpu_runtime(tmp_path), "artifacts", "classic",
                           RestoreJob(jpeg_compress(clean, 10), quality=10)).pixels
    assert out.shape == clean.shape and out.dtype == np.uint8


@pytest.mark.parametrize("shape", [(37, 53), (64, 64), (21, 90, 3), (9, 9, 3)])
def test_network_any_size_in_same_size_out(tiny_weights: Path, shape: tuple[int, ...]) -> None:
    runtime = cpu_runtime(tiny_weights)
    image = np.random.default_rng(1).integers(0, 256, shape, dtype=np.uint8)
    out, sha = denoised(runtime, image, 25)
    assert out.shape == image.shape and out.dtype == np.uint8
    assert len(sha) == 64
    deblocked = registry.restore(runtime, "artifacts", "mwcnn", RestoreJob(image, quality=20))
    assert deblocked.pixels.shape == image.shape
    assert deblocked.details["weights_sha256"] == file_sha256(
        tiny_weights / mwcnn.ARTIFACTS_WEIGHTS)


def test_network_reports_progress_and_cancels(tiny_weights: Path) -> None:
    from shared.ml.tiling import Cancelled

    runtime = cpu_runtime(tiny_weights)
    image = np.zeros((40, 40), np.uint8)
    fractions: list[float] = []
    registry.restore(runtime, "denoise", "mwcnn",
                     RestoreJob(image, sigma=10, on_progress=fractions.append))
    assert fractions and fractions[-1] == 1.0
    with pytest.raises(Cancelled):
        registry.restore(runtime, "denoise", "mwcnn",
                         RestoreJob(image, sigma=10, should_cancel=lambda: True))


def test_levels_are_resolved_within_the_served_ranges() -> None:
    clean = data.camera()[:128, :128]
    estimated = resolve_sigma(noisy(clean, 20), None)
    assert 14 < estimated < 26
    assert resolve_sigma(clean, 500) == 75.0
    assert resolve_quality(None) == 50 and resolve_quality(5) == 10


def test_unknown_or_uninstalled_model_is_a_clear_error(tmp_path: Path) -> None:
    runtime = cpu_runtime(tmp_path)  # no weights at all
    image = np.zeros((8, 8), np.uint8)
    with pytest.raises(UnprocessableInput, match="no model"):
        registry.restore(runtime, "denoise", "magic", RestoreJob(image, sigma=10))
    with pytest.raises(UnprocessableInput, match="not installed"):
        registry.restore(runtime, "denoise", "mwcnn", RestoreJob(image, sigma=10))


def test_ensemble_is_only_for_the_network(tmp_path: Path) -> None:
    runtime = cpu_runtime(tmp_path)
    image = np.zeros((16, 16), np.uint8)
    with pytest.raises(UnprocessableInput, match="no ensemble"):
        registry.restore(runtime, "denoise", "classic", RestoreJob(image, sigma=10, ensemble=True))
    with pytest.raises(UnprocessableInput, match="no ensemble"):
        registry.restore(runtime, "artifacts", "classic",
                         RestoreJob(image, quality=30, ensemble=True))
    assert registry.offers_ensemble("denoise", "mwcnn")
    assert registry.offers_ensemble("artifacts", "mwcnn")
