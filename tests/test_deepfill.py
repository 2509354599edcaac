"""DeepFill v1: contextual attention on a known case, shapes, losses, and the inference window."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from shared.errors import UnprocessableInput
from shared.ml import inpaint_window, registry
from shared.ml.hashing import file_sha256
from shared.ml.inference import clear_precision_cache, save_safetensors_fp16
from shared.ml.inpaint_window import context_window, fill_through_window, telea_fill
from shared.ml.models.deepfill_contextual_attention import (
    ContextualAttention,
    DeepFillConfig,
    DeepFillV1,
    config_from_metadata,
)
from shared.ml.restorers import deepfill
from shared.ml.restorers.common import RestoreJob
from shared.ml.restorers.deepfill import inpaint, run_deepfill
from shared.ml.runtime import ModelRuntime
from shared.ml.tiling import Cancelled
from training.deepfill_critics import (
    PSNR_LOSS_EPS,
    global_critic,
    gradient_penalty,
    local_critic,
    local_crops,
    mask_boxes,
    reconstruction_loss,
    spatial_discount,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _copy_case() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Random features where the hole (and a margin around it) is an exact copy of another area."""
    gen = torch.Generator().manual_seed(0)
    features = torch.randn(1, 16, 32, 32, generator=gen)
    features[:, :, 18:30, 18:30] = features[:, :, 2:14, 2:14]
    mask = torch.zeros(1, 1, 32, 32)
    mask[:, :, 22:26, 22:26] = 1
    return features, features * (1 - mask), mask


@pytest.mark.parametrize("fuse", [True, False])
def test_contextual_attention_fills_hole_from_its_exact_copy(fuse: bool) -> None:
    truth, background, mask = _copy_case()
    layer = ContextualAttention(fuse=fuse)  # the paper's scale 10, rate 2, 3×3 patches
    out = layer(truth, background, mask)
    hole = mask.bool().expand_as(truth)
    error = (out[hole] - truth[hole]).abs().max()
    assert error < (1e-5 if fuse else 0.1)  # propagation sharpens the match to exact
    # The hole at 1/2 scale (12, 12) attends to the copy's position (4, 4) = 4·16 + 4.
    weights = layer.attention(truth, background, mask)
    assert int(weights[0, :, 12, 12].argmax()) == 4 * 16 + 4


def test_contextual_attention_without_background_is_zero_not_nan() -> None:
    features = torch.randn(2, 4, 16, 16)
    out = ContextualAttention()(features, features, torch.ones(2, 1, 16, 16))
    assert torch.isfinite(out).all() and out.abs().max() == 0


def test_generator_shapes_and_range() -> None:
    torch.manual_seed(0)
    model = DeepFillV1(width=4)
    image, mask = torch.rand(2, 3, 64, 48), torch.zeros(2, 1, 64, 48)
    mask[:, :, 20:40, 10:30] = 1
    coarse, refined = model(image, mask)
    assert coarse.shape == refined.shape == image.shape
    assert float(refined.detach().min()) >= 0 and float(refined.detach().max()) <= 1
    with pytest.raises(ValueError):
        model(torch.rand(1, 3, 60, 64), torch.zeros(1, 1, 60, 64))
    assert DeepFillV1().config == DeepFillConfig(width=32)


def test_zero_prefill_ignores_the_hole_and_telea_prefill_reads_it() -> None:
    torch.manual_seed(0)
    image = torch.rand(1, 3, 32, 32)
    mask = torch.zeros(1, 1, 32, 32)
    mask[:, :, 8:24, 8:24] = 1
    image[:, :, 8:24, 8:24] = 0.0
    other = image.clone()
    other[:, :, 8:24, 8:24] = 1.0  # different content in the hole only
    paper = DeepFillV1(width=4)
    prefilled = DeepFillV1(DeepFillConfig(width=4, prefill="telea"))
    prefilled.load_state_dict(paper.state_dict())
    with torch.no_grad():
        assert all(map(torch.equal, paper(image, mask), paper(other, mask)))
        # An untrained net barely reacts to its input; the coarse stage must still see it.
        coarse_a, coarse_b = prefilled(image, mask)[0], prefilled(other, mask)[0]
        assert float((coarse_a - coarse_b).abs().max()) > 1e-6
    with pytest.raises(ValueError, match="prefill"):
        DeepFillConfig(prefill="mean")  # type: ignore[arg-type]


