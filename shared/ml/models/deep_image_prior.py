"""Deep Image Prior (Ulyanov, Vedaldi, Lempitsky; CVPR 2018).

A randomly initialised encoder-decoder is fitted to *one* image: its input is fixed noise z and
it is trained so that f(z) reproduces the known pixels. The network's structure fits natural
image content long before it fits noise, so

* **inpainting**: the loss covers the known pixels only; the hole is filled by whatever f(z)
  makes of it (paper §4, "inpainting");
* **denoising**: the loss covers the noisy image, and the fit is stopped early, before the
  network starts reproducing the noise (paper §4, "denoising").

Architecture: the paper's "skip" network (supplementary material, Fig. 21): ``depth`` levels,
each down block a stride-2 3×3 conv + BN + LeakyReLU(0.2) and a 3×3 conv + BN + LeakyReLU, a
1×1 skip branch (``skip`` channels; 0 = none), up blocks BN → 3×3 conv → BN → LeakyReLU →
1×1 conv → BN → LeakyReLU after upsampling, reflection padding, a 1×1 output conv and a sigmoid.
The paper's settings: width 128, depth 5, input 32 noise channels U(0, 0.1); skip 4 and bilinear
upsampling for denoising, skip 0 and nearest for inpainting; Adam, lr 0.01; input perturbed by
N(0, σ_p²) every iteration (σ_p = 1/30 denoising, 0.03 inpainting). Width and depth are arguments
because on a CPU the paper's width costs tens of GFLOP per iteration at 256².

Early stopping for denoising uses ES-WMV (Wang, Li, Zhuang, Chen, Liang, Sun; "Early stopping
for deep image prior", 2021): the variance of the last ``window`` outputs falls while the network
learns the image and rises once it starts fitting noise; the fit stops when that variance has not
improved for ``patience`` iterations and the output at its minimum is returned. Optionally the
discrepancy principle (stop once the loss reaches σ²) when the noise level is known.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import cv2
import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from shared.ml.inference import numpy_to_tensor, tensor_to_numpy
from shared.ml.tiling import Cancelled, pad_to_multiple

ProgressFn = Callable[[float], None]
CancelFn = Callable[[], bool]


# --------------------------------------------------------------------------- network


@dataclass(frozen=True)
class DIPConfig:
    width: int = 128  # channels of every down/up block (the paper's 128)
    depth: int = 5
    skip: int = 4  # channels of the skip branches (0: none, the paper's inpainting setting)
    input_channels: int = 32
    out_channels: int = 3
    upsample: str = "bilinear"  # "nearest" in the paper's inpainting setting

    @property
    def multiple(self) -> int:
        return 2**self.depth


def _conv(cin: int, cout: int, kernel: int, stride: int = 1) -> nn.Sequential:
    pad = (kernel - 1) // 2
    layers: list[nn.Module] = [nn.ReflectionPad2d(pad)] if pad else []
    layers.append(nn.Conv2d(cin, cout, kernel, stride))
    return nn.Sequential(*layers)


def _bn_act(channels: int) -> list[nn.Module]:
    return [nn.BatchNorm2d(channels), nn.LeakyReLU(0.2)]


class _Level(nn.Module):
    """One scale: [skip branch ‖ down → inner → upsample] → BN → up convs."""

    def __init__(self, cin: int, config: DIPConfig, inner: nn.Module | None) -> None:
        super().__init__()
        w, s = config.width, config.skip
        self.skip = nn.Sequential(_conv(cin, s, 1), *_bn_act(s)) if s else None
        down: list[nn.Module] = [_conv(cin, w, 3, 2), *_bn_act(w), _conv(w, w, 3), *_bn_act(w)]
        self.deeper = nn.Sequential(*down, *([inner] if inner is not None else []))
        self.upsample = nn.Upsample(scale_factor=2, mode=config.upsample)
        self.up = nn.Sequential(
            nn.BatchNorm2d(s + w), _conv(s + w, w, 3), *_bn_act(w), _conv(w, w, 1), *_bn_act(w)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        deep = self.upsample(self.deeper(x))
        if self.skip is not None:
            deep = torch.cat([self.skip(x), deep], dim=1)
        return self.up(deep)


class SkipNet(nn.Module):
    """The paper's encoder-decoder with skips; input H, W multiples of ``2**depth``."""

    def __init__(self, config: DIPConfig | None = None) -> None:
        super().__init__()
        self.config = config = config or DIPConfig()
        level: nn.Module | None = None
        for i in reversed(range(config.depth)):  # build innermost first
            level = _Level(config.input_channels if i == 0 else config.width, config, level)
        assert level is not None
        self.body = level
        self.head = nn.Sequential(nn.Conv2d(config.width, config.out_channels, 1), nn.Sigmoid())

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(z))


