"""The critics and losses of DeepFill v1 (Yu et al., "Generative Image Inpainting with Contextual
Attention", CVPR 2018, §3.1 and the authors' release).

* :class:`WGANCritic`: the paper's global and local critics: stride-2 5×5 convs with leaky ReLU
  (widths c, 2c, 4c, 4c for the global critic on the whole image; c, 2c, 4c, 8c for the local
  one), flattened into one linear output. Trained as WGAN-GP critics (:func:`gradient_penalty`,
  λ = 10), the penalty taken on the hole pixels only, as in the paper's eq. (2) mask term.
* The local critic sees the mask's **bounding box** (:func:`local_crops`): the paper's masks were
  single rectangles, ours are free-form, so the box around all hole pixels (made square, at least
  ``min_fraction`` of the image side, and resized to the critic's fixed input) plays that role.
* :func:`spatial_discount` / :func:`reconstruction_loss`: the spatially discounted L1. The paper
  weights a hole pixel by γ^d, d its distance to the nearest known pixel, γ = 0.99; with
  free-form masks d comes from a Euclidean distance transform of the mask. ``hole_loss="l2"``
  (with γ = 1: the hole's MSE) is this project's PSNR fine-tune: the L1 optimum is the per-pixel
  median of the plausible fills, the L2 optimum their mean, which is what PSNR scores.
"""

from __future__ import annotations

import cv2
import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

#: The paper's γ for the spatially discounted reconstruction loss.
DISCOUNT_GAMMA = 0.99
#: WGAN-GP gradient penalty weight (the paper's λ).
GP_LAMBDA = 10.0


# --------------------------------------------------------------------------- critics


class WGANCritic(nn.Module):
    """Stride-2 5×5 convs + LeakyReLU(0.2), flatten, linear → one score per image (no sigmoid)."""

    def __init__(self, size: int, widths: tuple[int, ...], in_channels: int = 3) -> None:
        super().__init__()
        if size % (2 ** len(widths)):
            raise ValueError(f"input size {size} must be a multiple of {2 ** len(widths)}")
        layers: list[nn.Module] = []
        cin = in_channels
        for cout in widths:
            layers += [nn.Conv2d(cin, cout, 5, 2, padding=2), nn.LeakyReLU(0.2)]
            cin = cout
        self.features = nn.Sequential(*layers)
        side = size // 2 ** len(widths)
        self.score = nn.Linear(cin * side * side, 1)
        self.size = size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.score(self.features(x * 2 - 1).flatten(1)).squeeze(1)


def global_critic(size: int, width: int = 64) -> WGANCritic:
    """The paper's global critic (release: cnum 64; widths c, 2c, 4c, 4c)."""
    return WGANCritic(size, (width, 2 * width, 4 * width, 4 * width))


def local_critic(size: int, width: int = 64) -> WGANCritic:
    """The paper's local critic (widths c, 2c, 4c, 8c) on the hole's bounding box."""
    return WGANCritic(size, (width, 2 * width, 4 * width, 8 * width))


