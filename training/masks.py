"""Seeded free-form inpainting masks: brush strokes and rectangles at a controlled hole coverage.

The strokes follow the free-form recipe of Yu et al. (DeepFill v2, "Free-Form Image Inpainting
with Gated Convolution", Alg. 1): a random walk of vertices joined by thick lines with round
joints. Rectangles are axis-aligned boxes. Shapes are added until the hole ratio lies inside the
requested band; a shape that would overshoot the band is redrawn smaller, so every mask ends
inside its band. The same (size, band, seed) always gives the same mask.

Bands follow the NVIDIA irregular mask set's hole-ratio bands (``INDEX.tsv`` of the benchmark
data), so training masks and benchmark masks are binned the same way.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import cv2
import numpy as np

#: Hole-ratio bands (lower inclusive, upper exclusive), as in the NVIDIA irregular mask set.
COVERAGE_BANDS: dict[str, tuple[float, float]] = {
    "01-10": (0.01, 0.10),
    "10-20": (0.10, 0.20),
    "20-30": (0.20, 0.30),
    "30-40": (0.30, 0.40),
    "40-50": (0.40, 0.50),
    "50-60": (0.50, 0.60),
}
#: Bands drawn by default for training (the benchmark uses 10–40 %).
TRAINING_BANDS: tuple[str, ...] = ("01-10", "10-20", "20-30", "30-40", "40-50")

_MAX_SHAPES = 400


def coverage(mask: np.ndarray) -> float:
    return float(np.count_nonzero(mask)) / mask.size


def _stroke(canvas: np.ndarray, rng: np.random.Generator, scale: float) -> None:
    """One random-walk brush stroke, drawn in place (255 = hole)."""
    height, width = canvas.shape
    side = min(height, width)
    vertices = int(rng.integers(2, 8))
    thickness = max(1, int(rng.uniform(0.02, 0.08) * side * scale))
    y, x = float(rng.uniform(0, height)), float(rng.uniform(0, width))
    cv2.circle(canvas, (int(x), int(y)), thickness // 2, 255, -1)
    for _ in range(vertices):
        angle = rng.uniform(0, 2 * math.pi)
        length = rng.uniform(0.05, 0.3) * side * scale
        ny = float(np.clip(y + length * math.sin(angle), 0, height - 1))
        nx = float(np.clip(x + length * math.cos(angle), 0, width - 1))
        cv2.line(canvas, (int(x), int(y)), (int(nx), int(ny)), 255, thickness)
        cv2.circle(canvas, (int(nx), int(ny)), thickness // 2, 255, -1)
        y, x = ny, nx


def _rectangle(canvas: np.ndarray, rng: np.random.Generator, scale: float) -> None:
    height, width = canvas.shape
    h = max(1, int(rng.uniform(0.1, 0.4) * height * scale))
    w = max(1, int(rng.uniform(0.1, 0.4) * width * scale))
    y, x = int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1))
    canvas[y : y + h, x : x + w] = 255


def _add_shape(canvas: np.ndarray, rng: np.random.Generator, scale: float,
               rect_prob: float) -> None:
    if rng.random() < rect_prob:
        _rectangle(canvas, rng, scale)
    else:
        _stroke(canvas, rng, scale)


def _resolve_band(band: str | tuple[float, float]) -> tuple[float, float]:
    low, high = COVERAGE_BANDS[band] if isinstance(band, str) else band
    if not 0.0 <= low < high <= 1.0:
        raise ValueError(f"bad coverage band {band!r}")
    return low, high


def free_form_mask(height: int, width: int, band: str | tuple[float, float] = "20-30",
                   seed: int | np.random.Generator = 0, rect_prob: float = 0.2) -> np.ndarray:
    """A bool H×W mask (True = hole) whose hole ratio lies in ``band`` = [low, high).

    ``seed``: an int (the mask is a pure function of it) or a numpy Generator (advanced).
    ``rect_prob``: the chance that each added shape is a rectangle rather than a stroke.
    """
    low, high = _resolve_band(band)
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    canvas = np.zeros((height, width), np.uint8)
    scale = 1.0
    for _ in range(_MAX_SHAPES):
        current = coverage(canvas)
        if low <= current < high:
            return canvas > 0
        trial = canvas.copy()
        _add_shape(trial, rng, scale, rect_prob)
        if coverage(trial) < high:
            canvas = trial
        else:
            scale *= 0.7  # overshoot: try smaller shapes
    return _fill_to_band(canvas, low, high, rng)


def _fill_to_band(canvas: np.ndarray, low: float, high: float,
                  rng: np.random.Generator) -> np.ndarray:
    """Last resort for tiny images: add or remove single pixels until inside the band."""
    flat = canvas.reshape(-1)
    target = math.ceil(low * flat.size)
    target = min(max(target, 1 if low > 0 else 0), math.ceil(high * flat.size) - 1)
    holes, known = np.flatnonzero(flat), np.flatnonzero(flat == 0)
    if holes.size < target:
        flat[rng.choice(known, target - holes.size, replace=False)] = 255
    elif holes.size > target:
        flat[rng.choice(holes, holes.size - target, replace=False)] = 0
    return canvas > 0


def random_mask(height: int, width: int, rng: np.random.Generator,
                bands: Sequence[str] = TRAINING_BANDS, contour_share: float = 0.0,
                contour_side: int | None = None) -> np.ndarray:
    """A training mask: a band drawn uniformly from ``bands``, then :func:`contour_mask` (shapes
    proportioned to ``contour_side``) with probability ``contour_share``, else
    :func:`free_form_mask`."""
    band = bands[int(rng.integers(len(bands)))]
    if contour_share > 0 and rng.random() < contour_share:
        return contour_mask(height, width, band, rng, contour_side)
    return free_form_mask(height, width, band, rng)


def contour_mask(height: int, width: int, band: str | tuple[float, float] = "20-30",
                 seed: int | np.random.Generator = 0, shape_side: int | None = None) -> np.ndarray:
    """A bool H×W mask (True = hole) of irregular bands along the level lines of a smooth random
    field, of varying width, gathered in one part of the image, plus specks: the look of
    occlusion masks such as the NVIDIA irregular set (thin, curved, fragmented holes, every hole
    pixel near known ones), which brush strokes and rectangles do not have. Same (size, band,
    seed), same mask.

    The bands' half-width is found by bisection: coverage grows with it, so any band is hit.
    ``shape_side``: the image side the shapes are proportioned to (default: this one's), so
    that a crop can get the holes, in pixels, of a larger image.
    """
    low, high = _resolve_band(band)
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    side = shape_side or min(height, width)
    distance = _level_line_distance(height, width, rng, rng.uniform(0.03, 0.10) * side)
    # Wider in some places than others, and only where a coarse field says "here".
    distance /= np.exp(0.5 * _smooth_field(height, width, rng, 0.15 * side))
    region = _smooth_field(height, width, rng, 0.25 * side)
    distance[region < np.quantile(region, rng.uniform(0.0, 0.5))] = np.inf
    specks = _specks(height, width, rng, rng.uniform(0.0, 0.3) * (low + high) / 2,
                     rng.uniform(0.008, 0.02) * side) & (region > np.quantile(region, 0.3))
    target = rng.uniform(low, high)
    narrow, wide = 0.0, float(side)
    for _ in range(40):  # bisection on the half-width, in pixels
        half_width = (narrow + wide) / 2
        hole = (distance < half_width) | specks
        current = coverage(hole)
        if low <= current < high and abs(current - target) < (high - low) / 4:
            break
        narrow, wide = (half_width, wide) if current < target else (narrow, half_width)
    if low <= current < high:
        return hole
    return _fill_to_band(hole.astype(np.uint8) * 255, low, high, rng)


def _smooth_field(height: int, width: int, rng: np.random.Generator, sigma: float) -> np.ndarray:
    noise = rng.standard_normal((height, width)).astype(np.float32)
    field = cv2.GaussianBlur(noise, (0, 0), sigmaX=max(sigma, 0.5), borderType=cv2.BORDER_REFLECT)
    return (field - field.mean()) / (field.std() + 1e-12)


def _level_line_distance(height: int, width: int, rng: np.random.Generator,
                         sigma: float) -> np.ndarray:
    """Approximate distance (px) of each pixel to the field's level lines at a random level:
    |f − t| / |∇f|, to first order."""
    field = _smooth_field(height, width, rng, sigma)
    level = rng.uniform(-0.6, 0.6)
    gy, gx = np.gradient(field)
    return np.abs(field - level) / (np.hypot(gx, gy) + 1e-6)


def _specks(height: int, width: int, rng: np.random.Generator, share: float,
            size: float) -> np.ndarray:
    """Blobs of about `size` px covering about `share` of the image (debris near occlusions)."""
    if share <= 0:
        return np.zeros((height, width), bool)
    field = _smooth_field(height, width, rng, size)
    return field > np.quantile(field, 1.0 - share)
