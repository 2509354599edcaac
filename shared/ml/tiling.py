"""The one tiler every network runs through: pad, tile, blend, crop, in bounded memory.

Any image→image network (denoiser, ×4 super-resolver, inpainter) is run on an image of any
size by :func:`run_tiled`:

1. The image is padded at the bottom/right to the network's ``multiple`` (reflect where the
   image is large enough, replicate where it is not) and the output is cropped back, so any odd
   size in gives exactly ``size × scale`` out.
2. The padded image is cut into a grid of equal tiles that overlap by at least ``overlap``
   pixels. Tile origins are multiples of ``multiple`` so networks that are only equivariant to
   shifts of their stride (wavelet/pooling networks) see the same pixel phase as untiled.
3. Tiles are blended with separable raised-cosine weights. Within ``overlap // 4`` pixels of an
   inner tile edge the weight is exactly zero, because that is where a tile lacks the context the
   untiled run has; the ramp fills the middle of the overlap. Hence a translation-equivariant
   network whose receptive radius is at most ``overlap // 4`` gives the untiled result exactly
   (up to fp32 rounding), and deeper networks get smooth, seam-free transitions.
4. The weights are normalised per axis to a partition of unity before use. Because the tiles
   form a full grid and the weights are separable, this is the same as dividing by an
   accumulated 2-D weight map, without allocating one the size of the (possibly ×16) output.
5. Tiles are run in batches sized from free memory; the output is accumulated in fp32 on the
   CPU so a huge super-resolved result never has to fit in GPU memory.

Conditioning maps (a noise-level map, an inpainting mask) are concatenated to the image as extra
channels by the caller before tiling: they are tiled like the image, and the network's output
channel count is taken from its first output.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

Net = Callable[[torch.Tensor], torch.Tensor]

#: Default working memory (bytes) one *input* pixel of a tile costs while the network runs.
#: Conservative for a 64-feature RRDBNet at ×4 in fp32 (~10 KiB measured order of magnitude);
#: callers with a better estimate pass their own.
DEFAULT_PIXEL_COST = 16 * 1024

_GIB = 1024**3
# Share of free memory one inference may use, and a hard cap, so that a second request, the
# message broker client and the decoded images still fit beside it.
_BUDGET_FRACTION = {"cpu": 0.25, "cuda": 0.5}
_BUDGET_CAP = {"cpu": 2 * _GIB, "cuda": 16 * _GIB}
# Bigger tiles mean less overlap recomputed but no faster convolutions past this size.
_MAX_TILE = {"cpu": 512, "cuda": 1024}
_MAX_BATCH = 16
_FALLBACK_AVAILABLE = 2 * _GIB


class Cancelled(Exception):
    """Raised by :func:`run_tiled` when ``should_cancel()`` returned True between tile batches."""


@dataclass(frozen=True)
class TilePlan:
    """How an image is cut: all sizes in input pixels."""

    tile: int  # side of a square tile (a dimension smaller than this is one tile high/wide)
    overlap: int  # minimum overlap between neighbouring tiles
    scale: int  # output pixels per input pixel
    multiple: int  # the network needs input sides divisible by this
    batch: int  # tiles per network call


# --------------------------------------------------------------------------- memory


def _read_int(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def _cgroup_available() -> int | None:
    """Room left under a cgroup v2 memory limit: containers see the host's MemAvailable."""
    root = Path("/sys/fs/cgroup")
    limit, used = _read_int(root / "memory.max"), _read_int(root / "memory.current")
    if limit is None or used is None:
        return None
    return max(limit - used, 0)


def _host_available() -> int | None:
    try:
        import psutil  # optional

        return int(psutil.virtual_memory().available)
    except ImportError:
        pass
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def available_memory(device: torch.device | None = None) -> int:
    """Free bytes on `device`: CUDA free memory, else the CPU's (cgroup-aware)."""
    device = device or torch.device("cpu")
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return int(free)
    candidates = [v for v in (_host_available(), _cgroup_available()) if v is not None]
    return min(candidates) if candidates else _FALLBACK_AVAILABLE


def memory_budget(
    device: torch.device | None = None,
    available_bytes: int | None = None,
    budget_bytes: int | None = None,
) -> int:
    """Bytes one tiled inference may use on `device`: `budget_bytes` when the operator pinned
    it (RESTORA_TILE_BUDGET_MB, several workers on one node), else a share of free memory."""
    if budget_bytes is not None:
        return budget_bytes
    kind = "cuda" if device is not None and device.type == "cuda" else "cpu"
    free = available_memory(device) if available_bytes is None else available_bytes
    return max(1, min(int(free * _BUDGET_FRACTION[kind]), _BUDGET_CAP[kind]))


# --------------------------------------------------------------------------- planning


