"""MWCNN: Multi-level Wavelet-CNN for Image Restoration (Liu, Zhang, Zhang, Lin, Zuo; CVPRW 2018).

The network is a U-Net whose pooling is replaced by the 2-D Haar discrete wavelet transform
(DWT) and whose up-convolutions are replaced by the inverse transform (IWT). The DWT turns a
(C, H, W) map into a (4C, H/2, W/2) map of the LL/HL/LH/HH sub-bands without losing anything,
so the receptive field grows like pooling does while the signal stays invertible.

Architecture as in the paper (Fig. 3), widths ``(160, 256, 256)``, 4+4+8+4+4 = 24 conv layers:

    e1 = enc1(DWT(x))                 4 layers, 4·C → w1 (level 1, H/2)
    e2 = enc2(DWT(e1))                4 layers, 4·w1 → w2 (level 2, H/4)
    d2 = IWT(bottom(DWT(e2))) + e2    8 layers, 4·w2 → w3 … → 4·w2 (level 3, H/8)
    d1 = IWT(dec2(d2)) + e1           4 layers, w2 → … → 4·w1
    y  = x + IWT(dec1(d1))            4 layers, w1 → … → 4·C

Every layer is a 3×3 "Conv+BN+ReLU" except the very last, a plain 3×3 conv whose 4·C outputs
become the C image channels after the final IWT. Skip connections are element-wise sums of the
contracting-path block output and the IWT output on the expanding path.

Deviations from the paper (each kept small and documented):

* **Global residual output.** ``y = x + net(x)`` (DnCNN-style residual learning), with the last
  conv zero-initialised and every other conv He-initialised, so training starts from the
  identity: on a small CPU budget this is what makes the 24-layer network train at all.
* **Degradation-level input (FFDNet-style).** With ``level_channel=True`` (default) one extra
  constant input map holds the degradation level (σ/255 for Gaussian noise, see
  :func:`level_from_sigma`; a quality-derived value for JPEG, see :func:`level_from_quality`).
  It is concatenated to the image before the first DWT. This lets one network serve every σ or
  JPEG quality in the API's range and makes the ``sigma``/``quality`` options meaningful; the
  paper trains one network per level.
* **Colour.** ``in_channels`` defaults to 3 (RGB). The shipped models are colour networks; a gray
  image is served by replicating it to three channels and averaging the three outputs (the
  training data contains gray images replicated in exactly this way, so the network sees both).
* **Width.** Widths and depths are constructor arguments defaulting to the paper's; the shipped
  width is narrower (what a CPU training budget allows) and recorded in the weights' metadata.
* **BatchNorm** is in the constructor as in the paper (``batch_norm=True``; convs followed by BN
  have no bias). The shipped denoiser was trained with it, then folded into its convs
  (:func:`fold_batchnorm`) and trained on without it: with one network for every noise level,
  BN's running statistics made its eval-mode output swing from checkpoint to checkpoint.

Input height and width must be multiples of 8 (three DWT levels); padding is the caller's job
(the shared tiler pads bottom/right and crops). DWT/IWT are fixed, parameter-free operations that
always run in fp32, also under autocast, so IWT(DWT(x)) == x to fp32 rounding (≤ 2e-7).
"""

from __future__ import annotations

import copy
import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from shared.ml.accel import full_precision

LEVELS = 3
SIZE_MULTIPLE = 2**LEVELS


# --------------------------------------------------------------------------- wavelets


def _fp32(x: torch.Tensor) -> torch.Tensor:
    return x if x.dtype == torch.float32 else x.float()


