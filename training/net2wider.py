"""Net2WiderNet for MWCNN (Chen, Goodfellow, Shlens, ICLR 2016): a wider network that starts as
the narrower one's function, so a CPU-trained model can grow instead of starting over.

Each hidden channel space of width ``w`` becomes ``w' ≥ w`` channels: the first ``w`` are the old
ones, the others copies of randomly chosen old channels. A conv writing into the space gets the
copied filters (and biases); a conv reading from it divides each old input channel's weights among
that channel's copies, so the sum it computes is unchanged. Small noise on the split weights
breaks the symmetry between copies (otherwise they would receive identical gradients forever).

MWCNN's spaces are linked: the Haar DWT turns a ``w``-channel space into ``4w`` band-major
channels (all LL, then HL, LH, HH), the IWT turns ``4w`` back into ``w``, and the skip sums
``IWT(bottom) + e2`` and ``IWT(dec2) + e1`` need both terms in the same space. So one map per
level serves the encoder output, the IWT output added to it and the decoder input; the
band-major expansion of a map serves the 4w-channel sides. Works on a BatchNorm-free network
(fold BN first with :func:`shared.models.mwcnn.fold_batchnorm`).
"""

from __future__ import annotations

from dataclasses import replace

import torch
from torch import nn

from shared.models.mwcnn import MWCNN


def widen_mwcnn(model: MWCNN, widths: tuple[int, int, int], *, noise: float = 1e-3,
                seed: int = 0) -> MWCNN:
    """A copy of ``model`` at ``widths`` (each ≥ the old) computing the same function, up to
    ``noise`` (relative std of the symmetry-breaking perturbation; 0 = exact)."""
    cfg = model.config
    if cfg.batch_norm:
        raise ValueError("widen a BatchNorm-free MWCNN (fold_batchnorm first)")
    if any(new < old for new, old in zip(widths, cfg.widths, strict=True)):
        raise ValueError(f"widths {widths} must each be at least {cfg.widths}")
    generator = torch.Generator().manual_seed(seed)
    wide = MWCNN(replace(cfg, widths=tuple(widths)))
    (w1, w2, w3), (v1, v2, v3) = cfg.widths, widths
    m1, m2 = _channel_map(w1, v1, generator), _channel_map(w2, v2, generator)
    c0 = cfg.in_channels + (1 if cfg.level_channel else 0)
    c_out = 4 * cfg.in_channels
    plans = {
        # block: (input map, [hidden maps], output map)
        "enc1": (_identity(4 * c0), _hidden(w1, v1, cfg.block_depth, generator), m1),
        "enc2": (_bands(m1, w1), _hidden(w2, v2, cfg.block_depth, generator), m2),
        "bottom": (_bands(m2, w2), _hidden(w3, v3, cfg.bottom_depth, generator), _bands(m2, w2)),
        "dec2": (m2, _hidden(w2, v2, cfg.block_depth, generator), _bands(m1, w1)),
        "dec1": (m1, _hidden(w1, v1, cfg.block_depth, generator), _identity(c_out)),
    }
    for name, (in_map, hidden, out_map) in plans.items():
        maps = [in_map, *hidden, out_map]
        old_convs = [m for m in getattr(model, name) if isinstance(m, nn.Conv2d)]
        new_convs = [m for m in getattr(wide, name) if isinstance(m, nn.Conv2d)]
        for i, (old, new) in enumerate(zip(old_convs, new_convs, strict=True)):
            _widen_conv(old, new, maps[i], maps[i + 1], noise, generator)
    return wide.train(model.training)


def _identity(width: int) -> torch.Tensor:
    return torch.arange(width)


def _channel_map(old: int, new: int, generator: torch.Generator) -> torch.Tensor:
    """New channel → old channel it copies: the old ones first, then random repeats."""
    extra = torch.randint(0, old, (new - old,), generator=generator)
    return torch.cat((torch.arange(old), extra))


def _hidden(old: int, new: int, depth: int, generator: torch.Generator) -> list[torch.Tensor]:
    return [_channel_map(old, new, generator) for _ in range(depth - 1)]


def _bands(mapping: torch.Tensor, old_width: int) -> torch.Tensor:
    """The map of the 4·w band-major channels a DWT makes of a mapped w-channel space."""
    return torch.cat([band * old_width + mapping for band in range(4)])


@torch.no_grad()
def _widen_conv(old: nn.Conv2d, new: nn.Conv2d, in_map: torch.Tensor, out_map: torch.Tensor,
                noise: float, generator: torch.Generator) -> None:
    if new.weight.shape[:2] != (len(out_map), len(in_map)):
        raise ValueError(f"conv {tuple(new.weight.shape)} does not match the maps "
                         f"({len(out_map)} out, {len(in_map)} in)")
    copies = torch.bincount(in_map, minlength=old.weight.shape[1]).float()
    weight = old.weight[out_map][:, in_map] / copies[in_map].reshape(1, -1, 1, 1)
    if noise:
        scale = weight.std() * noise
        weight = weight + torch.randn(weight.shape, generator=generator) * scale
    new.weight.copy_(weight)
    if new.bias is not None:
        assert old.bias is not None
        new.bias.copy_(old.bias[out_map])