def test_the_refinement_stage_sees_the_coarse_fill_in_the_hole() -> None:
    """As in the paper: stage 2 refines stage 1's result, so it must be given it."""
    torch.manual_seed(0)
    image, mask = torch.rand(1, 3, 32, 32), torch.zeros(1, 1, 32, 32)
    mask[:, :, 8:24, 8:24] = 1
    model = DeepFillV1(width=4)
    seen: list[torch.Tensor] = []
    model.refine.register_forward_pre_hook(lambda _module, args: seen.append(args[0]))
    with torch.no_grad():
        coarse, _ = model(image, mask)
    hole = mask.bool().expand(1, 3, 32, 32)
    given = seen[0][:, :3]  # [-1, 1], then the ones and mask channels
    assert torch.allclose(given[hole], (coarse * 2 - 1)[hole], atol=1e-6)
    assert float(given[hole].abs().max()) > 0.01  # the fill, not zeros


def test_prefill_is_read_from_the_weights_metadata() -> None:
    config = config_from_metadata({"width": "8", "prefill": "telea", "output": "residual"})
    assert (config.prefill, config.output) == ("telea", "residual")
    old = config_from_metadata({"width": "8"})  # files from before these fields
    assert (old.prefill, old.output) == ("zeros", "image")


def test_an_untrained_residual_network_returns_its_telea_prefill() -> None:
    torch.manual_seed(0)
    image = torch.rand(1, 3, 32, 40)
    mask = torch.zeros(1, 1, 32, 40)
    mask[:, :, 4:20, 10:30] = 1
    model = DeepFillV1(DeepFillConfig(width=4, prefill="telea", output="residual"))
    with torch.no_grad():
        coarse, refined = model(image, mask)
    assert torch.allclose(coarse, image, atol=1e-6) and torch.allclose(refined, image, atol=1e-6)
    with pytest.raises(ValueError, match="needs prefill"):
        DeepFillConfig(output="residual")


def test_telea_fill_never_reads_the_hole_and_keeps_the_rest() -> None:
    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)
    mask = np.zeros((40, 50), bool)
    mask[10:20, 15:30] = True
    other = image.copy()
    other[mask] = 255 - other[mask]
    filled = telea_fill(image, mask)
    assert np.array_equal(filled, telea_fill(other, mask))
    assert np.array_equal(filled[~mask], image[~mask])
    assert telea_fill(image[..., 0], mask).shape == (40, 50)


