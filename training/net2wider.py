"""Net2WiderNet (Chen, Goodfellow, Shlens, ICLR 2016) for MWCNN and DeepFill v1: a wider network
that starts as the narrower one's function, so a CPU-trained model can grow instead of starting
over.

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
(fold BN first with :func:`shared.ml.models.mwcnn.fold_batchnorm`).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import nn

from shared.ml.models.deepfill_contextual_attention import DeepFillV1
from shared.ml.models.mwcnn import MWCNN


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


def _widen_conv(old: nn.Conv2d, new: nn.Conv2d, in_map: torch.Tensor, out_map: torch.Tensor,
                noise: float, generator: torch.Generator) -> None:
    into = _Space.from_map(in_map, old.in_channels)
    out = _Space.from_map(out_map, old.out_channels)
    _widen_conv_between(old, new, into, out, noise, generator)


# --------------------------------------------------------------------------- DeepFill v1


@dataclass(frozen=True)
class _Space:
    """A widened channel space: new channel i carries ``scale[i]`` × old channel ``source[i]``;
    a conv reading it weighs new channel i by ``share[i]`` × the old channel's weight, with
    Σ share·scale = 1 over each old channel's copies (so the reader's sum is unchanged)."""

    source: torch.Tensor
    scale: torch.Tensor
    share: torch.Tensor

    @staticmethod
    def identity(width: int) -> _Space:
        ones = torch.ones(width)
        return _Space(torch.arange(width), ones, ones)

    @staticmethod
    def from_map(source: torch.Tensor, old: int, *, norm_preserving: bool = False) -> _Space:
        """The space whose new channel i copies old channel ``source[i]``. ``norm_preserving``:
        each of k copies carries 1/√k of the value, so dot products over the channels (the
        contextual attention's cosine similarity) are unchanged too; valid where the writer's
        activation is positively homogeneous (ReLU). Otherwise copies carry the whole value
        and a reader splits the weight among them (Net2Wider's rule)."""
        copies = torch.bincount(source, minlength=old).float()[source]
        if norm_preserving:
            return _Space(source, copies.rsqrt(), copies.rsqrt())
        return _Space(source, torch.ones(len(source)), 1.0 / copies)

    @staticmethod
    def copied(old: int, new: int, generator: torch.Generator, *, norm_preserving: bool = False
               ) -> _Space:
        """Net2Wider's random copies (:func:`_channel_map`) as a space."""
        source = _channel_map(old, new, generator)
        return _Space.from_map(source, old, norm_preserving=norm_preserving)

    def then(self, other: _Space, offset: int) -> _Space:
        """This space followed by ``other`` (a channel concatenation; ``offset``: old width of
        this one)."""
        return _Space(torch.cat((self.source, other.source + offset)),
                      torch.cat((self.scale, other.scale)), torch.cat((self.share, other.share)))


@torch.no_grad()
def _widen_conv_between(old: nn.Conv2d, new: nn.Conv2d, into: _Space, out: _Space, noise: float,
                        generator: torch.Generator) -> None:
    if new.weight.shape[:2] != (len(out.source), len(into.source)):
        raise ValueError(f"conv {tuple(new.weight.shape)} does not match the spaces "
                         f"({len(out.source)} out, {len(into.source)} in)")
    weight = old.weight[out.source][:, into.source] * into.share.reshape(1, -1, 1, 1)
    if noise:
        weight = weight + torch.randn(weight.shape, generator=generator) * weight.std() * noise
    new.weight.copy_(weight * out.scale.reshape(-1, 1, 1, 1))
    if new.bias is not None:
        assert old.bias is not None
        new.bias.copy_(old.bias[out.source] * out.scale)


def _convs(module: nn.Module) -> list[nn.Conv2d]:
    return [m for m in module.modules() if isinstance(m, nn.Conv2d)]


def _widen_chain(old: list[nn.Conv2d], new: list[nn.Conv2d], into: _Space, out: _Space | None,
                 noise: float, generator: torch.Generator) -> _Space:
    """Widen a plain chain of convs from space ``into``; hidden spaces get fresh copies, the last
    conv writes ``out`` (fresh copies when None). Returns the space the chain ends in."""
    space = into
    for i, (old_conv, new_conv) in enumerate(zip(old, new, strict=True)):
        last = i == len(old) - 1
        if last and out is not None:
            target = out
        else:
            target = _Space.copied(old_conv.out_channels, new_conv.out_channels, generator)
        _widen_conv_between(old_conv, new_conv, space, target, noise, generator)
        space = target
    return space


def widen_deepfill(model: DeepFillV1, width: int, *, noise: float = 1e-3, seed: int = 0
                   ) -> DeepFillV1:
    """A copy of ``model`` at cnum ``width`` (≥ the old) computing the same function, up to
    ``noise`` (relative std of the symmetry-breaking perturbation; 0 = exact).

    Every conv chain is plain (ELU between convs) except where the refinement network's two
    branches meet: the attention branch's features (ReLU) are widened norm-preserving so the
    cosine scores, and so the attention, stay the same; the attention pastes those features
    back linearly, so its output lives in the same space; the decoder reads the concatenation
    of the hallucination branch's space and the attention branch's.
    """
    cfg = model.config
    if width < cfg.width:
        raise ValueError(f"width {width} must be at least {cfg.width}")
    generator = torch.Generator().manual_seed(seed)
    wide = DeepFillV1(replace(cfg, width=width))
    image_in, image_out = _Space.identity(5), _Space.identity(3)
    coarse_old, coarse_new = _convs(model.coarse), _convs(wide.coarse)
    _widen_chain(coarse_old, coarse_new, image_in, image_out, noise, generator)
    old_r, new_r = model.refine, wide.refine
    hallucinated = _widen_chain(_convs(old_r.hallucinate), _convs(new_r.hallucinate), image_in,
                                None, noise, generator)
    old_attn = _convs(old_r.attn_encoder)
    features = _Space.copied(old_attn[-1].out_channels, _convs(new_r.attn_encoder)[-1].out_channels,
                             generator, norm_preserving=True)
    _widen_chain(old_attn, _convs(new_r.attn_encoder), image_in, features, noise, generator)
    attended = _widen_chain(_convs(old_r.attn_after), _convs(new_r.attn_after), features, None,
                            noise, generator)
    joined = hallucinated.then(attended, offset=4 * cfg.width)
    _widen_chain(_convs(old_r.decoder), _convs(new_r.decoder), joined, image_out, noise, generator)
    return wide.train(model.training)