# --------------------------------------------------------------------------- early stopping


@dataclass(frozen=True)
class EarlyStop:
    """ES-WMV settings, plus an optional loss target (discrepancy principle: σ² of the noise)."""

    window: int = 50
    patience: int = 300
    target_loss: float | None = None


class _WindowedVariance:
    """Running variance of the last ``window`` outputs (sum and sum of squares, O(pixels))."""

    def __init__(self, window: int) -> None:
        self.window = window
        self.frames: deque[torch.Tensor] = deque()
        self.total: torch.Tensor | None = None
        self.squares: torch.Tensor | None = None

    def push(self, frame: torch.Tensor) -> float | None:
        frame = frame.detach().double()
        if self.total is None or self.squares is None:
            self.total, self.squares = torch.zeros_like(frame), torch.zeros_like(frame)
        self.frames.append(frame)
        self.total += frame
        self.squares += frame * frame
        if len(self.frames) > self.window:
            old = self.frames.popleft()
            self.total -= old
            self.squares -= old * old
        if len(self.frames) < self.window:
            return None
        mean = self.total / self.window
        return float((self.squares / self.window - mean * mean).clamp_min(0).mean())


# --------------------------------------------------------------------------- fitting


@dataclass
class DIPResult:
    output: torch.Tensor  # (1, C, H, W) in [0, 1], the returned estimate
    iterations: int  # iterations run
    losses: list[float] = field(default_factory=list)  # loss on known pixels, per iteration
    stopped_early: bool = False
    best_iteration: int | None = None  # where ES-WMV found its minimum

    @property
    def image(self) -> np.ndarray:
        """uint8 H×W×C (H×W for one channel)."""
        return tensor_to_numpy(self.output)


