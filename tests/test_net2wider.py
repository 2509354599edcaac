"""Net2WiderNet for MWCNN: the widened network computes the narrow one's function."""

from __future__ import annotations

import pytest
import torch

from shared.models.mwcnn import MWCNN, MWCNNConfig
from training.net2wider import widen_mwcnn

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
