"""Generative Image Inpainting with Contextual Attention (Yu, Lin, Yang, Shen, Lu, Huang; CVPR'18).

DeepFill v1's generator, two stages (paper Fig. 2/3, layer list of the authors' release):

* **Coarse network**: an encoder (5×5 conv, two stride-2 downsamplings) to 1/4 resolution, four
  dilated 3×3 convs (rates 2, 4, 8, 16) for a large receptive field, and a decoder (nearest
  upsampling + conv) back to full resolution. Trained with the reconstruction loss only.
* **Refinement network**, on the coarse result pasted into the hole, with two parallel encoders:
  a dilated-conv branch that hallucinates content, and a branch ending in the **contextual
  attention** layer (:class:`ContextualAttention`) that copies features from the known region.
  Their outputs are concatenated and decoded to the refined image.

Inputs: the image in [0, 1] (hole pixels are ignored, or read as the prefill: see below) and
the mask (1 = hole). Internally the
network works on [-1, 1] as the paper does, with the input ``[x·(1-m), 1, m]`` (5 channels: the
constant plane lets zero-padded borders be told apart from black pixels). Convolutions are
*vanilla* (v1; gated convolutions are v2), activations ELU, outputs clipped to [-1, 1].

Deviations, kept small:

* **Free-form masks.** v1 trained on one rectangle per batch; here every sample has its own mask,
  so the attention layer takes a per-sample mask (a background patch is usable only when it
  holds no hole pixel, as in the paper).
* **Cosine similarity** normalises both foreground and background patches (the paper's eq. 1);
  the authors' release normalises only the background patches.
* **Width** (the paper's ``cnum`` = 32) is a constructor argument; the shipped model is narrower
  (what a CPU budget trains) and records its width in the weights' metadata.
* **Prefilled holes** (``prefill="telea"``, a config field stored in the weights' metadata): the
  caller fills the hole with OpenCV's Telea inpainting (:func:`shared.ml.inpaint_window.telea_fill`)
  and the coarse network sees that fill instead of zeros. The paper's zeros (``"zeros"``, the
  default) make the network learn the colours and smooth continuation Telea already gives, which
  its 1M-iteration GPU schedule affords and a few thousand CPU steps do not: from the prefill it
  only has to learn what Telea gets wrong (texture, structure across the hole). The refinement
  stage is unchanged (it always sees the coarse result pasted into the hole).
* **Residual outputs** (``output="residual"``, only with the Telea prefill): each stage adds its
  output to its input instead of replacing it, and the two output convolutions start at zero,
  so an untrained network returns exactly the Telea fill and training starts from Telea's
  score rather than below it. Without this the network must rebuild every pixel of the hole
  through its 1/4-resolution bottleneck, which a short training leaves blurrier than Telea.

Height and width must be multiples of :data:`SIZE_MULTIPLE` (two downsamplings, then the
attention's rate-2 downsampling).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Literal, cast

import torch
from torch import nn
from torch.nn import functional as F

SIZE_MULTIPLE = 8
#: The paper's softmax scale (λ = 10) on cosine similarities.
SOFTMAX_SCALE = 10.0
Prefill = Literal["zeros", "telea"]
PREFILLS: tuple[str, ...] = ("zeros", "telea")
Output = Literal["image", "residual"]
OUTPUTS: tuple[str, ...] = ("image", "residual")


# --------------------------------------------------------------------------- contextual attention


def _identity_fuse(scores: torch.Tensor, fg_hw: tuple[int, int], bg_hw: tuple[int, int],
                   kernel: int) -> torch.Tensor:
    """Attention propagation: add the scores of neighbouring (foreground, background) pairs.

    ``scores`` is (Pf, Pb), foreground positions × background positions, both row-major. A
    k×k identity kernel over that matrix sums s(p+d, q+d) for d in -k//2..k//2, i.e. along
    rows (left/right neighbours); doing it again after swapping to column-major order propagates
    along columns (up/down). This is the paper's "attention propagation" (its release does the
    same, including the wrap at row ends).
    """
    eye = torch.eye(kernel, dtype=scores.dtype, device=scores.device)[None, None]
    pad = kernel // 2
    (fh, fw), (bh, bw) = fg_hw, bg_hw
    out = F.conv2d(scores[None, None], eye, padding=pad)[0, 0]
    out = out.reshape(fh, fw, bh, bw).permute(1, 0, 3, 2).reshape(fh * fw, bh * bw)
    out = F.conv2d(out[None, None], eye, padding=pad)[0, 0]
    return out.reshape(fw, fh, bw, bh).permute(1, 0, 3, 2).reshape(fh * fw, bh * bw)


class ContextualAttention(nn.Module):
    """Fill foreground (hole) features from background patches (paper §3.2).

    1. Background patches for matching: 3×3 patches of the background at 1/``rate`` resolution
       (stride 1); a patch is valid when it holds no hole pixel.
    2. Scores: cosine similarity of every foreground position's 3×3 patch with every valid
       background patch (a convolution with the normalised patches as filters).
    3. Optional attention propagation (:func:`_identity_fuse`), then a softmax over background
       patches with scale ``softmax_scale``.
    4. Reconstruction: the *full-resolution* background patches (2·rate × 2·rate, stride rate)
       weighted by the attention and pasted back with a transposed convolution, divided by 4
       (every pixel is covered by 2×2 overlapping patches).

    Parameter-free. ``forward(fg, bg, mask)``: fg/bg (B, C, H, W), mask (B, 1, H, W) with 1 = hole;
    H and W multiples of ``rate``. Returns (B, C, H, W).
    """

    def __init__(self, patch: int = 3, rate: int = 2, softmax_scale: float = SOFTMAX_SCALE,
                 fuse: bool = True, fuse_kernel: int = 3) -> None:
        super().__init__()
        self.patch, self.rate, self.softmax_scale = patch, rate, softmax_scale
        self.fuse, self.fuse_kernel = fuse, fuse_kernel

    def _raw_patches(self, bg: torch.Tensor) -> torch.Tensor:
        """(B, L, C, 2r, 2r) full-resolution patches centred on each 1/r-resolution position."""
        r = self.rate
        k = 2 * r
        padded = F.pad(bg, (r // 2, r - r // 2, r // 2, r - r // 2))
        cols = F.unfold(padded, kernel_size=k, stride=r)  # (B, C·k·k, L)
        b, _, n = cols.shape
        return cols.transpose(1, 2).reshape(b, n, bg.shape[1], k, k)

    def _match_patches(self, bg_small: torch.Tensor) -> torch.Tensor:
        """(B, L, C, p, p) unit-norm patches of the downscaled background."""
        p = self.patch
        cols = F.unfold(bg_small, kernel_size=p, padding=p // 2)  # (B, C·p·p, L)
        cols = cols / cols.norm(dim=1, keepdim=True).clamp_min(1e-4)
        b, _, n = cols.shape
        return cols.transpose(1, 2).reshape(b, n, bg_small.shape[1], p, p)

    def _valid_background(self, mask_small: torch.Tensor) -> torch.Tensor:
        """(B, L): 1 where the background patch holds no hole pixel."""
        p = self.patch
        holes = F.max_pool2d(mask_small, kernel_size=p, stride=1, padding=p // 2)
        return (holes.flatten(1) == 0).to(mask_small.dtype)

    def _fg_norms(self, fg_small: torch.Tensor) -> torch.Tensor:
        """(B, 1, h, w) norm of each foreground 3×3 patch (for the cosine similarity)."""
        p = self.patch
        energy = F.avg_pool2d(fg_small.pow(2).sum(1, keepdim=True), p, stride=1, padding=p // 2,
                              count_include_pad=True) * (p * p)
        return energy.sqrt().clamp_min(1e-4)

    def attention(self, fg: torch.Tensor, bg: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """(B, Pb, h, w): attention weights over background patches for each foreground position."""
        r = self.rate
        fg_small, bg_small = fg[:, :, ::r, ::r], bg[:, :, ::r, ::r]
        mask_small = F.max_pool2d(mask, r) if r > 1 else mask
        h, w = fg_small.shape[-2:]
        filters = self._match_patches(bg_small)
        valid = self._valid_background(mask_small)
        norms = self._fg_norms(fg_small)
        out = []
        for i in range(fg.shape[0]):
            scores = F.conv2d(fg_small[i : i + 1], filters[i], padding=self.patch // 2)
            scores = scores / norms[i : i + 1]  # (1, Pb, h, w) cosine similarities
            # As (Pf, Pb), foreground rows: the softmax runs along memory, with no copy to
            # make the background axis contiguous (a third of the attention's time at 256²).
            flat = scores[0].flatten(1).t()
            if self.fuse:
                flat = _identity_fuse(flat, (h, w), (h, w), self.fuse_kernel)
            # Invalid patches get a very low score (not the release's 0), so they take no weight
            # and a mask that leaves nothing valid gives zeros rather than NaN.
            keep = valid[i].view(1, -1)
            flat = flat * self.softmax_scale * keep - 1e4 * (1 - keep)
            weights = torch.softmax(flat.contiguous(), dim=1) * keep
            out.append(weights.t().reshape(1, -1, h, w))
        return torch.cat(out)

    def forward(self, fg: torch.Tensor, bg: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        # Matching and softmax in fp32: a scale-10 softmax over ~10³ patches is fragile in bf16.
        dtype = fg.dtype
        fg, bg, mask = fg.float(), bg.float(), mask.float()
        weights = self.attention(fg, bg, mask)
        raw = self._raw_patches(bg)
        r = self.rate
        height, width = bg.shape[-2:]
        out = []
        for i in range(fg.shape[0]):
            pasted = F.conv_transpose2d(weights[i : i + 1], raw[i], stride=r)
            out.append(pasted[:, :, r // 2 : r // 2 + height, r // 2 : r // 2 + width] / 4.0)
        return torch.cat(out).to(dtype)


# --------------------------------------------------------------------------- generator


def conv(cin: int, cout: int, kernel: int = 3, stride: int = 1, dilation: int = 1,
         activation: bool = True) -> nn.Sequential:
    """The release's ``gen_conv``: 'same' zero padding, ELU (none on the output layer)."""
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, kernel, stride,
                                         padding=dilation * (kernel - 1) // 2, dilation=dilation)]
    if activation:
        layers.append(nn.ELU())
    return nn.Sequential(*layers)