def _round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


def _round_down(value: int, multiple: int) -> int:
    return value // multiple * multiple


def plan_tiles(
    height: int,
    width: int,
    *,
    scale: int = 1,
    multiple: int = 8,
    tile: int | None = None,
    overlap: int = 32,
    batch: int | None = None,
    pixel_cost: int = DEFAULT_PIXEL_COST,
    device: torch.device | None = None,
    available_bytes: int | None = None,
    budget_bytes: int | None = None,
) -> TilePlan:
    """Choose tile side and batch for an image of `height`×`width` input pixels.

    Explicit `tile`/`batch` win (rounded to valid values); otherwise they come from the memory
    budget and `pixel_cost` (bytes per input pixel of a tile while the network runs). An image
    whose whole padded area fits the budget runs as one tile.
    """
    if min(height, width, scale, multiple) < 1 or overlap < 0 or pixel_cost < 1:
        raise ValueError("sizes, scale, multiple and pixel_cost must be positive, overlap >= 0")
    budget = memory_budget(device, available_bytes, budget_bytes)
    padded_h, padded_w = _round_up(height, multiple), _round_up(width, multiple)
    kind = "cuda" if device is not None and device.type == "cuda" else "cpu"

    if tile is not None:
        side = max(_round_up(tile, multiple), 2 * multiple)
    elif padded_h * padded_w * pixel_cost <= budget:
        side = max(padded_h, padded_w)  # small image: one tile, no seams at all
    else:
        fit = _round_down(math.isqrt(budget // pixel_cost), multiple)
        side = max(min(fit, _MAX_TILE[kind]), 2 * multiple)

    # Overlap on the multiple grid and leaving a stride of at least one multiple.
    ov = min(_round_up(overlap, multiple), side - multiple)

    if batch is None:
        per_tile = min(side, padded_h) * min(side, padded_w) * pixel_cost
        batch = budget // max(per_tile, 1)
    batch = max(1, min(batch, _MAX_BATCH))
    return TilePlan(tile=side, overlap=ov, scale=scale, multiple=multiple, batch=batch)


def tile_starts(length: int, tile: int, overlap: int, multiple: int) -> list[int]:
    """Origins along one axis of length `length` (a multiple of `multiple`).

    As few tiles as keep every neighbour overlap >= `overlap`, spread evenly, snapped down to
    the `multiple` grid; the last one ends exactly at `length`.
    """
    if length <= tile:
        return [0]
    count = math.ceil((length - overlap) / (tile - overlap))
    span = length - tile
    # Floor-snapping never widens a gap beyond tile - overlap because that is itself a multiple.
    return sorted({(i * span // (count - 1)) // multiple * multiple for i in range(count)})


def _ramp(size: int, zero: int, ramp: int) -> torch.Tensor:
    """Weights rising from an inner edge: `zero` exact zeros, then a raised cosine of `ramp`."""
    k = torch.arange(size, dtype=torch.float64)
    if ramp == 0:
        return (k >= zero).double()
    t = ((k - zero + 0.5) / ramp).clamp(0.0, 1.0)
    return 0.5 - 0.5 * torch.cos(math.pi * t)


def axis_weights(
    starts: Sequence[int], tile: int, length: int, overlap: int, scale: int
) -> list[torch.Tensor]:
    """Per-tile blend weights along one axis in output pixels, summing to 1 at every position."""
    size = tile * scale
    zero = (overlap // 4) * scale
    ramp = (overlap - 2 * (overlap // 4)) * scale
    rise = _ramp(size, zero, ramp)
    weights = []
    for i in range(len(starts)):
        w = torch.ones(size, dtype=torch.float64)
        if i > 0:
            w = w * rise
        if i < len(starts) - 1:
            w = w * rise.flip(0)
        weights.append(w)
    total = torch.zeros(length * scale, dtype=torch.float64)
    for start, w in zip(starts, weights, strict=True):
        total[start * scale : start * scale + size] += w
    if bool((total <= 0).any()):  # cannot happen with overlap >= 0 grids; guard the invariant
        raise AssertionError("tile weights leave a gap")
    return [
        (w / total[s * scale : s * scale + size]).float()
        for s, w in zip(starts, weights, strict=True)
    ]


# --------------------------------------------------------------------------- running


def pad_to_multiple(image: torch.Tensor, multiple: int, min_side: int = 0) -> torch.Tensor:
    """Pad NCHW bottom/right to `multiple` (and to at least `min_side`): reflect where the side
    allows it, else replicate. The one padding every network's input goes through."""
    height, width = image.shape[-2:]
    pad_h = _round_up(max(height, min_side), multiple) - height
    pad_w = _round_up(max(width, min_side), multiple) - width
    # Padded per axis so a tall thin image can reflect along one side and replicate the other.
    if pad_h:
        mode = "reflect" if pad_h < height else "replicate"
        image = F.pad(image, (0, 0, 0, pad_h), mode=mode)
    if pad_w:
        mode = "reflect" if pad_w < width else "replicate"
        image = F.pad(image, (0, pad_w, 0, 0), mode=mode)
    return image


def run_tiled(
    net: Net,
    image: torch.Tensor,
    *,
    scale: int = 1,
    multiple: int = 8,
    tile: int | None = None,
    overlap: int = 32,
    batch: int | None = None,
    pixel_cost: int = DEFAULT_PIXEL_COST,
    device: torch.device | None = None,
    on_progress: Callable[[float], None] | None = None,
    should_cancel: Callable[[], bool] | None = None,
    budget_bytes: int | None = None,
) -> torch.Tensor:
    """Run `net` over NCHW float `image` tile by tile; returns N×C'×(H·scale)×(W·scale) fp32 CPU.

    `net` maps a B×C×h×w batch (channels-last, on `device`, default the image's device) to
    B×C'×(h·scale)×(w·scale). It is called under ``torch.inference_mode``; autocast and locking
    are the caller's (see :mod:`shared.ml.inference`). `should_cancel` is polled before every batch
    (raises :class:`Cancelled`), `on_progress` gets the done fraction after every batch.
    """
    if image.ndim != 4 or not image.is_floating_point():
        raise ValueError(f"expected a float NCHW tensor, got {tuple(image.shape)} {image.dtype}")
    device = device or image.device
    n, _, height, width = image.shape
    plan = plan_tiles(
        height,
        width,
        scale=scale,
        multiple=multiple,
        tile=tile,
        overlap=overlap,
        batch=batch,
        pixel_cost=pixel_cost,
        device=device,
        budget_bytes=budget_bytes,
    )
    padded = pad_to_multiple(image, multiple)
    ph, pw = padded.shape[-2:]
    th, tw = min(plan.tile, ph), min(plan.tile, pw)
    ys = tile_starts(ph, th, plan.overlap, multiple)
    xs = tile_starts(pw, tw, plan.overlap, multiple)
    wys = axis_weights(ys, th, ph, plan.overlap, scale)
    wxs = axis_weights(xs, tw, pw, plan.overlap, scale)
    jobs = [(k, j, i) for k in range(n) for j in range(len(ys)) for i in range(len(xs))]

    out: torch.Tensor | None = None
    batches = math.ceil(len(jobs) / plan.batch)
    for b in range(batches):
        if should_cancel is not None and should_cancel():
            raise Cancelled(f"cancelled after {b} of {batches} tile batches")
        chunk = jobs[b * plan.batch : (b + 1) * plan.batch]
        result = _run_batch(net, padded, chunk, ys, xs, th, tw, device)
        if result.shape[-2:] != (th * scale, tw * scale):
            raise ValueError(
                f"network returned {tuple(result.shape)} for {th}×{tw} tiles at scale {scale}"
            )
        if out is None:
            out = torch.zeros(n, result.shape[1], height * scale, width * scale)
        _accumulate(out, result, chunk, ys, xs, wys, wxs, scale)
        if on_progress is not None:
            on_progress((b + 1) / batches)
    assert out is not None  # at least one tile always exists
    return out


def _run_batch(
    net: Net,
    padded: torch.Tensor,
    chunk: Sequence[tuple[int, int, int]],
    ys: Sequence[int],
    xs: Sequence[int],
    th: int,
    tw: int,
    device: torch.device,
) -> torch.Tensor:
    tiles = torch.stack([padded[k, :, ys[j] : ys[j] + th, xs[i] : xs[i] + tw] for k, j, i in chunk])
    tiles = tiles.to(device).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        result = net(tiles)
    return result.detach().to("cpu", torch.float32)


def _accumulate(
    out: torch.Tensor,
    result: torch.Tensor,
    chunk: Sequence[tuple[int, int, int]],
    ys: Sequence[int],
    xs: Sequence[int],
    wys: Sequence[torch.Tensor],
    wxs: Sequence[torch.Tensor],
    scale: int,
) -> None:
    """Add weighted tiles into the cropped output, dropping what lies in the padding."""
    out_h, out_w = out.shape[-2:]
    for tile_out, (k, j, i) in zip(result, chunk, strict=True):
        oy, ox = ys[j] * scale, xs[i] * scale
        h, w = min(tile_out.shape[-2], out_h - oy), min(tile_out.shape[-1], out_w - ox)
        weight = wys[j][:h, None] * wxs[i][None, :w]
        out[k, :, oy : oy + h, ox : ox + w].addcmul_(tile_out[:, :h, :w], weight)