@pytest.mark.parametrize("max_side", [None, 48])  # the window kept whole, and shrunk
def test_a_prefilled_window_is_filled_as_a_fill_that_prefills_itself(
    max_side: int | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`prefill=True` hands `fill` the Telea-filled window and reuses that Telea fill for the
    feather where the window is not shrunk: the same result as a fill that Telea-fills its
    window itself, with one Telea run instead of two."""
    rng = np.random.default_rng(2)
    image = rng.integers(0, 256, (80, 96, 3), dtype=np.uint8)
    mask = np.zeros((80, 96), bool)
    mask[30:50, 20:60] = True

    def brighten(window: np.ndarray, hole: np.ndarray) -> np.ndarray:
        return np.clip(window.astype(np.int16) + 40, 0, 255).astype(np.uint8)

    def prefills_itself(window: np.ndarray, hole: np.ndarray) -> np.ndarray:
        return brighten(telea_fill(window, hole), hole)

    expected = fill_through_window(image, mask, prefills_itself, max_side=max_side)
    runs = []

    def counted(window: np.ndarray, hole: np.ndarray) -> np.ndarray:
        runs.append(window.shape)
        return telea_fill(window, hole)

    monkeypatch.setattr(inpaint_window, "telea_fill", counted)
    result = fill_through_window(image, mask, brighten, max_side=max_side, prefill=True)
    assert np.array_equal(result, expected)
    assert len(runs) == (1 if max_side is None else 2)


def test_spatial_discount_from_distance_transform() -> None:
    mask = np.zeros((20, 20), bool)
    mask[5:15, 5:15] = True
    weights = spatial_discount(mask, gamma=0.9)
    assert weights[0, 0] == 0 and weights[~mask].max() == 0
    assert weights[5, 10] == pytest.approx(0.9)  # edge pixel: distance 1
    assert weights[9, 9] < weights[6, 9] < weights[5, 9]  # decays into the hole


def test_losses_and_critics() -> None:
    torch.manual_seed(0)
    target, out = torch.rand(2, 3, 64, 64), torch.rand(2, 3, 64, 64)
    mask = torch.zeros(2, 1, 64, 64)
    mask[0, :, 10:20, 30:50] = 1
    mask[1, :, 40:60, 5:9] = 1
    discount = torch.from_numpy(np.stack([spatial_discount(m[0].numpy()) for m in mask]))[:, None]
    assert float(reconstruction_loss((target,), target, mask, discount)) == 0
    assert float(reconstruction_loss((out, out), target, mask, discount)) > 0
    boxes = mask_boxes(mask)
    for (y, x, side), m in zip(boxes, mask, strict=True):
        assert m[0, y : y + side, x : x + side].sum() == m.sum()
    g, loc = global_critic(64, width=4), local_critic(32, width=4)
    assert g(out).shape == (2,) and loc(local_crops(out, boxes, 32)).shape == (2,)
    penalty = gradient_penalty(g, target, out, mask)
    assert torch.isfinite(penalty) and penalty >= 0


def test_l2_hole_loss_is_the_hole_mse_when_undiscounted() -> None:
    target = torch.zeros(1, 3, 8, 8)
    out = target.clone()
    mask = torch.zeros(1, 1, 8, 8)
    mask[..., 2:4, 2:4] = 1
    out[..., 2:4, 2:4] = 0.5  # error 0.5 on every hole pixel, none outside
    uniform = mask.clone()  # γ = 1: every hole pixel weighs 1
    l1 = reconstruction_loss((out,), target, mask, uniform, hole_weight=1.0)
    l2 = reconstruction_loss((out,), target, mask, uniform, hole_weight=1.0, hole_loss="l2")
    assert float(l1) == pytest.approx(0.5) and float(l2) == pytest.approx(0.25)
    with pytest.raises(ValueError, match="hole_loss"):
        reconstruction_loss((out,), target, mask, uniform, hole_loss="l3")


def test_psnr_hole_loss_is_minus_the_mean_hole_psnr_and_favours_the_well_filled_image() -> None:
    target = torch.zeros(2, 3, 8, 8)
    mask = torch.zeros(2, 1, 8, 8)
    mask[..., 2:6, 2:6] = 1
    out = target.clone()
    out[0, :, 2:6, 2:6] = 0.1  # hole MSE 0.01: 20 dB
    out[1, :, 2:6, 2:6] = 0.5  # hole MSE 0.25: ~6 dB
    out.requires_grad_(True)
    loss = reconstruction_loss((out,), target, mask, mask.clone(), hole_weight=1.0,
                               known_weight=0.0, hole_loss="psnr")
    psnrs = [-10 * math.log10(mse + PSNR_LOSS_EPS) for mse in (0.01, 0.25)]
    assert float(loss) == pytest.approx(-sum(psnrs) / 2, rel=1e-5)
    loss.backward()
    grad = out.grad.abs().sum(dim=(1, 2, 3))
    assert grad[0] > 4 * grad[1]  # a pooled MSE would push the worse image 5x harder


def test_a_zero_known_weight_leaves_the_known_pixels_free() -> None:
    """Residual outputs are composited, so their known pixels may be anything."""
    target, mask = torch.zeros(1, 3, 8, 8), torch.zeros(1, 1, 8, 8)
    mask[..., 2:4, 2:4] = 1
    out = target.clone()
    out[..., 6:, 6:] = 0.3  # error on known pixels only
    assert float(reconstruction_loss((out,), target, mask, mask)) > 0.01
    assert float(reconstruction_loss((out,), target, mask, mask, known_weight=0.0)) == 0.0


@pytest.fixture(scope="module", params=["zeros", "telea"])
def tiny_weights(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A weights directory holding a tiny random DeepFill under the shipped file name."""
    torch.manual_seed(0)
    config = DeepFillConfig(width=4, prefill=request.param)
    folder = tmp_path_factory.mktemp("deepfill")
    save_safetensors_fp16(DeepFillV1(config), folder / deepfill.WEIGHTS, config.to_json())
    return folder


def cpu_runtime(weights_dir: Path, *, bf16: bool = True) -> ModelRuntime:
    return ModelRuntime(weights_dir, torch.device("cpu"), bf16=bf16)


@pytest.mark.parametrize("gray", [False, True])
def test_inpaint_deepfill_changes_only_masked_pixels(tiny_weights: Path, gray: bool) -> None:
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (90, 117, 3), dtype=np.uint8)
    image = image[..., 0].copy() if gray else image
    mask = np.zeros((90, 117), bool)
    mask[30:50, 60:75] = True
    mask[52, 10] = True  # a far-away pixel stretches the window
    progress: list[float] = []
    job = RestoreJob(image, mask=mask, on_progress=progress.append)
    result = inpaint(cpu_runtime(tiny_weights), job, max_side=64)
    out = result.pixels
    assert out.shape == image.shape and out.dtype == np.uint8
    assert np.array_equal(out[~mask], image[~mask])
    assert not np.array_equal(out[mask], image[mask])
    assert progress[-1] == 1.0
    assert result.details["weights_sha256"] == file_sha256(tiny_weights / deepfill.WEIGHTS)


