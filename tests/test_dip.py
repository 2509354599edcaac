"""Deep Image Prior: fitting reduces the loss, progress is reported, cancellation raises."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
import torch

from shared.ml.models.deep_image_prior import DIPConfig, EarlyStop, SkipNet, denoise_dip, fit_dip
from shared.ml.restorers.dip import inpaint_dip
from shared.ml.tiling import Cancelled

TINY = DIPConfig(width=8, depth=3, skip=2, input_channels=8)


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    # Tiny convs gain nothing from threads; on a busy 2-core box two threads are ~10× slower.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _image(size: int = 32) -> np.ndarray:
    y, x = np.mgrid[0:size, 0:size] / size
    rgb = np.stack([x, y, 0.5 + 0.4 * np.sin(6 * x)], axis=2)
    return (rgb * 255).astype(np.uint8)


def test_skipnet_shapes() -> None:
    net = SkipNet(TINY)
    assert net(torch.rand(1, 8, 16, 24)).shape == (1, 3, 16, 24)


def test_fit_reduces_loss_on_known_pixels_and_reports_progress() -> None:
    mask = np.zeros((32, 32), bool)
    mask[10:20, 12:22] = True
    seen: list[float] = []
    result = fit_dip(_image(), mask, 30, config=TINY, seed=1, on_progress=seen.append)
    assert result.iterations == 30
    assert np.mean(result.losses[-5:]) < 0.5 * np.mean(result.losses[:3])
    assert seen and seen[-1] == 1.0 and seen == sorted(seen)
    assert result.image.shape == (32, 32, 3)


def test_fit_pads_odd_sizes_and_handles_gray() -> None:
    gray = _image(30)[:, :27, 0]
    result = fit_dip(gray, None, 2, config=DIPConfig(width=4, depth=2, skip=1, input_channels=4,
                                                      out_channels=1))
    assert result.image.shape == gray.shape


def test_an_image_no_larger_than_the_network_stride_still_fits() -> None:
    # depth 3 halves three times: an 8×8 image would leave 1×1 at the bottom, where
    # training-mode BatchNorm has a single value per channel and raises.
    config = DIPConfig(width=4, depth=3, skip=1, input_channels=4)
    for size in (8, 5):
        result = fit_dip(_image(size), None, 2, config=config)
        assert result.image.shape == (size, size, 3)


def test_cancellation_raises() -> None:
    calls = iter(range(100))
    with pytest.raises(Cancelled):
        fit_dip(_image(), None, 50, config=TINY, should_cancel=lambda: next(calls) >= 3)


def test_early_stop_by_target_loss() -> None:
    result = fit_dip(_image(), None, 200, config=TINY, early_stop=EarlyStop(target_loss=1.0))
    assert result.stopped_early and result.iterations == 1


def test_denoise_dip_keeps_shape() -> None:
    out = denoise_dip(_image(40), 3, sigma=25, max_side=32, config=TINY)
    assert out.shape == (40, 40, 3) and out.dtype == np.uint8


def test_inpaint_dip_leaves_known_pixels_alone() -> None:
    image = _image(48)
    mask = np.zeros((48, 48), bool)
    mask[20:30, 18:26] = True
    out = inpaint_dip(image, mask, 3, config=TINY, device=torch.device("cpu"))
    assert np.array_equal(out[~mask], image[~mask])
