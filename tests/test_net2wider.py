"""Net2WiderNet for MWCNN and DeepFill v1: the widened network computes the narrow one's."""

from __future__ import annotations

import pytest
import torch

from shared.ml.models.deepfill_contextual_attention import DeepFillConfig, DeepFillV1
from shared.ml.models.mwcnn import MWCNN, MWCNNConfig
from training.net2wider import widen_deepfill, widen_mwcnn

pytestmark = pytest.mark.usefixtures("one_torch_thread")

NARROW = MWCNNConfig(widths=(4, 8, 8), block_depth=2, bottom_depth=3, batch_norm=False)


def random_narrow() -> MWCNN:
    torch.manual_seed(0)
    model = MWCNN(NARROW)  # He-initialised; the zero last conv and biases made non-trivial
    with torch.no_grad():
        model.dec1[-1].weight.normal_(0, 0.05)
        for module in model.modules():
            if isinstance(module, torch.nn.Conv2d):
                module.bias.normal_(0, 0.05)
    return model.eval()


def test_widened_network_computes_the_same_function() -> None:
    narrow = random_narrow()
    wide = widen_mwcnn(narrow, (7, 13, 10), noise=0.0).eval()
    assert wide.config.widths == (7, 13, 10)
    x = torch.rand(2, 3, 16, 24)
    with torch.no_grad():
        reference = narrow(x, 0.2)
        assert (reference - x).abs().mean() > 0.02  # the residual is far from zero
        torch.testing.assert_close(wide(x, 0.2), reference, rtol=1e-4, atol=1e-5)


def test_noise_breaks_symmetry_but_stays_close() -> None:
    narrow = random_narrow()
    wide = widen_mwcnn(narrow, (8, 16, 16), noise=1e-3).eval()
    exact = widen_mwcnn(narrow, (8, 16, 16), noise=0.0).eval()
    x = torch.rand(1, 3, 16, 16)
    with torch.no_grad():
        diff = (wide(x, 0.1) - exact(x, 0.1)).abs().max().item()
    assert 0 < diff < 1e-2


def test_rejects_batchnorm_and_narrower_widths() -> None:
    with pytest.raises(ValueError, match="fold_batchnorm"):
        widen_mwcnn(MWCNN(MWCNNConfig(widths=(4, 8, 8), block_depth=2, bottom_depth=2)),
                    (8, 16, 16))
    with pytest.raises(ValueError, match="at least"):
        widen_mwcnn(random_narrow(), (2, 16, 16))


# --------------------------------------------------------------------------- DeepFill v1


def random_deepfill(output: str) -> DeepFillV1:
    torch.manual_seed(0)
    model = DeepFillV1(DeepFillConfig(width=4, prefill="telea", output=output))
    with torch.no_grad():  # residual models start with zero output layers: make them non-trivial
        for module in model.modules():
            if isinstance(module, torch.nn.Conv2d):
                module.bias.normal_(0, 0.05)
                if module.out_channels == 3:
                    module.weight.normal_(0, 0.1)
    return model.eval()


def hole_mask(side: int = 32) -> torch.Tensor:
    mask = torch.zeros(1, 1, side, side)
    mask[..., side // 4 : side // 2, side // 4 : side // 2 + 4] = 1
    return mask


@pytest.mark.parametrize("output", ["image", "residual"])
def test_widened_deepfill_computes_the_same_function(output: str) -> None:
    narrow = random_deepfill(output)
    wide = widen_deepfill(narrow, 7, noise=0.0).eval()
    assert wide.config.width == 7 and wide.config.output == output
    x, mask = torch.rand(2, 3, 64, 64), hole_mask(64).expand(2, -1, -1, -1)
    with torch.no_grad():
        for got, want in zip(wide(x, mask), narrow(x, mask), strict=True):
            torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


def test_widened_deepfill_keeps_the_attention_weights() -> None:
    """The attention branch's features are widened norm-preserving, so the cosine scores and
    the softmax over background patches are the same (plain copies would reweight channels)."""
    narrow = random_deepfill("image")
    wide = widen_deepfill(narrow, 8, noise=0.0).eval()
    x = torch.rand(1, 5, 64, 64)
    small = torch.nn.functional.max_pool2d(hole_mask(64), 4)  # the features' 1/4 resolution
    with torch.no_grad():
        weights = [
            m.refine.attention.attention(f, f, small)
            for m in (narrow, wide)
            for f in [m.refine.attn_encoder(x)]
        ]
    assert weights[0].amax(1).mean() > 1.5 / weights[0].shape[1]  # not uniform: a real test
    torch.testing.assert_close(weights[1], weights[0], rtol=1e-4, atol=1e-5)


def test_deepfill_noise_breaks_symmetry_and_narrower_is_rejected() -> None:
    narrow = random_deepfill("residual")
    x, mask = torch.rand(1, 3, 32, 32), hole_mask()
    with torch.no_grad():
        exact = widen_deepfill(narrow, 8, noise=0.0).eval()(x, mask)[1]
        noisy = widen_deepfill(narrow, 8, noise=1e-3).eval()(x, mask)[1]
    assert 0 < (exact - noisy).abs().max().item() < 1e-2
    with pytest.raises(ValueError, match="at least"):
        widen_deepfill(narrow, 2)
