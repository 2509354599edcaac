"""A colour photo denoised by the gray network in a decorrelated colour space (CBM3D's idea)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from skimage import data

from shared.ml import colour_planes, registry
from shared.ml.hashing import file_sha256
from shared.ml.inference import self_ensemble
from shared.ml.models.mwcnn import MWCNN, MWCNNConfig, level_from_sigma, save_mwcnn, with_guides
from shared.ml.restorers import mwcnn
from shared.ml.restorers.common import RestoreJob, resolve_sigma
from shared.ml.runtime import ModelRuntime

TINY = {"widths": (8, 8, 8), "block_depth": 2, "bottom_depth": 2}
#: What the shipped colour-plane network must add over the gray one on colour photos at σ 25
#: (measured 0.58 dB on these crops when it shipped: 0.26, 1.21 and 0.26).
PLANES_OVER_GRAY_MARGIN_DB = 0.1


def _tiny(in_channels: int, seed: int) -> MWCNN:
    torch.manual_seed(seed)
    model = MWCNN(MWCNNConfig(in_channels=in_channels, **TINY)).eval()  # type: ignore[arg-type]
    with torch.no_grad():
        model.dec1[-1].weight.normal_(0, 0.05)  # not the identity
    return model


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Both denoisers, tiny and seeded, saved the way shipped weights are."""
    folder = tmp_path_factory.mktemp("weights")
    save_mwcnn(_tiny(3, 0), folder / mwcnn.DENOISE_WEIGHTS)
    save_mwcnn(_tiny(1, 1), folder / mwcnn.DENOISE_GRAY_WEIGHTS)
    return folder


def _runtime(folder: Path) -> ModelRuntime:
    # fp32 everywhere: the comparisons below are exact up to rounding
    return ModelRuntime(folder, torch.device("cpu"), bf16=False)


def _all_rgb_levels() -> torch.Tensor:
    """Every corner of the RGB cube and a random sample of uint8 colours, as N×3×1×1 in [0, 1]."""
    corners = torch.tensor([[r, g, b] for r in (0, 1) for g in (0, 1) for b in (0, 1)],
                           dtype=torch.float32)
    sample = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (5000, 3))) / 255.0
    return torch.cat([corners, sample.float()])[:, :, None, None]


def _luminance(net: torch.nn.Module, plane: torch.Tensor, level: float,
               guide: torch.Tensor | None = None) -> torch.Tensor:
    """The luminance as the service restores it: the network on the plane and on its quarter
    turn (the guide turned with it), the second turned back, the two averaged."""
    assert mwcnn.LUMA_VIEWS == 2

    def net_on(x: torch.Tensor, g: torch.Tensor | None) -> torch.Tensor:
        return net(x, level) if g is None else net(x, level, g)

    def quarter(t: torch.Tensor) -> torch.Tensor:
        return torch.rot90(t, 1, dims=(2, 3))

    turned = net_on(quarter(plane), None if guide is None else quarter(guide))
    return (net_on(plane, guide) + torch.rot90(turned, -1, dims=(2, 3))) / 2


def test_the_opponent_transform_is_orthonormal_and_round_trips() -> None:
    m = np.array(colour_planes.OPPONENT_ORTHONORMAL)
    np.testing.assert_allclose(m @ m.T, np.eye(3), atol=1e-12)
    for basis in colour_planes.COLOUR_BASES:
        rgb = _all_rgb_levels()
        back = basis.to_rgb(basis.to_planes(rgb))
        assert torch.equal(back.mul(255).round(), rgb.mul(255).round()), basis.name
        assert float((back - rgb).abs().max()) < 1e-6


