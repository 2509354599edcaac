"""Tiny seeded networks the tests build the way shipped weights are built (no data needed)."""

from __future__ import annotations

import torch

from shared.ml.models.mwcnn import MWCNN, MWCNNConfig


def tiny_plane_network(seed: int) -> MWCNN:
    """A colour-plane MWCNN (one channel, three guide channels), a few channels wide, whose
    output and guides both weigh in (not the identity, not guide-blind)."""
    torch.manual_seed(seed)
    net = MWCNN(MWCNNConfig(in_channels=1, widths=(4, 8, 8), block_depth=2, bottom_depth=2,
                            batch_norm=False, guide_channels=3))
    with torch.no_grad():
        net.dec1[-1].weight.normal_(0, 0.05)
        net.enc1[0].weight.normal_(0, 0.1)
    return net.eval()
