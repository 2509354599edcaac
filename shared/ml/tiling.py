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
# message broker client and the decoded images still fit beside it. The CPU cap is 1 GiB since
# freed memory stays in the heap for reuse (shared/ml/allocator.py), which keeps the heap's
# high-water mark: at 1 GiB a 24 MP ×4 upscale peaked at 1,325 MiB (x4plus: 1,520) and a 24 MP
# denoise at 1,445 MiB, against 2,013 / 2,027 at 2 GiB (and 1,576 / 1,982 at 2 GiB without
# reuse; x4plus at 1.5 GiB: 2,068), with 4–6 % more user time from the smaller tiles
# (benchmarks/large_image.py, one thread, bf16). With fp32 (CPUs without native bf16) x4plus
# tiles are then 274² and compute 1.21× a 1500×1000 photo's pixels, not 1.13×.
_BUDGET_FRACTION = {"cpu": 0.25, "cuda": 0.5}
_BUDGET_CAP = {"cpu": 1 * _GIB, "cuda": 16 * _GIB}
_MAX_BATCH = 16
_FALLBACK_AVAILABLE = 2 * _GIB


class Cancelled(Exception):
    """Raised by :func:`run_tiled` when ``should_cancel()`` returned True between tile batches."""


@dataclass(frozen=True)
class TilePlan:
    """How an image is cut: all sizes in input pixels."""

    tile_h: int  # tile height (every tile of the grid has the same size)
    tile_w: int  # tile width
    overlap: int  # minimum overlap between neighbouring tiles
    scale: int  # output pixels per input pixel
    multiple: int  # the network needs input sides divisible by this
    batch: int  # tiles per network call
    rows: tuple[int, ...] = (0,)  # tile origins down the padded image
    cols: tuple[int, ...] = (0,)  # tile origins across it

    @property
    def tile(self) -> int:
        """The longer tile side."""
        return max(self.tile_h, self.tile_w)

    @property
    def computed_pixels(self) -> int:
        """Input pixels the network computes per image, halo and padding included."""
        return computed_pixels(self)


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