def up_conv(cin: int, cout: int) -> nn.Sequential:
    """The release's ``gen_deconv``: nearest ×2 upsampling then a 3×3 conv."""
    return nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"), conv(cin, cout))


def dilated_stack(channels: int) -> nn.Sequential:
    return nn.Sequential(*(conv(channels, channels, dilation=d) for d in (2, 4, 8, 16)))


def encoder(cin: int, c: int, last: int | None = None) -> nn.Sequential:
    """5×5 conv, then (stride-2, conv) twice: 1/4 resolution with ``last`` (default 4c) channels."""
    return nn.Sequential(
        conv(cin, c, 5), conv(c, 2 * c, 3, 2), conv(2 * c, 2 * c),
        conv(2 * c, 4 * c, 3, 2), conv(4 * c, 4 * c), conv(4 * c, last or 4 * c),
    )


def decoder(cin: int, c: int) -> nn.Sequential:
    """Two convs at 1/4, upsample-conv, conv, upsample-conv, c/2 conv, 3-channel output."""
    half = max(1, c // 2)
    return nn.Sequential(
        conv(cin, 4 * c), conv(4 * c, 4 * c),
        up_conv(4 * c, 2 * c), conv(2 * c, 2 * c),
        up_conv(2 * c, c), conv(c, half), conv(half, 3, activation=False),
    )


@dataclass(frozen=True)
class DeepFillConfig:
    width: int = 32  # the paper's cnum
    softmax_scale: float = SOFTMAX_SCALE
    attention_rate: int = 2
    fuse: bool = True
    prefill: Prefill = "zeros"  # what the coarse network sees in the hole (module docstring)
    output: Output = "image"  # "residual": each stage corrects its input (module docstring)

    def __post_init__(self) -> None:
        if self.prefill not in PREFILLS:
            raise ValueError(f"prefill must be one of {PREFILLS}, got {self.prefill!r}")
        if self.output not in OUTPUTS:
            raise ValueError(f"output must be one of {OUTPUTS}, got {self.output!r}")
        if self.output == "residual" and self.prefill != "telea":
            raise ValueError("output='residual' needs prefill='telea': a zero hole has nothing "
                             "to correct")

    def to_json(self) -> dict[str, object]:
        return asdict(self)


class CoarseNetwork(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        c = width
        # Encoder to 1/4 (ends at 4c), dilated convs, decoder: the release's conv1..conv17.
        self.encoder = encoder(5, c)
        self.dilated = dilated_stack(4 * c)
        self.decoder = decoder(4 * c, c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.dilated(self.encoder(x)))


class RefinementNetwork(nn.Module):
    def __init__(self, width: int, attention: ContextualAttention) -> None:
        super().__init__()
        c = width
        self.hallucinate = nn.Sequential(encoder(5, c), dilated_stack(4 * c))
        # The attention branch's last encoder conv uses ReLU in the release (pmconv6).
        attn_encoder = encoder(5, c)
        cast(nn.Sequential, attn_encoder[-1])[1] = nn.ReLU()
        self.attn_encoder = attn_encoder
        self.attention = attention
        self.attn_after = nn.Sequential(conv(4 * c, 4 * c), conv(4 * c, 4 * c))
        self.decoder = decoder(8 * c, c)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        hallucinated = self.hallucinate(x)
        features = self.attn_encoder(x)
        mask_small = F.max_pool2d(mask, 4)  # features are at 1/4: any hole pixel makes a hole
        attended = self.attn_after(self.attention(features, features, mask_small))
        return self.decoder(torch.cat([hallucinated, attended], dim=1))


class DeepFillV1(nn.Module):
    """The two-stage generator. ``forward(image, mask) -> (coarse, refined)``, both in [0, 1].

    ``image``: (B, 3, H, W) in [0, 1]; ``mask``: (B, 1, H, W), 1 = hole. Known pixels of the
    outputs are the network's reconstruction, not the input: composite with :meth:`complete`.
    """

    def __init__(self, config: DeepFillConfig | None = None, *, width: int | None = None) -> None:
        super().__init__()
        config = config or DeepFillConfig()
        if width is not None:
            config = replace(config, width=width)
        self.config = config
        self.coarse = CoarseNetwork(config.width)
        attention = ContextualAttention(rate=config.attention_rate,
                                        softmax_scale=config.softmax_scale, fuse=config.fuse)
        self.refine = RefinementNetwork(config.width, attention)
        self.apply(_release_init)
        if config.output == "residual":
            self.zero_output_layers()

    def zero_output_layers(self) -> None:
        """Zero both stages' last convolution: a residual network then returns its input."""
        for decoder_ in (self.coarse.decoder, self.refine.decoder):
            last = cast(nn.Conv2d, cast(nn.Sequential, decoder_[-1])[0])
            nn.init.zeros_(last.weight)
            if last.bias is not None:
                nn.init.zeros_(last.bias)

    @staticmethod
    def _network_input(
        x: torch.Tensor, mask: torch.Tensor, keep_hole: bool = False
    ) -> torch.Tensor:
        ones = torch.ones_like(mask)
        return torch.cat([x if keep_hole else x * (1 - mask), ones, mask], dim=1)

    def forward(self, image: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if image.shape[-2] % SIZE_MULTIPLE or image.shape[-1] % SIZE_MULTIPLE:
            raise ValueError(f"height and width must be multiples of {SIZE_MULTIPLE}, "
                             f"got {tuple(image.shape[-2:])}")
        mask = mask.to(image.dtype)
        x = image * 2 - 1
        prefilled = self.config.prefill == "telea"
        residual = self.config.output == "residual"
        coarse = self.coarse(self._network_input(x, mask, keep_hole=prefilled))
        coarse = (coarse + x if residual else coarse).clamp(-1, 1)
        merged = coarse * mask + x * (1 - mask)
        # The refinement stage sees the coarse fill pasted into the hole (the release's
        # ``xnow = concat([x, ones, ones * mask])``): zeroing it here would leave the stage
        # only the known pixels, and a residual refinement nothing to correct.
        refined = self.refine(self._network_input(merged, mask, keep_hole=True), mask)
        refined = (refined + merged if residual else refined).clamp(-1, 1)
        return (coarse + 1) / 2, (refined + 1) / 2

    @staticmethod
    def complete(image: torch.Tensor, output: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Known pixels from ``image``, hole pixels from ``output``."""
        return output * mask + image * (1 - mask)


def _release_init(module: nn.Module) -> None:
    """TensorFlow's conv defaults, as in the release: Glorot-uniform weights, zero biases.

    PyTorch's default (variance 1/(3·fan_in)) shrinks the signal at each of the refinement
    stage's ~17 layers: its last features started at std ~4e-3, too weak for training to
    pick up.
    """
    if isinstance(module, nn.Conv2d):
        nn.init.xavier_uniform_(module.weight)
        if module.bias is not None:
            nn.init.zeros_(module.bias)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def config_from_metadata(metadata: dict[str, str]) -> DeepFillConfig:
    """The config stored in a weights file's metadata (keys of :class:`DeepFillConfig`)."""
    defaults = DeepFillConfig()
    return DeepFillConfig(
        width=int(metadata.get("width", defaults.width)),
        softmax_scale=float(metadata.get("softmax_scale", defaults.softmax_scale)),
        attention_rate=int(metadata.get("attention_rate", defaults.attention_rate)),
        fuse=metadata.get("fuse", str(defaults.fuse)) in ("True", "true", "1"),
        prefill=metadata.get("prefill", defaults.prefill),  # type: ignore[arg-type]
        output=metadata.get("output", defaults.output),  # type: ignore[arg-type]
    )
