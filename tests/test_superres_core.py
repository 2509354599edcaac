"""The superres service's pure functions: ×4 sizes, gray and colour, PSNR↔GAN strength."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from services.superres import networks
from services.superres.core import upscale
from shared.errors import UnprocessableInput
from shared.ml.models.esrgan import RRDBNet, config_metadata


def save_tiny(path: Path, seed: int) -> None:
    torch.manual_seed(seed)
    model = RRDBNet(features=8, blocks=1, growth=4)
    tensors = {k: v.half().contiguous() for k, v in model.state_dict().items()}
    save_file(tensors, str(path), metadata=config_metadata(model.config))


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("weights")
    save_tiny(folder / networks.PSNR_WEIGHTS, 0)
    return folder


@pytest.mark.parametrize("shape", [(13, 17), (20, 31, 3)])
def test_network_output_is_exactly_four_times_larger(weights: Path, shape: tuple) -> None:
    image = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)
    out, weights_id = networks.esrgan_upscale(image, weights_dir=weights)
    assert out.shape[:2] == (shape[0] * 4, shape[1] * 4)
    assert out.ndim == len(shape) and out.dtype == np.uint8
    assert len(weights_id) == 64


def test_strength_interpolates_between_psnr_and_gan(weights: Path, tmp_path: Path) -> None:
    for name in (networks.PSNR_WEIGHTS,):
        (tmp_path / name).write_bytes((weights / name).read_bytes())
    save_tiny(tmp_path / networks.GAN_WEIGHTS, 1)
    image = np.random.default_rng(1).integers(0, 256, (12, 12, 3), dtype=np.uint8)
    psnr_only, _ = networks.esrgan_upscale(image, 0.0, weights_dir=weights)
    at_zero, _ = networks.esrgan_upscale(image, 0.0, weights_dir=tmp_path)
    at_one, gan_id = networks.esrgan_upscale(image, 1.0, weights_dir=tmp_path)
    assert np.array_equal(psnr_only, at_zero)
    assert not np.array_equal(at_zero, at_one)
    assert "@1.00" in gan_id


def test_operator_checkpoint_in_the_official_layout(weights: Path, tmp_path: Path) -> None:
    from shared.ml.models.esrgan import load_rrdbnet, to_layout

    model = load_rrdbnet(weights / networks.PSNR_WEIGHTS)
    official = tmp_path / "RRDB_ESRGAN_x4.pth"
    torch.save(to_layout(model.state_dict(), "esrgan"), official)
    image = np.random.default_rng(2).integers(0, 256, (10, 10, 3), dtype=np.uint8)
    ours, _ = networks.esrgan_upscale(image, weights_dir=weights)
    theirs, _ = networks.esrgan_upscale(image, weights_dir=weights, override=str(official))
    assert np.array_equal(ours, theirs)


def test_classic_bicubic_and_bad_scale() -> None:
    image = np.zeros((5, 7, 3), np.uint8)
    assert upscale(image, 4, "classic").shape == (20, 28, 3)
    with pytest.raises(UnprocessableInput, match="4x"):
        upscale(image, 2, "classic")
    with pytest.raises(UnprocessableInput, match="no ensemble"):
        upscale(image, 4, "classic", ensemble=True)
