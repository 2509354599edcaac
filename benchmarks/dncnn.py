"""DnCNN-S (Zhang et al. 2017) as a calibration instrument for the denoising benchmark.

Only the benchmark uses it: running the official σ=25 weights through our noise and metric code
must reproduce the published BSD68 number (29.22 dB), which shows that those code paths are
right. The same gray weights run on each RGB channel are a yardstick for the colour columns
(:func:`run_dncnn_per_channel`). It is not a served model. The layout is KAIR's
``DnCNN(in_nc=1, out_nc=1, nc=64, nb=17, act_mode='R')`` with BatchNorm already merged into the
convolutions: 17 3×3 convs with bias, ReLU between them, and a residual output ``x - net(x)``;
state-dict keys ``model.0`` … ``model.32`` (even indices are convs, odd ones ReLUs).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

DEPTH = 17
WIDTH = 64


class DnCNN(nn.Module):
    def __init__(self, channels: int = 1, width: int = WIDTH, depth: int = DEPTH) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(channels, width, 3, padding=1), nn.ReLU(inplace=True)]
        for _ in range(depth - 2):
            layers += [nn.Conv2d(width, width, 3, padding=1), nn.ReLU(inplace=True)]
        layers.append(nn.Conv2d(width, channels, 3, padding=1))
        self.model = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x - self.model(x)  # the network predicts the noise


def load_dncnn(path: Path) -> DnCNN:
    """The KAIR state dict, strictly (no missing or unexpected keys), in eval mode."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    net = DnCNN()
    net.load_state_dict(state, strict=True)
    return net.eval()


@torch.inference_mode()
def run_dncnn(net: DnCNN, noisy01: np.ndarray) -> np.ndarray:
    """Denoise a gray H×W float image on the [0, 1] scale (unclipped); uint8 out, as KAIR's
    ``tensor2uint`` (clamp to [0, 1], ×255, round)."""
    x = torch.from_numpy(np.ascontiguousarray(noisy01, dtype=np.float32))[None, None]
    out = net(x)[0, 0].clamp(0.0, 1.0).mul(255.0).round()
    return out.to(torch.uint8).numpy()


def run_dncnn_per_channel(net: DnCNN, noisy01: np.ndarray) -> np.ndarray:
    """Denoise an H×W×C float image on the [0, 1] scale one channel at a time (the gray
    network knows no colour); uint8 H×W×C out."""
    return np.dstack([run_dncnn(net, noisy01[..., c]) for c in range(noisy01.shape[2])])