def test_the_planes_sit_in_the_gray_networks_range() -> None:
    for basis in (colour_planes.OPPONENT_FITTED, colour_planes.YCBCR, colour_planes.RGB):
        planes = basis.to_planes(_all_rgb_levels())
        assert float(planes.min()) >= -1e-6 and float(planes.max()) <= 1 + 1e-6, basis.name
    # the fitted opponent planes span exactly [0, 1]
    planes = colour_planes.OPPONENT_FITTED.to_planes(_all_rgb_levels())
    np.testing.assert_allclose(planes.amin(dim=(0, 2, 3)), 0, atol=1e-6)
    np.testing.assert_allclose(planes.amax(dim=(0, 2, 3)), 1, atol=1e-6)
    # the shipped ones: luminance in [0, 1], chroma centred on 0.5 (±1/√2, ±2/√6 at most)
    lo, hi = colour_planes.OPPONENT.to_planes(_all_rgb_levels()).aminmax(dim=0)
    np.testing.assert_allclose(lo.flatten(), [0, 0.5 - 2**-0.5, 0.5 - (2 / 3) ** 0.5], atol=1e-6)
    np.testing.assert_allclose(hi.flatten(), [1, 0.5 + 2**-0.5, 0.5 + (2 / 3) ** 0.5], atol=1e-6)
    # and a gray pixel has no chroma
    gray = colour_planes.OPPONENT.to_planes(torch.full((1, 3, 1, 1), 0.3))
    np.testing.assert_allclose(gray.flatten(), [0.3, 0.5, 0.5], atol=1e-6)


@pytest.mark.parametrize("basis", [colour_planes.OPPONENT, colour_planes.OPPONENT_FITTED])
def test_white_noise_stays_white_with_the_stated_sigma_per_plane(
    basis: colour_planes.ColourBasis,
) -> None:
    sigma = 25 / 255
    noise = torch.from_numpy(np.random.default_rng(1).normal(0, sigma, (1, 3, 400, 500)))
    planes = basis.to_planes(noise.float()) - torch.tensor(basis.offset)[None, :, None, None]
    flat = planes[0].reshape(3, -1).double().numpy()
    # σ per plane: its gain times σ (1 % for 200,000 samples is > 6 standard errors)
    np.testing.assert_allclose(flat.std(axis=1), np.array(basis.noise_gains) * sigma, rtol=0.01)
    # independent planes: no correlation between them (standard error 1/√n ≈ 0.002)
    corr = np.corrcoef(flat)
    assert np.abs(corr - np.eye(3)).max() < 0.01
    # and still white: no correlation between neighbouring pixels
    for plane in planes[0].double().numpy():
        assert abs(np.corrcoef(plane[:, 1:].ravel(), plane[:, :-1].ravel())[0, 1]) < 0.01
    # the orthonormal transform itself keeps σ in every plane
    matrix = torch.tensor(colour_planes.OPPONENT_ORTHONORMAL, dtype=noise.dtype)
    ortho = torch.einsum("ck,nkhw->nchw", matrix, noise)
    np.testing.assert_allclose(ortho[0].reshape(3, -1).std(dim=1).numpy(), sigma, rtol=0.01)


def test_a_colour_photo_goes_through_the_gray_network_plane_by_plane(weights: Path) -> None:
    runtime = _runtime(weights)
    photo = data.astronaut()[100:140, 150:198]  # 40×48: one tile, no padding
    result = registry.restore(runtime, "denoise", "mwcnn", RestoreJob(photo, sigma=25))
    assert result.pixels.shape == photo.shape and result.pixels.dtype == np.uint8
    assert mwcnn.COLOUR_BASIS is not None
    assert result.details["weights_sha256"] == file_sha256(weights / mwcnn.DENOISE_GRAY_WEIGHTS)
    assert result.details["sigma"] == 25
    assert result.details["colour_planes"] == mwcnn.COLOUR_BASIS.name == "opponent"

    # the same as the gray network run by hand on each plane, with each plane's own σ
    basis, gray = mwcnn.COLOUR_BASIS, mwcnn.load_network(runtime, mwcnn.DENOISE_GRAY_WEIGHTS)
    rgb = torch.from_numpy(photo.astype(np.float32) / 255).permute(2, 0, 1)[None]
    planes = basis.to_planes(rgb)
    levels = [level_from_sigma(25 * gain) for gain in basis.noise_gains]
    with torch.no_grad():
        out = torch.cat([
            _luminance(gray.module, planes[:, :1], levels[0]),
            *(gray.module(planes[:, c:c + 1], levels[c]) for c in (1, 2)),
        ], dim=1)
    expected = basis.to_rgb(out)[0].permute(1, 2, 0).clamp(0, 1).mul(255).round().byte().numpy()
    assert np.abs(result.pixels.astype(int) - expected.astype(int)).max() <= 1

    ensembled = registry.restore(runtime, "denoise", "mwcnn",
                                 RestoreJob(photo, sigma=25, ensemble=True))
    assert ensembled.pixels.shape == photo.shape
    assert ensembled.details["weights_sha256"] == result.details["weights_sha256"]
    assert not np.array_equal(ensembled.pixels, result.pixels)
    # x8 turns every plane 8 ways: one view of the luminance within each (not 16)
    with torch.no_grad():
        by_hand = self_ensemble(lambda b: colour_planes.denoise_planes(
            lambda x, level, _guide: gray.module(x, level), b, 25.0, basis, guided=False))(rgb)
    by_hand_pixels = by_hand[0].permute(1, 2, 0).clamp(0, 1).mul(255).round().byte().numpy()
    assert np.abs(ensembled.pixels.astype(int) - by_hand_pixels.astype(int)).max() <= 1


