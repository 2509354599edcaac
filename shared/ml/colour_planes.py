"""Colour photos through a one-channel denoiser: linear colour bases and the plane-by-plane pass.

A gray denoiser serves a colour photo by mapping it onto three decorrelated planes (luminance
and two chroma planes, as CBM3D does), denoising each at its own noise level and mapping back.
A network with guide channels (``MWCNNConfig.guide_channels == 3``) also sees all three noisy
planes while it restores one, so the chroma planes can follow the luminance's edges.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from shared.ml.dihedral import averaged_over_views
from shared.ml.models.mwcnn import level_from_sigma


@dataclass(frozen=True)
class ColourBasis:
    """A linear map of RGB in [0, 1] onto three planes for the gray network (working in [0, 1]).

    ``plane_c = Σ_k matrix[c][k]·rgb_k + offset[c]``. White Gaussian noise of σ in every RGB
    channel becomes noise of σ·‖row c‖ in plane c (`noise_gains`); the planes' noise is
    independent when the rows are orthogonal (the opponent basis, RGB), not for YCbCr.
    """

    name: str
    matrix: tuple[tuple[float, float, float], ...]
    offset: tuple[float, float, float]

    @property
    def noise_gains(self) -> tuple[float, ...]:
        return tuple(math.sqrt(sum(v * v for v in row)) for row in self.matrix)

    @property
    def inverse(self) -> tuple[tuple[float, ...], ...]:
        inv = np.linalg.inv(np.array(self.matrix, dtype=np.float64))
        return tuple(tuple(float(v) for v in row) for row in inv)

    def to_planes(self, rgb: torch.Tensor) -> torch.Tensor:
        """N×3×H×W RGB → N×3×H×W planes (elementwise in fp32: autocast leaves it alone)."""
        return _mix(rgb, self.matrix, self.offset)

    def to_rgb(self, planes: torch.Tensor) -> torch.Tensor:
        inv = self.inverse
        shifted = torch.stack([planes[:, c] - self.offset[c] for c in range(3)], dim=1)
        return _mix(shifted, inv, (0.0, 0.0, 0.0))


def _mix(x: torch.Tensor, matrix: tuple[tuple[float, ...], ...],
         offset: tuple[float, ...]) -> torch.Tensor:
    x = x.float()
    return torch.stack(
        [x[:, 0] * row[0] + x[:, 1] * row[1] + x[:, 2] * row[2] + off
         for row, off in zip(matrix, offset, strict=True)],
        dim=1,
    )


_S3, _S2, _S6 = math.sqrt(3.0), math.sqrt(2.0), math.sqrt(6.0)
#: The orthonormal opponent transform (CBM3D's decorrelating basis, made orthonormal): i.i.d.
#: noise of σ per RGB channel stays i.i.d. σ per opponent channel.
OPPONENT_ORTHONORMAL = (
    (1 / _S3, 1 / _S3, 1 / _S3),
    (1 / _S2, 0.0, -1 / _S2),
    (1 / _S6, -2 / _S6, 1 / _S6),
)
#: The opponent planes the gray network denoises: luminance = the orthonormal row ÷ √3 (the mean
#: of R, G, B, in [0, 1]; its σ ÷ √3), the two orthonormal chroma rows as they are, shifted by
#: 0.5 (σ kept). Chroma sits near 0.5 in photos; only strongly saturated colours leave [0, 1]
#: (pure red/blue: 0.5 ± 0.707; green/magenta: 0.5 ± 0.816), as unclipped noise does anyway.
OPPONENT = ColourBasis(
    "opponent",
    ((1 / 3, 1 / 3, 1 / 3), OPPONENT_ORTHONORMAL[1], OPPONENT_ORTHONORMAL[2]),
    (0.0, 0.5, 0.5),
)
#: The same with the chroma planes also scaled onto exactly [0, 1] (÷√2 and ÷(4/√6), and their
#: σ with them: 0.707σ, 0.612σ). Measured 0.00–0.08 dB below OPPONENT (docs/training.md).
OPPONENT_FITTED = ColourBasis(
    "opponent-fitted",
    ((1 / 3, 1 / 3, 1 / 3), (1 / 2, 0.0, -1 / 2), (1 / 4, -1 / 2, 1 / 4)),
    (0.0, 0.5, 0.5),
)
#: JPEG's full-range YCbCr (BT.601): planes in [0, 1], but the noise is correlated across them.
YCBCR = ColourBasis(
    "ycbcr",
    ((0.299, 0.587, 0.114), (-0.168736, -0.331264, 0.5), (0.5, -0.418688, -0.081312)),
    (0.0, 0.5, 0.5),
)
#: Each RGB channel on its own.
RGB = ColourBasis("rgb", ((1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0)), (0.0, 0.0, 0.0))
#: The bases the colour path can use (the benchmark's ``--models colour-bases`` scores each).
COLOUR_BASES = (OPPONENT, OPPONENT_FITTED, YCBCR, RGB)


#: A one-channel denoiser: (planes N×1×H×W, level, guide N×3×H×W or None) → N×1×H×W.
PlaneDenoiser = Callable[[torch.Tensor, float, "torch.Tensor | None"], torch.Tensor]


def plane_levels(sigma: float, basis: ColourBasis) -> list[float]:
    """The level-map value of each plane for RGB noise of std ``sigma`` (0–255 scale)."""
    return [level_from_sigma(sigma * gain) for gain in basis.noise_gains]


def denoise_planes(denoise_plane: PlaneDenoiser, rgb: torch.Tensor, sigma: float,
                   basis: ColourBasis, guided: bool,
                   denoise_chroma: PlaneDenoiser | None = None,
                   luma_views: int = 1) -> torch.Tensor:
    """N×3×H×W RGB in [0, 1] → denoised RGB, one plane of `basis` at a time (fp32 result).

    The planes run one after the other, so a tile needs the one-channel network's working
    memory, not three times it. ``guided``: each call also gets all three noisy planes.
    ``denoise_chroma``: the luminance first, then the chroma planes through this network, its
    guide the *denoised* luminance beside the two noisy chroma planes (`cascade_guide`), as
    CBM3D groups the chroma by the luminance's structure. ``luma_views``: the luminance
    averaged over that many flips/rotations (`dihedral.averaged_over_views`); it holds most of
    the error left (~89 % on CBSD68 σ25), so a second view there is worth most of what a second
    pass of every plane would be, for a third of the time.
    """
    return denoise_planes_at(denoise_plane, rgb, plane_levels(sigma, basis), basis, guided,
                             denoise_chroma, luma_views)


def denoise_planes_at(denoise_plane: PlaneDenoiser, rgb: torch.Tensor,
                      levels: Sequence[float], basis: ColourBasis, guided: bool,
                      denoise_chroma: PlaneDenoiser | None = None,
                      luma_views: int = 1) -> torch.Tensor:
    """`denoise_planes` with each plane's level given (`plane_levels`), as exports bake it."""
    planes = basis.to_planes(rgb)
    guide = planes.contiguous(memory_format=torch.channels_last) if guided else None

    def plane(c: int) -> torch.Tensor:
        return planes[:, c:c + 1].contiguous(memory_format=torch.channels_last)

    def luminance() -> torch.Tensor:
        # The guide, where there is one, is turned with the plane.
        inputs = (plane(0),) if guide is None else (plane(0), guide)
        return averaged_over_views(lambda x, *g: denoise_plane(x, levels[0], g[0] if g else None),
                                   inputs, luma_views)

    if denoise_chroma is None:
        out = [luminance(), *(denoise_plane(plane(c), levels[c], guide).float() for c in (1, 2))]
        return basis.to_rgb(torch.cat(out, dim=1))
    luma = luminance()
    chroma_guide = cascade_guide(planes, luma)
    out = [luma, *(denoise_chroma(plane(c), levels[c], chroma_guide).float() for c in (1, 2))]
    return basis.to_rgb(torch.cat(out, dim=1))


def cascade_guide(noisy_planes: torch.Tensor, denoised_luma: torch.Tensor) -> torch.Tensor:
    """The chroma network's guide: the denoised luminance, then the two noisy chroma planes."""
    guide = torch.cat([denoised_luma.float(), noisy_planes[:, 1:].float()], dim=1)
    return guide.contiguous(memory_format=torch.channels_last)