def haar_dwt(x: torch.Tensor) -> torch.Tensor:
    """Orthonormal 2-D Haar DWT: (N, C, H, W) → (N, 4C, H/2, W/2), sub-bands [LL, HL, LH, HH].

    Channel layout is band-major (all LL channels, then all HL, ...). Computed with a pixel
    unshuffle and butterflies of sums (no convolution), in fp32 regardless of autocast: exact up
    to fp32 rounding and cheaper than a strided conv on CPU and CUDA.
    """
    with torch.autocast(device_type=x.device.type, enabled=False):
        n, c, h, w = x.shape
        u = F.pixel_unshuffle(_fp32(x), 2).reshape(n, c, 4, h // 2, w // 2)
        a, b, cc, d = u.unbind(dim=2)  # the 2×2 polyphase components (0,0) (0,1) (1,0) (1,1)
        s1, s2 = a + b, cc + d
        t1, t2 = b - a, d - cc
        ll = (s1 + s2) * 0.5
        hl = (t1 + t2) * 0.5
        lh = (s2 - s1) * 0.5
        hh = (t2 - t1) * 0.5
        return torch.cat((ll, hl, lh, hh), dim=1)


def haar_iwt(y: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`haar_dwt`: (N, 4C, H, W) → (N, C, 2H, 2W), in fp32."""
    with torch.autocast(device_type=y.device.type, enabled=False):
        n, c4, h, w = y.shape
        if c4 % 4:
            raise ValueError(f"IWT needs a channel count divisible by 4, got {c4}")
        ll, hl, lh, hh = _fp32(y).chunk(4, dim=1)
        # Undo the butterflies of haar_dwt (the transform is orthonormal: it is its own adjoint).
        s1, s2 = ll - lh, ll + lh
        t1, t2 = hl - hh, hl + hh
        a, b = (s1 - t1) * 0.5, (s1 + t1) * 0.5
        cc, d = (s2 - t2) * 0.5, (s2 + t2) * 0.5
        u = torch.stack((a, b, cc, d), dim=2).reshape(n, c4, h, w)
        return F.pixel_shuffle(u, 2)


class HaarDWT(nn.Module):
    """Parameter-free module wrapper of :func:`haar_dwt` (nothing in the state_dict)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return haar_dwt(x)


class HaarIWT(nn.Module):
    """Parameter-free module wrapper of :func:`haar_iwt` (nothing in the state_dict)."""

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        return haar_iwt(y)


# --------------------------------------------------------------------------- config


@dataclass(frozen=True)
class MWCNNConfig:
    """Shape of an MWCNN. Defaults are the paper's (160/256/256 wide, 4+4+8+4+4 = 24 layers)."""

    in_channels: int = 3
    widths: tuple[int, int, int] = (160, 256, 256)
    block_depth: int = 4  # conv layers per block on levels 1 and 2 (both paths)
    bottom_depth: int = 8  # conv layers of the deepest (level-3) block
    batch_norm: bool = True
    level_channel: bool = True  # FFDNet-style degradation-level input map
    guide_channels: int = 0  # extra inputs seen but not restored (see forward's ``guide``)
    extra: dict[str, str] = field(default_factory=dict, compare=False)  # free-form notes

    def __post_init__(self) -> None:
        if len(self.widths) != LEVELS or min(self.widths) < 1:
            raise ValueError(f"widths must be {LEVELS} positive ints, got {self.widths}")
        if self.block_depth < 2 or self.bottom_depth < 2:
            raise ValueError("block_depth and bottom_depth must be at least 2")

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> MWCNNConfig:
        raw = json.loads(text)
        raw["widths"] = tuple(raw["widths"])
        return cls(**raw)


def level_from_sigma(sigma: float) -> float:
    """Level-map value for Gaussian noise of std ``sigma`` on the 0–255 scale."""
    return float(sigma) / 255.0


def level_from_quality(quality: float) -> float:
    """Level-map value for JPEG quality ``quality`` (1–100): 0 = pristine, ~1 = worst."""
    return (100.0 - float(quality)) / 100.0


# --------------------------------------------------------------------------- network


def _conv_bn_relu(c_in: int, c_out: int, bn: bool) -> list[nn.Module]:
    layers: list[nn.Module] = [nn.Conv2d(c_in, c_out, 3, padding=1, bias=not bn)]
    if bn:
        layers.append(nn.BatchNorm2d(c_out))
    layers.append(nn.ReLU(inplace=True))
    return layers


def _block(
    c_in: int, width: int, c_out: int, depth: int, bn: bool, last_plain: bool
) -> nn.Sequential:
    """``depth`` 3×3 layers c_in → width → … → c_out; the last one is a bare conv if asked."""
    layers: list[nn.Module] = []
    chans = [c_in] + [width] * (depth - 1) + [c_out]
    for i in range(depth):
        if last_plain and i == depth - 1:
            layers.append(nn.Conv2d(chans[i], chans[i + 1], 3, padding=1, bias=True))
        else:
            layers += _conv_bn_relu(chans[i], chans[i + 1], bn)
    return nn.Sequential(*layers)


class MWCNN(nn.Module):
    """MWCNN with an optional FFDNet-style level input; see the module docstring for details.

    ``forward(x, level, guide)``: ``x`` is (N, C, H, W) in [0, 1] (H, W multiples of 8);
    ``level`` is a float, or a tensor of shape (N,) / (N, 1, H, W) with per-image levels
    (required when the config has ``level_channel=True``, ignored otherwise); ``guide`` is
    (N, guide_channels, H, W), maps the network sees beside ``x`` without restoring them (the
    other colour planes of a plane-by-plane colour denoise). Returns the restored (N, C, H, W).
    """

    def __init__(self, config: MWCNNConfig | None = None) -> None:
        super().__init__()
        self.config = cfg = config or MWCNNConfig()
        w1, w2, w3 = cfg.widths
        c0 = cfg.in_channels + cfg.guide_channels + (1 if cfg.level_channel else 0)
        bn, d, db = cfg.batch_norm, cfg.block_depth, cfg.bottom_depth
        self.dwt, self.iwt = HaarDWT(), HaarIWT()
        self.enc1 = _block(4 * c0, w1, w1, d, bn, last_plain=False)
        self.enc2 = _block(4 * w1, w2, w2, d, bn, last_plain=False)
        self.bottom = _block(4 * w2, w3, 4 * w2, db, bn, last_plain=False)
        self.dec2 = _block(w2, w2, 4 * w1, d, bn, last_plain=False)
        self.dec1 = _block(w1, w1, 4 * cfg.in_channels, d, bn, last_plain=True)
        self._init_weights()

    def _init_weights(self) -> None:
        """He (fan-in, ReLU) init for every conv and a zero last conv: the network starts as the
        identity and the signal neither vanishes nor explodes through its 24 layers. (PyTorch's
        default conv init shrinks activations ~1/√3 per layer: measured, a 24-layer MWCNN without
        BN then does not train at all.)
        """
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_in", nonlinearity="relu")
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
        last = self.dec1[-1]
        assert isinstance(last, nn.Conv2d)
        nn.init.zeros_(last.weight)
        if last.bias is not None:
            nn.init.zeros_(last.bias)

    def forward(self, x: torch.Tensor, level: float | torch.Tensor | None = None,
                guide: torch.Tensor | None = None) -> torch.Tensor:
        inp = _network_input(self.config, x, level, guide)
        e1 = self.enc1(self.dwt(inp))
        e2 = self.enc2(self.dwt(e1))
        d2 = self.iwt(self.bottom(self.dwt(e2))).to(e2.dtype) + e2
        d1 = self.iwt(self.dec2(d2)).to(e1.dtype) + e1
        residual = self.iwt(self.dec1(d1))
        return x + residual.to(x.dtype)


def _network_input(cfg: MWCNNConfig, x: torch.Tensor, level: float | torch.Tensor | None,
                   guide: torch.Tensor | None) -> torch.Tensor:
    """``x`` checked, with the guides and the level map beside it, as the first DWT takes it."""
    h, w = x.shape[-2:]
    if h % SIZE_MULTIPLE or w % SIZE_MULTIPLE:
        raise ValueError(f"MWCNN input must be a multiple of {SIZE_MULTIPLE}, got {h}×{w}")
    return _with_level(cfg, _with_guide(cfg, x, guide), level)


def _with_guide(cfg: MWCNNConfig, x: torch.Tensor, guide: torch.Tensor | None) -> torch.Tensor:
    wanted = cfg.guide_channels
    if wanted == 0:
        return x
    if guide is None or guide.shape[1] != wanted:
        got = None if guide is None else guide.shape[1]
        raise ValueError(f"this MWCNN takes {wanted} guide channels, got {got}")
    return torch.cat((x, guide.to(x.dtype)), dim=1)


def _with_level(cfg: MWCNNConfig, x: torch.Tensor, level: float | torch.Tensor | None
                ) -> torch.Tensor:
    if not cfg.level_channel:
        return x
    if level is None:
        raise ValueError("this MWCNN takes a degradation level (level_channel=True)")
    n, _, h, w = x.shape
    lv = torch.as_tensor(level, dtype=x.dtype, device=x.device)
    if lv.dim() <= 1:
        lv = lv.reshape(-1, 1, 1, 1).expand(n, 1, h, w)
    return torch.cat((x, lv), dim=1)


# --------------------------------------------------------------------------- inference form

# The Haar analysis filters of `haar_dwt`, per band [LL, HL, LH, HH], as 2×2 kernels over the
# polyphase components (row offset, column offset).
_HAAR_BANDS = torch.tensor([[[0.5, 0.5], [0.5, 0.5]], [[-0.5, 0.5], [-0.5, 0.5]],
                            [[-0.5, -0.5], [0.5, 0.5]], [[0.5, -0.5], [-0.5, 0.5]]])
# `haar_iwt`'s butterflies as one matrix: polyphase component [a, b, c, d] from the bands.
_HAAR_SYNTHESIS = torch.tensor([[0.5, -0.5, -0.5, 0.5], [0.5, 0.5, -0.5, -0.5],
                                [0.5, -0.5, 0.5, -0.5], [0.5, 0.5, 0.5, 0.5]])


class WaveletFusedMWCNN(nn.Module):
    """An MWCNN for inference: the same function (to fp32 rounding) in fewer, larger steps.

    A 3×3 conv after a DWT is one 6×6 conv of stride 2 on the DWT's input (the DWT is linear
    and local), with the same number of multiply-adds: the three DWTs of the contracting path
    go into the convs after them. The last conv, bare, takes the final IWT's butterflies into its
    weights, leaving a pixel shuffle. The two other IWTs follow a ReLU and stay, each a grouped
    1×1 conv and a pixel shuffle (`GroupedHaarIWT`) on bands the conv before it now writes
    channel by channel. What goes is the wavelets' reshuffles and sums in fp32 and the
    bf16↔fp32 casts around them: the JPEG network (32/64/64) at 512² in bf16, 2 threads, went
    from 0.066 to 0.049 s, the gray denoiser (64/128/128) from 0.167 to 0.148 s (2-core AMD
    EPYC). Made by `fuse_wavelets` from a network without BatchNorm (`fold_batchnorm` first);
    not for training. Under bf16 autocast the first conv still runs in fp32
    (`full_precision`): a bf16-rounded input took the colour-plane denoiser's bf16 output from
    57.1 to 54.9 dB against fp32 (256²).
    """

    def __init__(self, model: MWCNN) -> None:
        super().__init__()
        if model.config.batch_norm:
            raise ValueError("fold the BatchNorm into the convs first (fold_batchnorm)")
        self.config = model.config
        w1, w2, _ = model.config.widths
        self.enc1 = _dwt_into_first_conv(model.enc1)
        self.enc2 = _dwt_into_first_conv(model.enc2)
        self.bottom = _bands_channel_major(_dwt_into_first_conv(model.bottom))
        self.iwt2 = GroupedHaarIWT(w2)
        self.dec2 = _bands_channel_major(copy.deepcopy(model.dec2))
        self.iwt1 = GroupedHaarIWT(w1)
        *body, last = model.dec1
        assert isinstance(last, nn.Conv2d)
        self.dec1 = nn.Sequential(*copy.deepcopy(body), _iwt_into_conv(last))

    def forward(self, x: torch.Tensor, level: float | torch.Tensor | None = None,
                guide: torch.Tensor | None = None) -> torch.Tensor:
        first, *rest = self.enc1
        e1 = full_precision(first, _network_input(self.config, x, level, guide))
        for layer in rest:
            e1 = layer(e1)
        e2 = self.enc2(e1)
        d2 = self.iwt2(self.bottom(e2)).to(e2.dtype) + e2
        d1 = self.iwt1(self.dec2(d2)).to(e1.dtype) + e1
        return x + F.pixel_shuffle(self.dec1(d1), 2).to(x.dtype)


class GroupedHaarIWT(nn.Module):
    """:func:`haar_iwt` for bands ordered channel by channel (channel c's LL, HL, LH, HH at
    4c … 4c + 3): a grouped 1×1 conv mixes each channel's four bands into its four polyphase
    components (the synthesis butterflies), and a pixel shuffle lays them out at twice the size.
    It runs in the input's precision, in one pass. Measured in bf16, channels-last, 2 threads
    (2-core AMD EPYC), against the grouped stride-2 transposed conv it replaces (the same
    output bit for bit): 64 channels on 32² 0.89 → 0.16 ms, 128 on 64² 5.7 → 1.1 ms; whole
    networks, the JPEG one at 256² 14.7 → 13.1–13.7 ms and at 512² 43.4 → 40.5 ms, the
    colour-plane denoiser at 256² 46.9 → 40.3 ms and at 512² 157 → 142 ms a plane. (Before
    that, `haar_iwt`'s fp32 reshuffles: 8.9 ms against the transposed conv's 3.0 for 128 on
    64².) The kernel is a buffer left out of the state_dict."""

    kernel: torch.Tensor

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.channels = channels
        # Output 4c + k, polyphase component k = 2r + s of channel c (pixel_shuffle's order),
        # from channel c's bands: row k of the synthesis matrix.
        kernel = _HAAR_SYNTHESIS.reshape(4, 4, 1, 1)
        self.register_buffer("kernel", kernel.repeat(channels, 1, 1, 1), persistent=False)

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        components = F.conv2d(y, self.kernel.to(y.dtype), groups=self.channels)
        return F.pixel_shuffle(components, 2)


@torch.no_grad()
def _bands_channel_major(block: nn.Sequential) -> nn.Sequential:
    """`block` with its last conv's outputs reordered from band-major (b·C + c, as the DWT and
    `haar_iwt` lay them out) to channel-major (4c + b), as `GroupedHaarIWT` reads them. The
    ReLU after it is per element, so the reorder passes through."""
    last = max(i for i, layer in enumerate(block) if isinstance(layer, nn.Conv2d))
    conv = block[last]
    assert isinstance(conv, nn.Conv2d)
    bands = conv.out_channels
    order = torch.arange(bands).view(4, bands // 4).t().reshape(-1)
    conv.weight.copy_(conv.weight[order])
    if conv.bias is not None:
        conv.bias.copy_(conv.bias[order])
    return block


def fuse_wavelets(model: MWCNN) -> WaveletFusedMWCNN:
    """`model` (BatchNorm folded) as a `WaveletFusedMWCNN`, in eval mode, on its device."""
    return WaveletFusedMWCNN(model).eval()


@torch.no_grad()
def _dwt_into_first_conv(block: nn.Sequential) -> nn.Sequential:
    first, *rest = block
    assert isinstance(first, nn.Conv2d) and first.kernel_size == (3, 3)
    out, bands_in = first.weight.shape[:2]
    weight = first.weight.unflatten(1, (4, bands_in // 4))  # (out, band, channel, y, x)
    bands = _HAAR_BANDS.to(weight)
    # Tap (y, x) of band b sees input rows 2y + r, columns 2x + s around the output's 2i, 2j.
    kernel = torch.einsum("obcyx,brs->ocyrxs", weight, bands).reshape(out, bands_in // 4, 6, 6)
    fused = nn.Conv2d(bands_in // 4, out, 6, stride=2, padding=2, bias=first.bias is not None)
    fused = fused.to(weight)
    fused.weight.copy_(kernel)
    if first.bias is not None:
        fused.bias.copy_(first.bias)  # type: ignore[union-attr]
    return nn.Sequential(fused, *copy.deepcopy(rest))


@torch.no_grad()
def _iwt_into_conv(conv: nn.Conv2d) -> nn.Conv2d:
    bands_out, c_in = conv.weight.shape[:2]
    channels = bands_out // 4
    mix = _HAAR_SYNTHESIS.to(conv.weight)
    # Output channel 4·ch + k is polyphase component k of channel ch: pixel_shuffle's order.
    weight = torch.einsum("kb,bciyx->ckiyx", mix, conv.weight.unflatten(0, (4, channels)))
    fused = nn.Conv2d(c_in, bands_out, 3, padding=1, bias=conv.bias is not None).to(conv.weight)
    fused.weight.copy_(weight.reshape(bands_out, c_in, 3, 3))
    if conv.bias is not None:
        bias = torch.einsum("kb,bc->ck", mix, conv.bias.unflatten(0, (4, channels)))
        fused.bias.copy_(bias.reshape(bands_out))  # type: ignore[union-attr]
    return fused


def fold_batchnorm(model: MWCNN) -> MWCNN:
    """The same function as ``model.eval()`` without BatchNorm: each BN folded into its conv.

    A BN layer in eval mode is an affine map per channel, ``y = γ·(x − μ)/√(σ² + ε) + β``, so
    the conv before it can absorb it (weights scaled, bias added). Why it matters here: one set
    of running statistics has to serve every noise level (or JPEG quality) the level map
    covers, and with batches of 16 mixed levels those statistics are noisy enough to move the
    validation PSNR at σ = 15 from 26.15 to 29.02 dB between checkpoints 305 steps apart
    (measured in a fine-tune). A folded network trains on without that train/eval gap; it is
    also one memory pass per layer cheaper.
    """
    cfg = model.config
    if not cfg.batch_norm:
        return model
    folded = MWCNN(replace(cfg, batch_norm=False)).to(next(model.parameters()).device)
    for name in ("enc1", "enc2", "bottom", "dec2", "dec1"):
        _fold_block(getattr(model, name), getattr(folded, name))
    return folded.train(model.training)


def gray_from_colour(model: MWCNN) -> MWCNN:
    """A one-channel MWCNN computing exactly what ``model`` does for a gray image.

    A colour network serves gray by replicating it to R = G = B and averaging the three outputs.
    Both steps are linear at the ends of the network, so they fold into its first and last
    convs: the DWT is per channel, so the three replicated sub-bands of each band meet the first
    conv as one, with the sum of their weights; the last conv's three colour outputs of each
    band are averaged into one (the IWT and the residual add commute with the average). The
    result starts a gray-only fine-tune at the colour model's gray score, with the whole width
    then spent on gray.
    """
    cfg = model.config
    if cfg.in_channels == 1:
        return model
    colours = cfg.in_channels
    gray = MWCNN(replace(cfg, in_channels=1)).to(next(model.parameters()).device)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    first, last = "enc1.0.weight", f"dec1.{len(model.dec1) - 1}"
    c0 = colours + (1 if cfg.level_channel else 0)
    w = state[first].unflatten(1, (4, c0))  # (out, band, channel [R, G, B, level], 3, 3)
    merged = [w[:, :, :colours].sum(2, keepdim=True), w[:, :, colours:]]
    state[first] = torch.cat(merged, dim=2).flatten(1, 2)
    for key in (f"{last}.weight", f"{last}.bias"):
        state[key] = state[key].unflatten(0, (4, colours)).mean(1)  # band-major outputs
    gray.load_state_dict(state, strict=True)
    return gray.train(model.training)


def with_guides(model: MWCNN, guide_channels: int) -> MWCNN:
    """``model`` with ``guide_channels`` extra inputs, computing exactly what it did.

    The guides' weights in the first conv start at zero, so a fine-tune starts from the
    model's own score and learns what the guides add (for colour planes: the luminance's edges).
    """
    cfg = model.config
    if cfg.guide_channels:
        raise ValueError(f"the model already takes {cfg.guide_channels} guide channels")
    guided = MWCNN(replace(cfg, guide_channels=guide_channels)).to(next(model.parameters()).device)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    first = "enc1.0.weight"
    w = state[first].unflatten(1, (4, -1))  # (out, band, channel [x…, level], 3, 3)
    zeros = w.new_zeros(w.shape[0], 4, guide_channels, *w.shape[3:])
    c = cfg.in_channels
    state[first] = torch.cat([w[:, :, :c], zeros, w[:, :, c:]], dim=2).flatten(1, 2)
    guided.load_state_dict(state, strict=True)
    return guided.train(model.training)


@torch.no_grad()
def _fold_block(source: nn.Sequential, target: nn.Sequential) -> None:
    convs = [m for m in target if isinstance(m, nn.Conv2d)]
    layers = list(source)
    pairs: list[tuple[nn.Conv2d, nn.BatchNorm2d | None]] = []
    for i, layer in enumerate(layers):
        if isinstance(layer, nn.Conv2d):
            after = layers[i + 1] if i + 1 < len(layers) else None
            pairs.append((layer, after if isinstance(after, nn.BatchNorm2d) else None))
    if len(pairs) != len(convs):
        raise ValueError(f"cannot fold: {len(pairs)} convs in the source, {len(convs)} in target")
    for (conv, bn), out in zip(pairs, convs, strict=True):
        weight = conv.weight.detach().float()
        bias = (conv.bias.detach().float() if conv.bias is not None
                else torch.zeros(weight.shape[0], device=weight.device))
        if bn is not None:
            assert bn.running_mean is not None and bn.running_var is not None
            scale = bn.weight.float() / torch.sqrt(bn.running_var.float() + bn.eps)
            weight = weight * scale.reshape(-1, 1, 1, 1)
            bias = (bias - bn.running_mean.float()) * scale + bn.bias.float()
        out.weight.copy_(weight)
        assert out.bias is not None
        out.bias.copy_(bias)


def run_any_size(model: MWCNN, x: torch.Tensor, level: float | torch.Tensor | None) -> torch.Tensor:
    """``model(x, level)`` for any H×W: pads bottom/right to a multiple of 8, then crops.

    A convenience for whole-image calls and tests; large images go through the shared tiler,
    which pads the same way (:func:`shared.ml.tiling.pad_to_multiple`).
    """
    from shared.ml.tiling import pad_to_multiple

    h, w = x.shape[-2:]
    return model(pad_to_multiple(x, SIZE_MULTIPLE), level)[..., :h, :w]


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# --------------------------------------------------------------------------- shipped weights

CONFIG_KEY = "mwcnn_config"


def save_mwcnn(model: MWCNN, path: str | Path, metadata: dict[str, str] | None = None) -> None:
    """Write ``model`` as fp16 safetensors with its config in the metadata (key ``mwcnn_config``).

    BatchNorm running statistics are stored in fp32: fp16 variances lose precision for nothing
    (they are a few hundred numbers).
    """
    from safetensors.torch import save_file

    tensors: dict[str, torch.Tensor] = {}
    for key, value in model.state_dict().items():
        if not value.is_floating_point():
            continue  # BN's num_batches_tracked: unused in eval, kept out of the shipped file
        keep_fp32 = key.endswith(("running_mean", "running_var"))
        tensors[key] = value.detach().to("cpu", torch.float32 if keep_fp32 else torch.float16)
        tensors[key] = tensors[key].contiguous()
    meta = dict(metadata or {})
    meta[CONFIG_KEY] = model.config.to_json()
    save_file(tensors, str(path), metadata=meta)


def load_mwcnn(
    path: str | Path, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32
) -> MWCNN:
    """Load weights written by :func:`save_mwcnn`, with strict key checks; returns eval() model."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
        if CONFIG_KEY not in meta:
            raise ValueError(f"{path}: no '{CONFIG_KEY}' in safetensors metadata")
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open has no iter)
    model = MWCNN(MWCNNConfig.from_json(meta[CONFIG_KEY]))
    expected = {k for k, v in model.state_dict().items() if v.is_floating_point()}
    missing, unexpected = expected - tensors.keys(), tensors.keys() - expected
    if missing or unexpected:
        raise KeyError(f"{path}: missing keys {sorted(missing)}, unexpected {sorted(unexpected)}")
    state = model.state_dict()
    for key, value in tensors.items():
        if value.shape != state[key].shape:
            raise ValueError(f"{path}: {key} has shape {tuple(value.shape)}, "
                             f"expected {tuple(state[key].shape)}")
        state[key] = value.float()
    model.load_state_dict(state, strict=True)
    return model.to(device=device, dtype=dtype).eval()


def read_mwcnn_metadata(path: str | Path) -> dict[str, str]:
    """The safetensors metadata of a shipped MWCNN (config, task, ...) without loading tensors."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return dict(f.metadata() or {})