def even_side(length: int, count: int, overlap: int, multiple: int) -> int:
    """The side of `count` equal tiles covering `length` with neighbours overlapping by at
    least `overlap`, rounded up to `multiple` (one tile: the whole length)."""
    if count <= 1:
        return length
    return min(_round_up(-(-(length + (count - 1) * overlap) // count), multiple), length)


def fewest_tiles(length: int, max_side: int, overlap: int) -> int:
    """The fewest tiles of side at most `max_side` that cover `length` with `overlap`."""
    if length <= max_side:
        return 1
    return -(-(length - overlap) // (max_side - overlap))


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
    """Choose the grid, the tile height and width, and the batch for `height`×`width` input.

    The grid comes first: of the grids whose equal tiles fit the memory budget (a tile's
    height × width × `pixel_cost`, the bytes one input pixel of a tile costs while the network
    runs), the one that computes the fewest pixels, halo included; then the tiles are sized
    evenly, each side rounded up to `multiple`. An image whose padded area fits the budget runs
    as one tile. An explicit `tile` caps both sides instead of the budget.
    """
    if min(height, width, scale, multiple) < 1 or overlap < 0 or pixel_cost < 1:
        raise ValueError("sizes, scale, multiple and pixel_cost must be positive, overlap >= 0")
    budget = memory_budget(device, available_bytes, budget_bytes)
    padded_h, padded_w = _round_up(height, multiple), _round_up(width, multiple)
    min_side = 2 * multiple

    if tile is not None:
        cap = max(_round_up(tile, multiple), min_side)
        max_area = cap * cap
    elif padded_h * padded_w * pixel_cost <= budget:
        cap = max_area = padded_h * padded_w  # small image: one tile, no seams at all
    else:
        max_area = max(budget // pixel_cost, min_side * min_side)
        cap = max(_round_down(max_area // min_side, multiple), min_side)
    # Overlap on the multiple grid, leaving a stride of at least one multiple even for the
    # smallest tile the budget allows.
    smallest = max(min(_round_down(math.isqrt(max_area), multiple), cap), min_side)
    ov = min(_round_up(overlap, multiple), smallest - multiple)

    best: tuple[int, int, int, int, int] | None = None  # computed pixels, tiles, rows, th, tw
    # Rows from one up to as many as tiles of the smallest sensible height would need.
    for rows in range(1, fewest_tiles(padded_h, smallest, ov) + 1):
        th = even_side(padded_h, rows, ov, multiple)
        if th > cap or (rows > 1 and th - ov < multiple):
            continue
        width_cap = min(cap, _round_down(max_area // th, multiple))
        if width_cap < min(min_side, padded_w) or (width_cap <= ov and padded_w > width_cap):
            continue
        cols = fewest_tiles(padded_w, width_cap, ov)
        tw = even_side(padded_w, cols, ov, multiple)
        candidate = (rows * cols * th * tw, rows * cols, rows, th, tw)
        if best is None or candidate[:2] < best[:2]:
            best = candidate
    if best is None:  # starved: the smallest tiles, whatever the budget says
        side = min(smallest, cap)
        rows, cols = fewest_tiles(padded_h, side, ov), fewest_tiles(padded_w, side, ov)
        th, tw = even_side(padded_h, rows, ov, multiple), even_side(padded_w, cols, ov, multiple)
    else:
        _, _, rows, th, tw = best
        cols = fewest_tiles(padded_w, tw, ov)

    if batch is None:
        batch = budget // max(th * tw * pixel_cost, 1)
    batch = max(1, min(batch, _MAX_BATCH))
    return TilePlan(
        tile_h=th,
        tile_w=tw,
        overlap=ov,
        scale=scale,
        multiple=multiple,
        batch=batch,
        rows=tuple(_even_starts(padded_h, th, rows, multiple)),
        cols=tuple(_even_starts(padded_w, tw, cols, multiple)),
    )


def computed_pixels(plan: TilePlan, height: int = 0, width: int = 0) -> int:
    """Input pixels the network computes for one image under `plan`: every tile whole, halo
    and padding included. (`height`, `width`: the image's, accepted for symmetry; the plan
    already holds its grid.)"""
    return len(plan.rows) * len(plan.cols) * plan.tile_h * plan.tile_w


def _even_starts(length: int, tile: int, count: int, multiple: int) -> list[int]:
    """`count` origins spread evenly over `length`, snapped down to `multiple`, the last one
    ending exactly at `length`. Snapping never widens a gap beyond ``tile - overlap`` when the
    tile came from :func:`even_side`, because that gap bound is itself a multiple."""
    if count <= 1 or length <= tile:
        return [0]
    span = length - tile
    return sorted({(i * span // (count - 1)) // multiple * multiple for i in range(count)})


def tile_starts(length: int, tile: int, overlap: int, multiple: int) -> list[int]:
    """Origins along one axis of length `length` (a multiple of `multiple`) for tiles of side
    `tile`: as few as keep every neighbour overlap >= `overlap`, spread evenly."""
    if length <= tile:
        return [0]
    return _even_starts(length, tile, fewest_tiles(length, tile, overlap), multiple)


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
    n, channels, height, width = image.shape
    # The fp32 output accumulator lives beside the tiles on the CPU: it comes out of the budget
    # (a 24 MP ×4 result is 288 MB), leaving the tiles at least a quarter of it.
    budget = memory_budget(device, budget_bytes=budget_bytes)
    if device.type == "cpu":
        budget = max(budget - n * channels * height * width * scale * scale * 4, budget // 4)
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
        budget_bytes=budget,
    )
    padded = pad_to_multiple(image, multiple)
    ph, pw = padded.shape[-2:]
    th, tw = plan.tile_h, plan.tile_w
    ys, xs = plan.rows, plan.cols
    if len(ys) == len(xs) == 1 and plan.batch >= n:
        return _run_whole(net, padded, (height * scale, width * scale), scale, device,
                          on_progress, should_cancel)
    wys = axis_weights(ys, th, ph, plan.overlap, scale)
    wxs = axis_weights(xs, tw, pw, plan.overlap, scale)
    jobs = [(k, j, i) for k in range(n) for j in range(len(ys)) for i in range(len(xs))]

    # Allocated once for the whole run: the batch of input tiles (refilled in place) and the
    # output accumulator; the blend weights are applied to each tile's output in place.
    tiles = torch.empty(
        min(plan.batch, len(jobs)), image.shape[1], th, tw, dtype=padded.dtype, device=device
    ).contiguous(memory_format=torch.channels_last)
    out: torch.Tensor | None = None
    batches = math.ceil(len(jobs) / plan.batch)
    for b in range(batches):
        if should_cancel is not None and should_cancel():
            raise Cancelled(f"cancelled after {b} of {batches} tile batches")
        chunk = jobs[b * plan.batch : (b + 1) * plan.batch]
        for slot, (k, j, i) in enumerate(chunk):
            tiles[slot].copy_(padded[k, :, ys[j] : ys[j] + th, xs[i] : xs[i] + tw])
        with torch.inference_mode():
            result = _checked(net(tiles[: len(chunk)]).to("cpu", torch.float32), th, tw, scale)
            if out is None:
                with torch.inference_mode(False):
                    out = torch.zeros(n, result.shape[1], height * scale, width * scale)
            # The result is this run's own (the network's output, or the refilled input batch
            # for an identity), so the weights are applied to it in place.
            _accumulate(out, result, chunk, ys, xs, wys, wxs, scale)
        del result
        if on_progress is not None:
            on_progress((b + 1) / batches)
    assert out is not None  # at least one tile always exists
    return out


def _checked(result: torch.Tensor, tile_h: int, tile_w: int, scale: int) -> torch.Tensor:
    """`result` if the network scaled its tiles by `scale`, else a ValueError saying how not."""
    if result.shape[-2:] != (tile_h * scale, tile_w * scale):
        raise ValueError(
            f"network returned {tuple(result.shape)} for {tile_h}×{tile_w} tiles at scale {scale}"
        )
    return result


def _run_whole(
    net: Net,
    padded: torch.Tensor,
    out_size: tuple[int, int],
    scale: int,
    device: torch.device,
    on_progress: Callable[[float], None] | None,
    should_cancel: Callable[[], bool] | None,
) -> torch.Tensor:
    """The whole (padded) image as one batch: with a single tile there is nothing to blend, so
    no weights, no accumulator and no tile copies (a tenth of a 256² JPEG job's time)."""
    if should_cancel is not None and should_cancel():
        raise Cancelled("cancelled after 0 of 1 tile batches")
    batch = padded.to(device).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        result = net(batch).to("cpu", torch.float32)
    result = _checked(result, padded.shape[-2], padded.shape[-1], scale)
    if on_progress is not None:
        on_progress(1.0)
    # A normal tensor, as the tiled path returns: callers may scale it in place.
    return result[..., : out_size[0], : out_size[1]].clone()


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
        part = tile_out[:, :h, :w]
        part.mul_(wys[j][:h, None]).mul_(wxs[i][None, :w])
        out[k, :, oy : oy + h, ox : ox + w].add_(part)
