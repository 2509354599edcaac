"""The 8 flips/rotations of an image batch, and averaging a network over some of them.

A restoration network is not exactly equivariant to turning its input, so its errors on the
turned views are partly independent: averaging the views mapped back cuts them (the "+" of the
EDSR/RCAN tables). All eight is `ensemble=true`; the colour denoiser averages two views of the
luminance by default (`colour_planes.denoise_planes_at`).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

#: (quarter turns, then a left-right flip) of each view; the identity first, then a quarter
#: turn: of the seven others, the second view that helped the colour denoiser's luminance most
#: (Kodak24 σ25, two views: quarter turn +0.063 dB, transpose +0.060, half turn +0.058,
#: left-right flip +0.056).
VIEWS: tuple[tuple[int, bool], ...] = (
    (0, False), (1, False), (2, False), (3, False),
    (0, True), (1, True), (2, True), (3, True),
)


def _turned(x: torch.Tensor, turns: int) -> torch.Tensor:
    """`torch.rot90(x, turns, dims=(2, 3))` written as flips and a transpose, which export to
    ONNX (opset 17 has no rot90; the peers' graphs in the speed benchmark contain this)."""
    turns %= 4
    if turns == 1:
        return x.flip(3).transpose(2, 3)
    if turns == 2:
        return x.flip(2).flip(3)
    if turns == 3:
        return x.flip(2).transpose(2, 3)
    return x


def view(x: torch.Tensor, turns: int, flip: bool) -> torch.Tensor:
    """N×C×H×W `x` turned by `turns` quarter turns, then flipped left-right if `flip`."""
    turned = _turned(x, turns)
    return turned.flip(3) if flip else turned


def unview(y: torch.Tensor, turns: int, flip: bool) -> torch.Tensor:
    """The inverse of :func:`view`: a result computed on the view, back in the input's frame."""
    return _turned(y.flip(3) if flip else y, -turns)


def averaged_over_views(
    run: Callable[..., torch.Tensor], inputs: tuple[torch.Tensor, ...], views: int
) -> torch.Tensor:
    """``run(*inputs)`` averaged over the first `views` of VIEWS (fp32).

    Every input is turned with the image (a level map, a mask, guide channels), each result is
    turned back, and the results are averaged. Only for fully convolutional networks whose
    input sides satisfy their size multiple both ways round (the tiler's tiles do).
    """
    if not 1 <= views <= len(VIEWS):
        raise ValueError(f"views must be 1..{len(VIEWS)}, got {views}")
    total: torch.Tensor | None = None
    for turns, flip in VIEWS[:views]:
        turned = (view(x, turns, flip).contiguous(memory_format=torch.channels_last)
                  for x in inputs)
        y = unview(run(*turned).float(), turns, flip)
        total = y if total is None else total + y
    assert total is not None
    return total if views == 1 else total / views
