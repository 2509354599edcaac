"""ESRGAN RRDBNet: shapes, the three published checkpoint layouts, interpolation, shipping."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import pytest
import torch

from shared.ml.models.esrgan import (
    RRDBNet,
    RRDBNetConfig,
    UnrecognizedCheckpointError,
    config_metadata,
    convert_state_dict,
    detect_layout,
    init_rrdbnet_,
    interpolate_state_dicts,
    load_rrdbnet,
    to_layout,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


TINY = RRDBNetConfig(in_channels=3, out_channels=3, features=8, blocks=2, growth=4, scale=4)


def tiny(seed: int = 0, **overrides: int) -> RRDBNet:
    torch.manual_seed(seed)
    return init_rrdbnet_(RRDBNet(**{**asdict(TINY), **overrides})).eval()


@torch.no_grad()
@pytest.mark.parametrize("scale", [4, 2, 1])
def test_output_is_scale_times_input(scale: int) -> None:
    x = torch.rand(2, 3, 12, 16)
    y = tiny(scale=scale)(x)
    assert y.shape == (2, 3, 12 * scale, 16 * scale)


def test_paper_defaults() -> None:
    cfg = RRDBNet().config
    assert (cfg.features, cfg.blocks, cfg.growth, cfg.scale) == (64, 23, 32, 4)


def test_own_keys_are_basicsr_naming() -> None:
    keys = set(tiny().state_dict())
    assert {
        "conv_first.weight",
        "body.1.rdb3.conv5.bias",
        "conv_body.weight",
        "conv_up1.weight",
        "conv_up2.weight",
        "conv_hr.weight",
        "conv_last.bias",
    } <= keys
    assert not any("bn" in k or "running" in k for k in keys)  # no batch norm


def test_sequential_2018_indices() -> None:
    old = to_layout(tiny().state_dict(), "sequential2018")
    assert {
        "model.0.weight",
        "model.1.sub.0.RDB1.conv1.0.weight",
        "model.1.sub.2.weight",
        "model.3.weight",
        "model.6.weight",
        "model.8.weight",
        "model.10.bias",
    } <= set(old)


@torch.no_grad()
@pytest.mark.parametrize(
    ("layout", "wrap"),
    [
        ("sequential2018", None),
        ("esrgan", None),
        ("basicsr", "params_ema"),
        ("basicsr", "params"),
        ("basicsr", None),
    ],
)
def test_layouts_load_back_identically(layout: str, wrap: str | None) -> None:
    model = tiny(features=12, blocks=3, growth=6)
    sd = to_layout(model.state_dict(), layout)
    ckpt = {wrap: sd} if wrap else sd
    assert detect_layout(sd) == layout
    loaded = load_rrdbnet(ckpt)
    assert loaded.config == model.config
    x = torch.rand(1, 3, 10, 9)
    assert torch.equal(loaded(x), model(x))


def test_params_ema_preferred_over_params() -> None:
    ema, plain = tiny(seed=1).state_dict(), tiny(seed=2).state_dict()
    sd, _, _ = convert_state_dict({"params": plain, "params_ema": ema})
    assert torch.equal(sd["conv_first.weight"], ema["conv_first.weight"])


def test_pth_and_fp16_safetensors_files(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    model = tiny()
    pth = tmp_path / "RRDB_x4.pth"
    torch.save(to_layout(model.state_dict(), "esrgan"), pth)
    assert load_rrdbnet(pth).config == model.config
    st = tmp_path / "ours.safetensors"
    fp16 = {k: v.half() for k, v in model.state_dict().items()}
    save_file(fp16, str(st), metadata=config_metadata(model.config))
    loaded = load_rrdbnet(st)
    assert loaded.config == model.config
    assert loaded.conv_first.weight.dtype == torch.float32
    wrong = config_metadata(RRDBNetConfig(features=64))
    save_file(fp16, str(st), metadata=wrong)
    with pytest.raises(UnrecognizedCheckpointError, match="metadata"):
        load_rrdbnet(st)


def test_unknown_layouts_fail_loudly() -> None:
    sd = tiny().state_dict()
    with pytest.raises(UnrecognizedCheckpointError, match="no known key layout"):
        load_rrdbnet({"encoder.weight": torch.zeros(1)})
    with pytest.raises(UnrecognizedCheckpointError):
        load_rrdbnet({**sd, "extra.weight": torch.zeros(1)})  # strict load
    esr = to_layout(sd, "esrgan")
    with pytest.raises(UnrecognizedCheckpointError, match="unexpected key"):
        load_rrdbnet({**esr, "RRDB_trunk.0.RDB4.conv1.weight": torch.zeros(1)})
    bad = dict(sd)
    bad["conv_up1.weight"] = torch.zeros(8, 8, 5, 5)
    with pytest.raises(UnrecognizedCheckpointError, match="does not fit"):
        load_rrdbnet(bad)
    with pytest.raises(UnrecognizedCheckpointError, match="non-tensor"):
        load_rrdbnet({"params": []})


def test_interpolation_endpoints_and_midpoint() -> None:
    psnr, gan = tiny(seed=1).state_dict(), tiny(seed=2).state_dict()
    at0 = interpolate_state_dicts(psnr, gan, 0.0)
    at1 = interpolate_state_dicts(psnr, gan, 1.0)
    mid = interpolate_state_dicts(psnr, gan, 0.5)
    for k in psnr:
        assert torch.equal(at0[k], psnr[k])
        assert torch.equal(at1[k], gan[k])
        torch.testing.assert_close(mid[k], (psnr[k] + gan[k]) / 2)
    with pytest.raises(ValueError):
        interpolate_state_dicts(psnr, gan, 1.5)
    with pytest.raises(ValueError):
        interpolate_state_dicts(psnr, tiny(features=10).state_dict(), 0.5)


def test_gan_stage_parts() -> None:
    import numpy as np

    from training.sr_degradations import degrade
    from training.train_esrgan import LaplacianPyramidL1, VGGStyleDiscriminator, ragan_losses

    rng = np.random.default_rng(0)
    hr = rng.integers(0, 256, (64, 48, 3), dtype=np.uint8)
    for _ in range(4):
        lr = degrade(hr, rng)
        assert lr.shape == (16, 12, 3)
        assert lr.dtype == np.uint8
    disc = VGGStyleDiscriminator(3, features=4, size=128)
    logits = disc(torch.rand(2, 3, 128, 128))
    assert logits.shape == (2, 1)
    x = torch.rand(2, 3, 64, 64)
    lap1 = LaplacianPyramidL1()
    assert float(lap1(x, x)) == 0.0
    assert float(lap1(x, x.flip(-1))) > 0.0
    # The generator's RaGAN loss falls as fakes look more real than the real batch on average.
    real = torch.zeros(4, 1)
    worse = ragan_losses(real, torch.full((4, 1), -2.0), for_generator=True)
    better = ragan_losses(real, torch.full((4, 1), 2.0), for_generator=True)
    assert float(better) < float(worse)
