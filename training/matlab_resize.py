"""MATLAB-compatible `imresize(..., 'bicubic')`: the convention every SR benchmark's LR images
were made with (the `LR_bicubic/X4` files of Set5/Set14 reproduce to within one grey level, see
`benchmarks/check_matlab_bicubic.py`).

What makes it differ from PIL/OpenCV bicubic:
- Keys' cubic kernel with a = -0.5 (OpenCV uses -0.75).
- When downscaling, the kernel is stretched by 1/scale (antialiasing), so a ×1/4 reduction
  averages over a 16-tap window per axis instead of sampling 4 taps.
- Taps falling outside the image are mirrored symmetrically (edge pixel repeated).
- Each row of weights is normalised to sum to one; axes are resized one at a time, rows first
  when both scales are equal; uint8 input is rounded back to uint8 after *each* pass, as
  MATLAB's `imresizemex` keeps the input class between passes.

Each pass is a dense (out × in) matrix product, which is fast for the image sizes used here.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import torch
from numpy.typing import NDArray

_KERNEL_WIDTH = 4.0


def cubic(x: NDArray[np.float64]) -> NDArray[np.float64]:
    """Keys' cubic convolution kernel with a = -0.5 (MATLAB's `cubic`)."""
    ax = np.abs(x)
    ax2, ax3 = ax * ax, ax * ax * ax
    near = (1.5 * ax3 - 2.5 * ax2 + 1.0) * (ax <= 1)
    far = (-0.5 * ax3 + 2.5 * ax2 - 4.0 * ax + 2.0) * ((ax > 1) & (ax <= 2))
    return near + far


@functools.lru_cache(maxsize=256)
def resize_matrix(in_len: int, out_len: int, scale: float) -> NDArray[np.float64]:
    """The (out_len × in_len) matrix of one MATLAB bicubic pass along one axis."""
    antialias = scale < 1
    width = _KERNEL_WIDTH / scale if antialias else _KERNEL_WIDTH
    x = np.arange(1, out_len + 1, dtype=np.float64)
    # Output pixel x (1-based) sits at u in input coordinates: pixel centres line up.
    u = x / scale + 0.5 * (1.0 - 1.0 / scale)
    left = np.floor(u - width / 2.0)
    taps = math.ceil(width) + 2
    idx = left[:, None] + np.arange(taps)[None, :]
    dist = u[:, None] - idx
    weights = scale * cubic(dist * scale) if antialias else cubic(dist)
    weights /= weights.sum(axis=1, keepdims=True)
    # Symmetric mirroring (1..n, n..1 repeated), as MATLAB's index folding does.
    period = 2 * in_len
    folded = np.mod(idx - 1, period).astype(np.int64)
    folded = np.where(folded < in_len, folded, period - 1 - folded)
    matrix = np.zeros((out_len, in_len), dtype=np.float64)
    rows = np.repeat(np.arange(out_len), taps)
    np.add.at(matrix, (rows, folded.ravel()), weights.ravel())
    return matrix


def output_size(in_len: int, scale: float) -> int:
    return math.ceil(in_len * scale)


def _resize_axis(img: NDArray[np.float64], axis: int, scale: float) -> NDArray[np.float64]:
    in_len = img.shape[axis]
    matrix = resize_matrix(in_len, output_size(in_len, scale), scale)
    moved = np.moveaxis(img, axis, 0)
    out = np.tensordot(matrix, moved, axes=(1, 0))
    return np.moveaxis(out, 0, axis)


def imresize(img: NDArray, scale: float) -> NDArray:
    """Resize an H×W or H×W×C image by `scale` like MATLAB's `imresize(img, scale)`.

    uint8 in -> uint8 out (rounded, also between the two passes); float in -> float64 out,
    neither rounded nor clipped.
    """
    if scale <= 0:
        raise ValueError(f"scale must be positive, got {scale}")
    if img.ndim not in (2, 3):
        raise ValueError(f"expected an H×W or H×W×C image, got shape {img.shape}")
    is_uint8 = img.dtype == np.uint8
    out = img.astype(np.float64)
    for axis in (0, 1):  # equal scales: MATLAB's stable sort puts rows first
        out = _resize_axis(out, axis, scale)
        if is_uint8:
            # MATLAB rounds halves away from zero (numpy's round goes to even).
            out = np.floor(np.clip(out, 0, 255) + 0.5)
    return out.astype(np.uint8) if is_uint8 else out


def imresize_torch(x: torch.Tensor, scale: float) -> torch.Tensor:
    """The same resize for a float batch (…, H, W) as two matrix products, on x's device and
    dtype; no rounding (used on training batches)."""
    h, w = x.shape[-2:]
    mh = torch.from_numpy(resize_matrix(h, output_size(h, scale), scale)).to(x)
    mw = torch.from_numpy(resize_matrix(w, output_size(w, scale), scale)).to(x)
    return mh @ x @ mw.T