def _pad_to_multiple(x: torch.Tensor, known: torch.Tensor, multiple: int
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """Pad bottom/right to multiples of ``multiple``, at least two of them, so the deepest
    level keeps 2×2 pixels (training-mode BatchNorm needs more than one value per channel: a
    32² image would leave 1×1). Padded pixels are marked unknown, so they never enter the loss."""
    height, width = x.shape[-2:]
    padded = pad_to_multiple(x, multiple, min_side=2 * multiple)
    ph, pw = padded.shape[-2] - height, padded.shape[-1] - width
    return padded, F.pad(known, (0, pw, 0, ph), value=0.0)


def fit_dip(
    image: np.ndarray,
    mask: np.ndarray | None = None,
    iterations: int = 2000,
    *,
    config: DIPConfig | None = None,
    lr: float = 0.01,
    reg_noise_std: float | None = None,
    seed: int = 0,
    on_progress: ProgressFn | None = None,
    should_cancel: CancelFn | None = None,
    early_stop: EarlyStop | None = None,
    average: float | None = None,
    device: torch.device | str = "cpu",
) -> DIPResult:
    """Fit a :class:`SkipNet` to ``image`` (uint8 or float [0, 1], H×W or H×W×C).

    ``mask`` (bool H×W, True = hole): inpainting, the loss covers the other pixels. Without a
    mask: denoising; pass ``early_stop`` (and optionally ``average``, the paper's exponential
    average of outputs, 0.99) to stop before the noise is fitted. Calls ``on_progress(fraction)``
    about 100 times and raises :class:`shared.ml.tiling.Cancelled` as soon as ``should_cancel()``.
    Deterministic for a given ``seed`` on one machine and thread count.
    """
    device = torch.device(device)
    target = numpy_to_tensor(image).to(device)
    channels = target.shape[1]
    if config is None:
        config = DIPConfig(out_channels=channels) if mask is None else DIPConfig(
            skip=0, upsample="nearest", out_channels=channels)
    if reg_noise_std is None:
        reg_noise_std = 1.0 / 30.0 if mask is None else 0.03
    known = torch.ones_like(target[:, :1])
    if mask is not None:
        known = known * torch.from_numpy(~np.asarray(mask, bool)).to(device, torch.float32)
    height, width = target.shape[-2:]
    target, known = _pad_to_multiple(target, known, config.multiple)

    gen = torch.Generator(device="cpu").manual_seed(seed)
    torch.manual_seed(seed)  # the network's initialisation
    net = SkipNet(config).to(device)
    z = (torch.rand((1, config.input_channels, *target.shape[-2:]), generator=gen) * 0.1).to(device)
    optimizer = torch.optim.Adam(net.parameters(), lr=lr)
    denominator = known.sum().clamp_min(1.0) * channels

    wmv = _WindowedVariance(early_stop.window) if early_stop else None
    best_var, best_it, best_out = math.inf, None, None
    smoothed: torch.Tensor | None = None
    losses: list[float] = []
    report_every = max(1, iterations // 100)
    stopped = False
    it = 0
    for it in range(1, iterations + 1):
        if should_cancel is not None and should_cancel():
            raise Cancelled()
        noise = torch.randn(z.shape, generator=gen).to(device) * reg_noise_std
        out = net(z + noise if reg_noise_std > 0 else z)
        loss = ((out - target) ** 2 * known).sum() / denominator
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
        frame = out.detach()
        if average is not None:
            smoothed = frame if smoothed is None else smoothed * average + frame * (1 - average)
            frame = smoothed
        if wmv is not None and early_stop is not None:
            variance = wmv.push(frame)
            if variance is not None and variance < best_var:
                best_var, best_it, best_out = variance, it, frame.clone()
            if best_it is not None and it - best_it >= early_stop.patience:
                stopped = True
            if early_stop.target_loss is not None and losses[-1] <= early_stop.target_loss:
                best_it, best_out, stopped = it, frame.clone(), True
        if on_progress is not None and (it % report_every == 0 or it == iterations or stopped):
            on_progress(1.0 if stopped else it / iterations)
        if stopped:
            break
    final = best_out if best_out is not None else frame
    return DIPResult(final[:, :, :height, :width].float().cpu(), it, losses, stopped, best_it)


# --------------------------------------------------------------------------- image-level helpers


def downscale_to(image: np.ndarray, max_side: int) -> np.ndarray:
    """Area-downscale so the longer side is at most ``max_side`` (unchanged when it already is)."""
    height, width = image.shape[:2]
    factor = max_side / max(height, width)
    if factor >= 1:
        return image
    size = (max(1, round(width * factor)), max(1, round(height * factor)))
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA)


def denoise_dip(image: np.ndarray, iterations: int = 1200, *, sigma: float | None = None,
                max_side: int | None = 256, config: DIPConfig | None = None, seed: int = 0,
                on_progress: ProgressFn | None = None, should_cancel: CancelFn | None = None,
                device: torch.device | str = "cpu") -> np.ndarray:
    """Denoise a uint8 image with DIP (ES-WMV early stop, exponential output average 0.99).

    On a CPU the fit runs on a copy downscaled to ``max_side`` (``None``: full size, for a GPU)
    and the result is upscaled back (bicubic). ``sigma`` (0–255 scale) adds the discrepancy
    stop: the loss reaching σ² means the noise itself is being fitted.
    """
    small = downscale_to(image, max_side) if max_side else image
    # Downscaling averages the noise: σ shrinks by about the scale factor.
    factor = small.shape[0] / image.shape[0]
    target_loss = (sigma * factor / 255.0) ** 2 if sigma else None
    result = fit_dip(small, None, iterations, config=config, seed=seed, on_progress=on_progress,
                     should_cancel=should_cancel, average=0.99, device=device,
                     early_stop=EarlyStop(target_loss=target_loss))
    out = result.image
    if out.shape[:2] != image.shape[:2]:
        out = cv2.resize(out, (image.shape[1], image.shape[0]), interpolation=cv2.INTER_CUBIC)
    return out.reshape(image.shape)