def test_the_ensemble_fill_is_flip_and_rotation_invariant() -> None:
    """The 8 fills are mapped back before averaging: filling a flipped or rotated photo gives
    the flipped or rotated fill (sides kept to multiples of 8, so no padding breaks symmetry;
    zero prefill, since OpenCV's Telea fill is itself not flip-invariant)."""
    torch.manual_seed(0)
    model = DeepFillV1(DeepFillConfig(width=4, prefill="zeros")).eval()
    rng = np.random.default_rng(3)
    image = rng.integers(0, 256, (40, 56, 3), dtype=np.uint8)
    mask = np.zeros((40, 56), bool)
    mask[8:20, 30:46] = True
    plain = run_deepfill(model, image, mask)
    ensembled = run_deepfill(model, image, mask, ensemble=True)
    assert not np.array_equal(plain, ensembled)
    flipped = run_deepfill(model, image[:, ::-1].copy(), mask[:, ::-1].copy(), ensemble=True)
    turned = run_deepfill(model, np.rot90(image).copy(), np.rot90(mask).copy(), ensemble=True)
    for other in (flipped[:, ::-1], np.rot90(turned, -1)):
        assert np.abs(other.astype(int) - ensembled).max() <= 1  # up to rounding


def test_the_ensemble_fills_only_the_hole_at_any_size(tiny_weights: Path) -> None:
    image = np.random.default_rng(4).integers(0, 256, (37, 50, 3), dtype=np.uint8)
    mask = np.zeros((37, 50), bool)
    mask[10:25, 5:20] = True
    job = RestoreJob(image, mask=mask, ensemble=True)
    out = registry.restore(cpu_runtime(tiny_weights), "inpaint", "deepfill", job).pixels
    assert out.shape == image.shape
    assert np.array_equal(out[~mask], image[~mask])
    assert not np.array_equal(out[mask], image[mask])


def test_only_deepfill_offers_the_ensemble(tmp_path: Path) -> None:
    assert registry.offers_ensemble("inpaint", "deepfill")
    assert not registry.offers_ensemble("inpaint", "classic")
    image = np.zeros((16, 16, 3), np.uint8)
    mask = np.zeros((16, 16), bool)
    mask[4:8, 4:8] = True
    with pytest.raises(UnprocessableInput, match="no ensemble"):
        registry.restore(cpu_runtime(tmp_path), "inpaint", "classic",
                         RestoreJob(image, mask=mask, ensemble=True))


def test_inpaint_deepfill_cancels(tiny_weights: Path) -> None:
    image = np.zeros((40, 40, 3), np.uint8)
    mask = np.zeros((40, 40), bool)
    mask[10:20, 10:20] = True
    with pytest.raises(Cancelled):
        inpaint(cpu_runtime(tiny_weights), RestoreJob(image, mask=mask, should_cancel=lambda: True))


def test_context_window_is_clipped_to_the_image() -> None:
    mask = np.zeros((300, 200), bool)
    mask[10:30, 150:190] = True
    window = context_window(mask)
    assert (window.top, window.left, window.bottom, window.right) == (0, 86, 94, 200)


def test_dip_is_offered_last_without_weights() -> None:
    for task in ("inpaint", "denoise"):
        entries = registry.restorers(task)
        assert entries[-1].name == "dip" and entries[-1].weights == ()


def test_a_black_and_white_photo_stored_as_rgb_gets_a_gray_fill(tiny_weights: Path) -> None:
    gray = np.random.default_rng(1).integers(0, 256, (64, 80), dtype=np.uint8)
    image = np.repeat(gray[..., None], 3, axis=2)
    mask = np.zeros((64, 80), bool)
    mask[20:40, 30:50] = True
    out = inpaint(cpu_runtime(tiny_weights), RestoreJob(image, mask=mask)).pixels
    assert (out[..., 0] == out[..., 1]).all() and (out[..., 1] == out[..., 2]).all()
    assert not np.array_equal(out[mask], image[mask])


def test_deepfill_takes_bf16_only_where_native_and_faithful(
    tiny_weights: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from shared.ml import inference

    runtime = cpu_runtime(tiny_weights)
    model = deepfill.build_deepfill(str(runtime.weights_path(deepfill.WEIGHTS)), runtime.device)
    clear_precision_cache()
    monkeypatch.setattr(inference.accel, "use_bf16", lambda _d: False)
    assert not deepfill.uses_bf16(runtime, model, weights_id="tiny")
    monkeypatch.setattr(inference.accel, "use_bf16", lambda _d: True)
    assert deepfill.uses_bf16(runtime, model, weights_id="tiny")  # bf16 fill within 50 dB of fp32's
    # A runtime built with bf16 off never takes it, native and faithful (and cached) or not.
    assert not deepfill.uses_bf16(cpu_runtime(tiny_weights, bf16=False), model, weights_id="tiny")
    clear_precision_cache()
