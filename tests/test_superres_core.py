"""The superres restorers: ×4 sizes, gray and colour, PSNR↔GAN strength, operator checkpoints."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from shared.errors import UnprocessableInput
from shared.ml import registry
from shared.ml.hashing import file_sha256
from shared.ml.models.esrgan import RRDBNet, config_metadata
from shared.ml.restorers import esrgan
from shared.ml.restorers.common import RestoreJob
from shared.ml.runtime import ModelRuntime


def save_tiny(path: Path, seed: int) -> None:
    torch.manual_seed(seed)
    model = RRDBNet(features=8, blocks=1, growth=4)
    tensors = {k: v.half().contiguous() for k, v in model.state_dict().items()}
    save_file(tensors, str(path), metadata=config_metadata(model.config))


def cpu_runtime(weights_dir: Path, **kwargs: object) -> ModelRuntime:
    return ModelRuntime(weights_dir, torch.device("cpu"), **kwargs)  # type: ignore[arg-type]


def upscaled(runtime: ModelRuntime, image: np.ndarray, strength: float = 0.0) -> np.ndarray:
    job = RestoreJob(image, strength=strength)
    return registry.restore(runtime, "superres", "esrgan", job).pixels


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("weights")
    save_tiny(folder / esrgan.PSNR_WEIGHTS, 0)
    return folder


@pytest.mark.parametrize("shape", [(13, 17), (20, 31, 3)])
def test_network_output_is_exactly_four_times_larger(weights: Path, shape: tuple) -> None:
    runtime = cpu_runtime(weights)
    image = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)
    result = registry.restore(runtime, "superres", "esrgan", RestoreJob(image))
    out = result.pixels
    assert out.shape[:2] == (shape[0] * 4, shape[1] * 4)
    assert out.ndim == len(shape) and out.dtype == np.uint8
    assert result.details["weights_sha256"] == file_sha256(weights / esrgan.PSNR_WEIGHTS)
    assert esrgan.load_network(runtime).weights_id == result.details["weights_sha256"]


def test_strength_interpolates_between_psnr_and_gan(weights: Path, tmp_path: Path) -> None:
    for name in (esrgan.PSNR_WEIGHTS,):
        (tmp_path / name).write_bytes((weights / name).read_bytes())
    save_tiny(tmp_path / esrgan.GAN_WEIGHTS, 1)
    psnr_runtime, both_runtime = cpu_runtime(weights), cpu_runtime(tmp_path)
    assert not registry.offers_strength("superres", "esrgan", weights)
    assert registry.offers_strength("superres", "esrgan", tmp_path)
    image = np.random.default_rng(1).integers(0, 256, (12, 12, 3), dtype=np.uint8)
    psnr_only = upscaled(psnr_runtime, image, 0.0)
    at_zero = upscaled(both_runtime, image, 0.0)
    at_one = upscaled(both_runtime, image, 1.0)
    assert np.array_equal(psnr_only, at_zero)
    assert not np.array_equal(at_zero, at_one)
    gan_id = esrgan.load_network(both_runtime, 1.0).weights_id
    assert gan_id.startswith(file_sha256(tmp_path / esrgan.PSNR_WEIGHTS))
    assert file_sha256(tmp_path / esrgan.GAN_WEIGHTS) in gan_id and "@1.00" in gan_id


def test_operator_checkpoint_in_the_official_layout(weights: Path, tmp_path: Path) -> None:
    from shared.ml.models.esrgan import load_rrdbnet, to_layout

    model = load_rrdbnet(weights / esrgan.PSNR_WEIGHTS)
    official = tmp_path / "RRDB_ESRGAN_x4.pth"
    torch.save(to_layout(model.state_dict(), "esrgan"), official)
    image = np.random.default_rng(2).integers(0, 256, (10, 10, 3), dtype=np.uint8)
    ours = upscaled(cpu_runtime(weights), image)
    operator = cpu_runtime(weights, weights_overrides={esrgan.PSNR_WEIGHTS: official})
    result = registry.restore(operator, "superres", "esrgan", RestoreJob(image))
    assert np.array_equal(ours, result.pixels)
    # The checkpoint was what ran, not the shipped file beside it.
    assert result.details["weights_sha256"] == file_sha256(official)
    assert esrgan.load_network(operator).weights_id == file_sha256(official)


def test_classic_bicubic_and_bad_scale(tmp_path: Path) -> None:
    runtime = cpu_runtime(tmp_path)
    image = np.zeros((5, 7, 3), np.uint8)
    classic = registry.restore(runtime, "superres", "classic", RestoreJob(image, scale=4))
    assert classic.pixels.shape == (20, 28, 3)
    with pytest.raises(UnprocessableInput, match="4x"):
        registry.restore(runtime, "superres", "classic", RestoreJob(image, scale=2))
    with pytest.raises(UnprocessableInput, match="no ensemble"):
        registry.restore(runtime, "superres", "classic", RestoreJob(image, ensemble=True))