def test_gray_photos_and_a_colour_only_install_keep_their_paths(
    weights: Path, tmp_path: Path
) -> None:
    runtime = _runtime(weights)
    gray = data.camera()[:40, :48]
    alone = registry.restore(runtime, "denoise", "mwcnn", RestoreJob(gray, sigma=25))
    as_rgb = registry.restore(runtime, "denoise", "mwcnn",
                              RestoreJob(np.dstack([gray] * 3), sigma=25))
    assert as_rgb.pixels.shape == (40, 48, 3)
    assert all(np.array_equal(as_rgb.pixels[..., c], alone.pixels) for c in range(3))

    # without the gray network, a colour photo goes through the colour network
    colour_only = tmp_path / "colour-only"
    colour_only.mkdir()
    (colour_only / mwcnn.DENOISE_WEIGHTS).write_bytes(
        (weights / mwcnn.DENOISE_WEIGHTS).read_bytes())
    photo = data.astronaut()[:40, :48]
    result = registry.restore(_runtime(colour_only), "denoise", "mwcnn",
                              RestoreJob(photo, sigma=25))
    assert result.pixels.shape == photo.shape
    assert result.details["weights_sha256"] == file_sha256(colour_only / mwcnn.DENOISE_WEIGHTS)

    # what a worker loads at start: every network a denoise job may run there
    assert [n.in_channels for n in mwcnn.load_denoisers(runtime)] == [1, 3]
    assert [n.in_channels for n in mwcnn.load_denoisers(_runtime(colour_only))] == [3]


def test_the_shipped_colour_path_beats_the_colour_network() -> None:
    """The measured choice of COLOUR_BASIS still holds for the shipped weights (skimage photos,
    σ 25): re-measure it (``--models mwcnn,colour-bases``) when this fails after retraining."""
    shipped = registry.SHIPPED_WEIGHTS_DIR
    if not (shipped / mwcnn.DENOISE_GRAY_WEIGHTS).is_file():
        pytest.skip("the gray network is not shipped")
    runtime = ModelRuntime(shipped, torch.device("cpu"))
    gains = []
    for clean in (data.astronaut()[:128, 200:328], data.coffee()[100:228, 200:328],
                  data.chelsea()[:128, 100:228]):
        rng = np.random.default_rng(5)
        noisy = np.clip(np.rint(clean + rng.normal(0, 25, clean.shape)), 0, 255).astype(np.uint8)
        job = RestoreJob(noisy, sigma=25)
        ours = registry.restore(runtime, "denoise", "mwcnn", job).pixels
        colour = mwcnn.run_at_level(runtime, mwcnn.DENOISE_WEIGHTS, noisy,
                                    level_from_sigma(25), job)
        mse = [np.mean((out.astype(float) - clean) ** 2) for out in (ours, colour)]
        gains.append(10 * np.log10(mse[1] / mse[0]))
    assert np.mean(gains) > 0.2


@pytest.mark.parametrize("sigma", [10.0, 25.0, 50.0])
def test_sigma_auto_reads_a_clipped_upload_with_saturated_areas(sigma: float) -> None:
    """Saturated sky and shadow hold no noise once clipped: they must not pull σ down (they
    made the estimate read 5.7/14.3/28.9 here before clipped patches were left out)."""
    clean = data.astronaut()[:192, 200:392].astype(float)
    clean[:64], clean[-48:] = 255, 0
    rng = np.random.default_rng(7)
    upload = np.clip(np.rint(clean + rng.normal(0, sigma, clean.shape)), 0, 255).astype(np.uint8)
    assert resolve_sigma(upload, None) == pytest.approx(sigma, rel=0.08)