def mask_boxes(mask: torch.Tensor, min_fraction: float = 0.25) -> list[tuple[int, int, int]]:
    """Per sample, a square (top, left, side) around every hole pixel, inside the image.

    ``min_fraction`` of the image side is the smallest box, so thin strokes still give the local
    critic some context.
    """
    height, width = mask.shape[-2:]
    boxes = []
    for m in mask[:, 0] > 0.5:
        rows, cols = torch.nonzero(m.any(1)).flatten(), torch.nonzero(m.any(0)).flatten()
        if rows.numel() == 0:
            rows, cols = torch.tensor([height // 2]), torch.tensor([width // 2])
        top, bottom = int(rows[0]), int(rows[-1]) + 1
        left, right = int(cols[0]), int(cols[-1]) + 1
        side = min(max(bottom - top, right - left, int(min_fraction * min(height, width))),
                   min(height, width))
        cy, cx = (top + bottom) // 2, (left + right) // 2
        y0 = min(max(cy - side // 2, 0), height - side)
        x0 = min(max(cx - side // 2, 0), width - side)
        boxes.append((y0, x0, side))
    return boxes


def local_crops(images: torch.Tensor, boxes: list[tuple[int, int, int]], size: int) -> torch.Tensor:
    """Crop each image to its box and resize (bilinear) to ``size``² for the local critic."""
    crops = [
        F.interpolate(img[None, :, y : y + s, x : x + s], size=(size, size), mode="bilinear",
                      align_corners=False)
        for img, (y, x, s) in zip(images, boxes, strict=True)
    ]
    return torch.cat(crops)


def gradient_penalty(critic: nn.Module, real: torch.Tensor, fake: torch.Tensor,
                     mask: torch.Tensor | None = None) -> torch.Tensor:
    """WGAN-GP: E[(‖∇D(x̂)‖ - 1)²] on random interpolates x̂; with ``mask`` (1 = hole) the
    gradient is taken on hole pixels only (the paper's masked penalty)."""
    alpha = torch.rand(real.shape[0], 1, 1, 1, device=real.device, dtype=real.dtype)
    mixed = (alpha * real + (1 - alpha) * fake.detach()).requires_grad_(True)
    scores = critic(mixed)
    (grad,) = torch.autograd.grad(scores.sum(), mixed, create_graph=True)
    if mask is not None:
        grad = grad * mask
    norm = grad.flatten(1).norm(dim=1)
    return ((norm - 1) ** 2).mean()


# --------------------------------------------------------------------------- reconstruction loss


def spatial_discount(mask: np.ndarray, gamma: float = DISCOUNT_GAMMA) -> np.ndarray:
    """float32 weights: γ^d inside the hole (d = distance to the nearest known pixel, ≥ 1), 0
    outside. ``mask``: bool/uint8 H×W, true = hole."""
    hole = (np.asarray(mask) > 0).astype(np.uint8)
    if not hole.any():
        return np.zeros(hole.shape, np.float32)
    if hole.all():  # no known pixel to measure from: every pixel is equally far
        return np.ones(hole.shape, np.float32)
    distance = cv2.distanceTransform(hole, cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
    return np.where(hole > 0, np.power(gamma, distance), 0.0).astype(np.float32)


HOLE_LOSSES = ("l1", "l2", "psnr")
PSNR_LOSS_EPS = 1e-6  # caps a hole's PSNR at 60 dB, so a perfect fill cannot dominate the batch
RELEASE_HOLE_WEIGHT = RELEASE_KNOWN_WEIGHT = 1.2  # inpaint.yml: L1_LOSS_ALPHA, AE_LOSS_ALPHA


def reconstruction_loss(outputs: tuple[torch.Tensor, ...], target: torch.Tensor,
                        mask: torch.Tensor, discount: torch.Tensor,
                        hole_weight: float = RELEASE_HOLE_WEIGHT,
                        known_weight: float = RELEASE_KNOWN_WEIGHT,
                        hole_loss: str = "l1") -> torch.Tensor:
    """The release's ``l1_loss`` + ``ae_loss`` summed over the coarse and refined outputs.

    Hole term: Σ γ^d·|y - x| / Σ hole pixels; known term: mean |y - x| over known pixels (the
    network must also reproduce what it was given). Weights 1.2/1.2 as in the release's config.
    ``hole_loss="l2"`` squares the hole's error instead (a deviation for a PSNR fine-tune: L1's
    optimum is the per-pixel median of the plausible fills, L2's the mean, which is what PSNR
    rewards; with γ = 1 the hole term is then the hole's MSE). ``hole_loss="psnr"`` takes the
    batch mean of each image's 10·log10(hole MSE), minus the hole PSNR that the benchmark
    averages over images: its gradient scales each image by 1/MSE, so a well filled image counts
    as much as a hard one, where the batch's pooled MSE is ruled by its worst fills.
    """
    if hole_loss not in HOLE_LOSSES:
        raise ValueError(f"hole_loss must be one of {HOLE_LOSSES}, got {hole_loss!r}")
    holes = mask.sum().clamp_min(1.0) * target.shape[1]
    known = (1 - mask).sum().clamp_min(1.0) * target.shape[1]
    total = target.new_zeros(())
    for out in outputs:
        diff = (out - target).abs()
        if hole_loss == "psnr":
            total = total + hole_weight * _mean_log_hole_mse(diff, mask, discount)
        else:
            hole_error = diff.square() if hole_loss == "l2" else diff
            total = total + hole_weight * (hole_error * discount).sum() / holes
        total = total + known_weight * (diff * (1 - mask)).sum() / known
    return total


def _mean_log_hole_mse(diff: torch.Tensor, mask: torch.Tensor,
                       discount: torch.Tensor) -> torch.Tensor:
    """Mean over the batch of each image's 10·log10(discounted hole MSE): minus its hole PSNR."""
    channels = diff.shape[1]
    per_image = (diff.square() * discount).sum(dim=(1, 2, 3))
    holes = (mask.sum(dim=(1, 2, 3)) * channels).clamp_min(1.0)
    return (10 * torch.log10(per_image / holes + PSNR_LOSS_EPS)).mean()
