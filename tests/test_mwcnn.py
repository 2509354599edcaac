"""MWCNN: shapes, wavelet exactness, fixed ops, strict export/load round trip (tiny configs)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch

from shared.ml.models.mwcnn import (
    MWCNN,
    GroupedHaarIWT,
    MWCNNConfig,
    fold_batchnorm,
    fuse_wavelets,
    gray_from_colour,
    haar_dwt,
    haar_iwt,
    load_mwcnn,
    read_mwcnn_metadata,
    run_any_size,
    save_mwcnn,
)

TINY = MWCNNConfig(widths=(8, 16, 16), block_depth=2, bottom_depth=2)


def trained_looking(config: MWCNNConfig = TINY) -> MWCNN:
    """A tiny MWCNN whose zero-initialised last conv is randomised (else output == input)."""
    model = MWCNN(config)
    with torch.no_grad():
        model.dec1[-1].weight.normal_(0, 0.05)
    return model


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_paper_defaults() -> None:
    cfg = MWCNNConfig()
    assert cfg.widths == (160, 256, 256)
    assert (cfg.block_depth, cfg.bottom_depth) == (4, 8)  # 4+4+8+4+4 = 24 conv layers
    convs = [m for m in MWCNN(cfg).modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) == 24


@pytest.mark.parametrize("shape", [(1, 3, 8, 8), (2, 3, 32, 48), (1, 3, 64, 24)])
def test_tiny_shapes(shape: tuple[int, int, int, int]) -> None:
    model = MWCNN(TINY).eval()
    x = torch.rand(shape)
    with torch.no_grad():
        assert model(x, 25 / 255).shape == x.shape
        assert model(x, torch.full((shape[0],), 0.1)).shape == x.shape


def test_rejects_sizes_not_multiple_of_8() -> None:
    with pytest.raises(ValueError, match="multiple of 8"):
        MWCNN(TINY)(torch.rand(1, 3, 30, 32), 0.1)


@pytest.mark.parametrize("size", [(1, 1), (5, 7), (17, 30), (33, 8)])
def test_run_any_size_keeps_size(size: tuple[int, int]) -> None:
    model = trained_looking().eval()
    x = torch.rand(1, 3, *size)
    with torch.no_grad():
        out = run_any_size(model, x, 0.1)
    assert out.shape == x.shape and torch.isfinite(out).all()


def test_starts_as_identity() -> None:
    x = torch.rand(1, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(MWCNN(TINY).eval()(x, 0.3), x)


def test_level_is_required_and_used() -> None:
    model = trained_looking().eval()
    x = torch.rand(1, 3, 16, 16)
    with pytest.raises(ValueError):
        model(x)
    with torch.no_grad():
        assert not torch.allclose(model(x, 0.0), model(x, 0.5))


def test_channels_last_matches() -> None:
    model = trained_looking().eval()
    x = torch.rand(2, 3, 16, 24)
    with torch.no_grad():
        ref = model(x, 0.2)
        out = model.to(memory_format=torch.channels_last)(
            x.contiguous(memory_format=torch.channels_last), 0.2
        )
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)


def with_trained_batchnorm(model: MWCNN) -> MWCNN:
    """Give every BN non-trivial running statistics and affine parameters."""
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.2, 3.0)
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.2, 0.2)
    return model


def test_fold_batchnorm_is_the_eval_function() -> None:
    model = with_trained_batchnorm(trained_looking()).eval()
    folded = fold_batchnorm(model).eval()
    assert not folded.config.batch_norm
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    x = torch.rand(2, 3, 16, 24)
    with torch.no_grad():
        torch.testing.assert_close(folded(x, 0.2), model(x, 0.2), rtol=1e-5, atol=1e-5)


def test_fold_batchnorm_without_bn_is_identity_op() -> None:
    model = MWCNN(MWCNNConfig(widths=(8, 16, 16), block_depth=2, bottom_depth=2, batch_norm=False))
    assert fold_batchnorm(model) is model


@pytest.mark.parametrize("config", [
    replace(TINY, batch_norm=False),
    replace(TINY, batch_norm=False, in_channels=1, guide_channels=3),
    replace(TINY, batch_norm=False, level_channel=False, widths=(4, 8, 12)),
])
def test_wavelet_fused_form_is_the_same_function(config: MWCNNConfig) -> None:
    model = MWCNN(config)
    with torch.no_grad():
        for parameter in model.parameters():  # every weight and bias, none left at zero
            parameter.normal_(0, 0.1)
    fused = fuse_wavelets(model.eval())
    assert fused.config == config and not any(
        isinstance(m, (type(model.dwt))) for m in fused.modules())
    x = torch.rand(2, config.in_channels, 16, 24)
    guide = torch.rand(2, config.guide_channels, 16, 24) if config.guide_channels else None
    with torch.no_grad():
        expected = model(x, 0.3, guide)
        assert (expected - x).abs().max() > 1e-2  # not trivially the identity
        torch.testing.assert_close(fused(x, 0.3, guide), expected, rtol=1e-5, atol=1e-5)
        cl = x.contiguous(memory_format=torch.channels_last)
        torch.testing.assert_close(fused(cl, 0.3, guide), expected, rtol=1e-5, atol=1e-5)
    fused_bf16 = fuse_wavelets(model.eval())
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        assert fused_bf16(x, 0.3, guide).dtype == torch.float32  # the input's dtype out


def test_wavelet_fusion_needs_batchnorm_folded_and_checks_inputs() -> None:
    with pytest.raises(ValueError, match="fold_batchnorm"):
        fuse_wavelets(MWCNN(TINY))
    fused = fuse_wavelets(MWCNN(replace(TINY, batch_norm=False)))
    with pytest.raises(ValueError, match="multiple of 8"):
        fused(torch.rand(1, 3, 30, 32), 0.1)
    with pytest.raises(ValueError, match="level"):
        fused(torch.rand(1, 3, 32, 32))


def test_gray_from_colour_is_the_colour_network_on_replicated_gray() -> None:
    colour = MWCNN(replace(TINY, batch_norm=False))
    with torch.no_grad():
        for parameter in colour.parameters():  # every weight, the level inputs included
            parameter.normal_(0, 0.1)
    gray = gray_from_colour(colour).eval()
    assert gray.config.in_channels == 1 and gray.config.widths == TINY.widths
    x = torch.rand(2, 1, 16, 24)
    with torch.no_grad():
        expected = colour.eval()(x.expand(-1, 3, -1, -1), 0.1).mean(1, keepdim=True)
        torch.testing.assert_close(gray(x, 0.1), expected, rtol=1e-5, atol=1e-5)
        # and not trivially: the colour channels differ, so the average is a real reduction
        assert colour(x.expand(-1, 3, -1, -1), 0.1).std(1).max() > 1e-3
    assert gray_from_colour(gray) is gray


def test_dwt_iwt_perfect_reconstruction() -> None:
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(3, 5, 32, 48, generator=gen)
    y = haar_dwt(x)
    assert y.shape == (3, 20, 16, 24)
    assert (haar_iwt(y) - x).abs().max().item() <= 2e-7


def test_dwt_is_orthonormal_haar() -> None:
    x = torch.randn(2, 3, 16, 16)
    y = haar_dwt(x)
    torch.testing.assert_close(y.pow(2).sum(), x.pow(2).sum(), rtol=1e-5, atol=1e-4)
    const = haar_dwt(torch.full((1, 1, 4, 4), 3.0))
    assert torch.allclose(const[0, :, 0, 0], torch.tensor([6.0, 0.0, 0.0, 0.0]))


def test_wavelets_stay_fp32_under_autocast() -> None:
    x = torch.rand(1, 4, 8, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert haar_dwt(x.bfloat16()).dtype == torch.float32
        assert haar_iwt(x.bfloat16()).dtype == torch.float32


def test_grouped_iwt_is_haar_iwt_on_channel_major_bands() -> None:
    channels = 5
    bands = torch.randn(2, 4 * channels, 6, 10)  # band-major, as haar_dwt writes them
    channel_major = bands.unflatten(1, (4, channels)).transpose(1, 2).flatten(1, 2)
    iwt = GroupedHaarIWT(channels)
    assert not iwt.state_dict()  # the kernel is built, not stored
    expected = haar_iwt(bands)
    torch.testing.assert_close(iwt(channel_major), expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(haar_dwt(iwt(channel_major)), bands, rtol=1e-5, atol=1e-5)
    cl = channel_major.contiguous(memory_format=torch.channels_last)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        reduced = iwt(cl.bfloat16())
    assert reduced.dtype == torch.bfloat16
    torch.testing.assert_close(reduced.float(), expected, rtol=2e-2, atol=2e-2)


def test_wavelets_have_no_state() -> None:
    model = MWCNN(TINY)
    assert not any(k.startswith(("dwt", "iwt")) for k in model.state_dict())
    assert not list(model.dwt.parameters()) and not list(model.iwt.parameters())


def test_export_load_roundtrip_strict(tmp_path: Path) -> None:
    model = trained_looking()
    with torch.no_grad():  # non-trivial BN statistics so they must survive the round trip
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    model.eval()
    path = tmp_path / "tiny.safetensors"
    save_mwcnn(model, path, metadata={"task": "denoise"})
    loaded = load_mwcnn(path)
    assert loaded.config == TINY
    assert read_mwcnn_metadata(path)["task"] == "denoise"
    x = torch.rand(1, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x, 0.1), model(x, 0.1), rtol=0, atol=5e-3)


def test_load_rejects_extra_or_missing_keys(tmp_path: Path) -> None:
    from safetensors.torch import load_file, save_file

    path = tmp_path / "tiny.safetensors"
    save_mwcnn(MWCNN(TINY), path)
    meta = read_mwcnn_metadata(path)
    tensors = load_file(str(path))
    extra = dict(tensors, bogus=torch.zeros(1))
    save_file(extra, str(tmp_path / "extra.safetensors"), metadata=meta)
    with pytest.raises(KeyError, match="bogus"):
        load_mwcnn(tmp_path / "extra.safetensors")
    missing = dict(tensors)
    missing.pop("enc1.0.weight")
    save_file(missing, str(tmp_path / "missing.safetensors"), metadata=meta)
    with pytest.raises(KeyError, match=r"enc1\.0\.weight"):
        load_mwcnn(tmp_path / "missing.safetensors")