def _tiny_guided(seed: int) -> MWCNN:
    model = with_guides(_tiny(1, seed), 3)
    with torch.no_grad():
        model.enc1[0].weight.normal_(0, 0.1)  # the guides weigh in
    return model.eval()


def test_guides_start_at_zero_weight_and_are_required() -> None:
    gray = _tiny(1, 2)
    guided = with_guides(gray, 3).eval()
    x, guide = torch.rand(2, 1, 16, 24), torch.rand(2, 3, 16, 24)
    with torch.no_grad():
        assert torch.equal(guided(x, 0.1, guide), gray(x, 0.1))
        with pytest.raises(ValueError, match="3 guide channels"):
            guided(x, 0.1)
        with pytest.raises(ValueError, match="3 guide channels"):
            guided(x, 0.1, guide[:, :2])
    with pytest.raises(ValueError, match="already"):
        with_guides(guided, 3)


def _with_plane_network(weights: Path, folder: Path) -> Path:
    """The two denoisers of `weights` and a tiny colour-plane network beside them."""
    folder.mkdir()
    for name in (mwcnn.DENOISE_WEIGHTS, mwcnn.DENOISE_GRAY_WEIGHTS):
        (folder / name).write_bytes((weights / name).read_bytes())
    save_mwcnn(_tiny_guided(3), folder / mwcnn.DENOISE_PLANES_WEIGHTS)
    return folder


def test_a_colour_photo_goes_through_the_plane_network_where_it_is_installed(
    weights: Path, tmp_path: Path
) -> None:
    folder = _with_plane_network(weights, tmp_path / "with-planes")
    runtime = _runtime(folder)
    photo = data.astronaut()[100:140, 150:198]
    result = registry.restore(runtime, "denoise", "mwcnn", RestoreJob(photo, sigma=25))
    planes_sha = file_sha256(folder / mwcnn.DENOISE_PLANES_WEIGHTS)
    assert result.details["weights_sha256"] == planes_sha
    assert result.details["colour_planes"] == "opponent"

    # each plane restored with all three noisy planes beside it, each with its own σ
    basis = colour_planes.OPPONENT
    planes_net = mwcnn.load_network(runtime, mwcnn.DENOISE_PLANES_WEIGHTS)
    rgb = torch.from_numpy(photo.astype(np.float32) / 255).permute(2, 0, 1)[None]
    planes = basis.to_planes(rgb)
    levels = [level_from_sigma(25 * gain) for gain in basis.noise_gains]
    with torch.no_grad():
        out = torch.cat([
            _luminance(planes_net.module, planes[:, :1], levels[0], planes),
            *(planes_net.module(planes[:, c:c + 1], levels[c], planes) for c in (1, 2)),
        ], dim=1)
    expected = basis.to_rgb(out)[0].permute(1, 2, 0).clamp(0, 1).mul(255).round().byte().numpy()
    assert np.abs(result.pixels.astype(int) - expected.astype(int)).max() <= 1
    without_guides = registry.restore(_runtime(weights), "denoise", "mwcnn",
                                      RestoreJob(photo, sigma=25))
    assert not np.array_equal(without_guides.pixels, result.pixels)

    # a gray photo still goes through the gray network; a worker loads all three at start
    gray = registry.restore(runtime, "denoise", "mwcnn", RestoreJob(data.camera()[:40, :48],
                                                                    sigma=25))
    assert gray.details["weights_sha256"] == file_sha256(folder / mwcnn.DENOISE_GRAY_WEIGHTS)
    loaded = mwcnn.load_denoisers(runtime)
    assert [n.module.config.guide_channels for n in loaded] == [3, 0, 0]


