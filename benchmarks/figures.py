"""The README's pictures of results: one row per case, degraded | classic | ours | original.

    python -m benchmarks.figures                        # docs/images/results.png, every task
    python -m benchmarks.figures --figure superres-real  # docs/images/superres-real.webp

Made from scikit-image's bundled photos (free to ship, unlike the benchmark sets) through the
same pure functions the services call, with the weights in ``weights/``. Each tile is a crop
shown at 2× (nearest neighbour, so the pixels are the output's own) with its PSNR against the
original. A task whose network has no shipped weights shows its classic method twice, labelled
so, rather than a made-up picture. ``superres-real`` is one photo degraded as the realistic SR
benchmark degrades Kodak24 (``benchmarks.tasks.superres_real``: blur, ×4, noise, JPEG, seeded),
then bicubic, our GAN-stage weights and Real-ESRGAN x4plus.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw
from skimage import data

from benchmarks.metrics import psnr, to_uint8
from benchmarks.tasks import superres_real
from benchmarks.tasks.common import restore, runtime
from shared.ml import registry
from training.degradations import add_gaussian_noise, jpeg_compress
from training.masks import free_form_mask
from training.matlab_resize import imresize

ZOOM = 2
LABEL_HEIGHT = 18
GAP = 4


@dataclass(frozen=True)
class Panel:
    label: str
    image: np.ndarray  # uint8, the crop at output resolution


@dataclass(frozen=True)
class Example:
    """One row: how to degrade the original, the classic and the network restorations."""

    task: str
    original: np.ndarray
    crop: tuple[slice, slice]  # shown region, in original coordinates
    degrade: Callable[[np.ndarray], np.ndarray]
    classic: Callable[[np.ndarray], np.ndarray]
    ours: Callable[[np.ndarray], np.ndarray]
    labels: tuple[str, str, str]  # degraded, classic, ours
    shown_degraded: Callable[[np.ndarray], np.ndarray] = lambda x: x  # e.g. upsample LR
    # further scored methods, shown between ours and the original: (label, method)
    others: tuple[tuple[str, Callable[[np.ndarray], np.ndarray]], ...] = ()


def _noisy(image: np.ndarray) -> np.ndarray:
    return to_uint8(add_gaussian_noise(image, 25.0, np.random.default_rng(7), clip=True))


def _lr(image: np.ndarray) -> np.ndarray:
    return to_uint8(imresize(image, 0.25))


def _nearest_x4(image: np.ndarray) -> np.ndarray:
    return np.repeat(np.repeat(image, 4, axis=0), 4, axis=1)


def _hole_mask(image: np.ndarray) -> np.ndarray:
    return free_form_mask(*image.shape[:2], "20-30", seed=11)


def _with_hole(image: np.ndarray) -> np.ndarray:
    shown = image.copy()
    shown[_hole_mask(image)] = 255
    return shown


def examples() -> list[Example]:
    astronaut = data.astronaut()
    cat = data.chelsea()[:296, :448]
    coffee = data.coffee()[:400, :600]
    bricks = np.stack([data.brick()[:256, :256]] * 3, axis=-1)
    hole = _hole_mask(bricks)
    # The network when its weights are shipped, even while Telea is still the default.
    installed = registry.models_for("inpaint", runtime().weights_dir)
    inpaint_model = "deepfill" if "deepfill" in installed else "classic"
    inpaint_label = "DeepFill" if inpaint_model == "deepfill" else "Telea (no DeepFill yet)"
    return [
        Example("denoise sigma=25", astronaut, (slice(40, 168), slice(160, 288)), _noisy,
                lambda x: restore("denoise", "classic", x, sigma=25.0),
                lambda x: restore("denoise", "mwcnn", x, sigma=25.0),
                ("noisy", "NLM", "MWCNN")),
        Example("JPEG quality 10", cat, (slice(60, 188), slice(140, 268)),
                lambda x: jpeg_compress(x, 10),
                lambda x: restore("artifacts", "classic", x, quality=10),
                lambda x: restore("artifacts", "mwcnn", x, quality=10),
                ("JPEG Q10", "NLM", "MWCNN")),
        Example("4x super-resolution", coffee, (slice(96, 224), slice(200, 328)), _lr,
                lambda x: restore("superres", "classic", x, scale=4),
                lambda x: restore("superres", "esrgan", x, scale=4),
                ("input (x4 nearest)", "bicubic", "ESRGAN"), _nearest_x4),
        Example("inpainting 20-30 %", bricks, (slice(64, 192), slice(64, 192)), _with_hole,
                lambda _: restore("inpaint", "classic", bricks, mask=hole),
                lambda _: restore("inpaint", inpaint_model, bricks, mask=hole),
                ("hole (white)", "Telea", inpaint_label)),
    ]


# The realistic-input SR figure: the astronaut's 512² (the benchmark's HR size) and a seed whose
# draw is mid-range: blur σ 1.0, noise σ 5.3, JPEG Q82 (superres_real.drawn says so). The crop is
# the helmet's rim, collar and badge: edges, fabric and lettering.
SUPERRES_REAL_SEED = 8


def superres_real_examples() -> list[Example]:
    """One row: a phone-like input (blur, ×4, noise, JPEG) through bicubic, ours, x4plus."""
    original = data.astronaut()
    installed = registry.models_for("superres", runtime().weights_dir)
    others: tuple[tuple[str, Callable[[np.ndarray], np.ndarray]], ...] = ()
    if "realesrgan" in installed:
        others = (("Real-ESRGAN x4plus", lambda x: restore("superres", "realesrgan", x, scale=4)),)
    return [
        Example(f"4x super-resolution, realistic input: {superres_real.drawn(SUPERRES_REAL_SEED)}",
                original,
                (slice(230, 358), slice(180, 308)),
                lambda x: superres_real.realistic_lr(x, SUPERRES_REAL_SEED),
                lambda x: restore("superres", "classic", x, scale=4),
                lambda x: restore("superres", "esrgan", x, scale=4, strength=1.0),
                ("input (x4 nearest)", "bicubic", "ours, GAN stage"), _nearest_x4, others),
    ]


FIGURES: dict[str, tuple[Callable[[], list[Example]], Path]] = {
    "results": (examples, Path("docs/images/results.png")),
    "superres-real": (superres_real_examples, Path("docs/images/superres-real.webp")),
}


def panels(example: Example) -> list[Panel]:
    degraded = example.degrade(example.original)
    classic, ours = example.classic(degraded), example.ours(degraded)
    crop = example.crop

    def scored(label: str, image: np.ndarray) -> Panel:
        return Panel(f"{label} {psnr(example.original, image):.2f} dB", image[crop])

    degraded_label, classic_label, ours_label = example.labels
    return [
        Panel(degraded_label, example.shown_degraded(degraded)[crop]),
        scored(classic_label, classic),
        scored(ours_label, ours),
        *(scored(label, method(degraded)) for label, method in example.others),
        Panel("original", example.original[crop]),
    ]


def _tile(panel: Panel) -> Image.Image:
    image = Image.fromarray(panel.image).convert("RGB")
    image = image.resize((image.width * ZOOM, image.height * ZOOM), Image.Resampling.NEAREST)
    tile = Image.new("RGB", (image.width, image.height + LABEL_HEIGHT), "white")
    tile.paste(image, (0, LABEL_HEIGHT))
    ImageDraw.Draw(tile).text((4, 3), panel.label, fill="black")
    return tile


def figure(rows: list[tuple[str, list[Panel]]]) -> Image.Image:
    tiles = [[_tile(p) for p in row] for _, row in rows]
    width = max(sum(t.width for t in row) + GAP * (len(row) - 1) for row in tiles)
    height = sum(max(t.height for t in row) + LABEL_HEIGHT for row in tiles)
    canvas = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(canvas)
    y = 0
    for (title, _), row in zip(rows, tiles, strict=True):
        draw.text((4, y + 3), title, fill="black")
        y += LABEL_HEIGHT
        x = 0
        for tile in row:
            canvas.paste(tile, (x, y))
            x += tile.width + GAP
        y += max(t.height for t in row)
    return canvas


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--figure", choices=sorted(FIGURES), default="results")
    parser.add_argument("--out", type=Path, help="default: docs/images/<the figure's file>")
    args = parser.parse_args(argv)
    make_examples, default_out = FIGURES[args.figure]
    out: Path = args.out or default_out
    rows = [(example.task, panels(example)) for example in make_examples()]
    for title, row in rows:
        print(f"{title:22s} " + " | ".join(p.label for p in row))
    out.parent.mkdir(parents=True, exist_ok=True)
    save(figure(rows), out)
    print(f"wrote {out} ({out.stat().st_size // 1024} KiB)")
    return 0


# WebP/JPEG at a quality that keeps a README picture small; PNG losslessly.
SAVE_OPTIONS: dict[str, dict[str, Any]] = {
    ".webp": {"quality": 88, "method": 6},
    ".jpg": {"quality": 88, "optimize": True},
    ".jpeg": {"quality": 88, "optimize": True},
    ".png": {"optimize": True},
}


def save(picture: Image.Image, path: Path) -> None:
    picture.save(path, **SAVE_OPTIONS.get(path.suffix.lower(), {}))


if __name__ == "__main__":
    raise SystemExit(main())