def test_a_chroma_network_beside_the_plane_network_restores_the_chroma_from_the_denoised_luma(
    weights: Path, tmp_path: Path
) -> None:
    folder = _with_plane_network(weights, tmp_path / "cascade")
    save_mwcnn(_tiny_guided(4), folder / mwcnn.DENOISE_CHROMA_WEIGHTS)
    runtime = _runtime(folder)
    photo = data.astronaut()[100:140, 150:198]
    result = registry.restore(runtime, "denoise", "mwcnn", RestoreJob(photo, sigma=25))
    assert result.details["weights_sha256"] == file_sha256(folder / mwcnn.DENOISE_PLANES_WEIGHTS)
    assert result.details["chroma_weights_sha256"] == file_sha256(
        folder / mwcnn.DENOISE_CHROMA_WEIGHTS)

    # the luminance as before; each chroma plane by the chroma network, which sees the
    # denoised luminance and the two noisy chroma planes
    basis = colour_planes.OPPONENT
    luma_net = mwcnn.load_network(runtime, mwcnn.DENOISE_PLANES_WEIGHTS).module
    chroma_net = mwcnn.load_network(runtime, mwcnn.DENOISE_CHROMA_WEIGHTS).module
    rgb = torch.from_numpy(photo.astype(np.float32) / 255).permute(2, 0, 1)[None]
    planes = basis.to_planes(rgb)
    levels = [level_from_sigma(25 * gain) for gain in basis.noise_gains]
    with torch.no_grad():
        luma = _luminance(luma_net, planes[:, :1], levels[0], planes)
        guide = torch.cat([luma, planes[:, 1:]], dim=1)
        out = torch.cat([luma, *(chroma_net(planes[:, c:c + 1], levels[c], guide)
                                 for c in (1, 2))], dim=1)
    expected = basis.to_rgb(out)[0].permute(1, 2, 0).clamp(0, 1).mul(255).round().byte().numpy()
    assert np.abs(result.pixels.astype(int) - expected.astype(int)).max() <= 1
    (folder / mwcnn.DENOISE_CHROMA_WEIGHTS).unlink()
    planes_only = registry.restore(_runtime(folder), "denoise", "mwcnn",
                                   RestoreJob(photo, sigma=25))
    assert "chroma_weights_sha256" not in planes_only.details
    assert not np.array_equal(planes_only.pixels[..., 0], result.pixels[..., 0])

    # a worker loads it with the others; a gray photo never goes near it
    save_mwcnn(_tiny_guided(4), folder / mwcnn.DENOISE_CHROMA_WEIGHTS)
    runtime = _runtime(folder)
    assert len(mwcnn.load_denoisers(runtime)) == 4
    gray = registry.restore(runtime, "denoise", "mwcnn",
                            RestoreJob(data.camera()[:40, :48], sigma=25))
    assert "chroma_weights_sha256" not in gray.details


def test_the_shipped_plane_network_beats_the_gray_network_on_colour_photos(
    tmp_path: Path,
) -> None:
    """What the colour-plane fine-tune added (skimage photos, σ 25, uint8 uploads)."""
    shipped = registry.SHIPPED_WEIGHTS_DIR
    if not (shipped / mwcnn.DENOISE_PLANES_WEIGHTS).is_file():
        pytest.skip("the colour-plane network is not shipped")
    gray_only = tmp_path / "gray-only"
    gray_only.mkdir()
    for name in (mwcnn.DENOISE_WEIGHTS, mwcnn.DENOISE_GRAY_WEIGHTS):
        (gray_only / name).symlink_to(shipped / name)
    with_planes = ModelRuntime(shipped, torch.device("cpu"))
    without = ModelRuntime(gray_only, torch.device("cpu"))
    gains = []
    for clean in (data.astronaut()[:128, 200:328], data.coffee()[100:228, 200:328],
                  data.chelsea()[:128, 100:228]):
        rng = np.random.default_rng(5)
        noisy = np.clip(np.rint(clean + rng.normal(0, 25, clean.shape)), 0, 255).astype(np.uint8)
        job = RestoreJob(noisy, sigma=25)
        outs = [registry.restore(r, "denoise", "mwcnn", job).pixels for r in (with_planes, without)]
        mse = [np.mean((out.astype(float) - clean) ** 2) for out in outs]
        gains.append(10 * np.log10(mse[1] / mse[0]))
    assert np.mean(gains) > PLANES_OVER_GRAY_MARGIN_DB
