"""How well `task=auto` chooses: PSNR of its chain against the best chain chosen by hand per
image and against the default single fix (`denoise`, the page's default), on degraded copies of
held-out test images.

    python -m benchmarks.auto [--testset ../shared/data/testsets/Kodak24] [--images 8]

Degradations (seeded): JPEG Q10–Q40 (the file is a JPEG, its quality read from its tables),
Gaussian noise σ 5–30 (a PNG), noise then JPEG, and a ×¼ bicubic downscale (a PNG). auto
decides as preprocess does (shared.ml.auto on the tables' quality, the estimated σ, the size);
every step runs the registry's default model with its level options on auto, as a job would.
By hand: the best per image of every sensible chain for the file (none, artifacts, denoise,
artifacts+denoise; superres and denoise+superres for the downscale). An output smaller than
the original (a fix without superres on the downscale) is compared after a bicubic ×4.
"""

from __future__ import annotations

import argparse
import io
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from benchmarks.metrics import psnr
from shared.errors import UnprocessableInput
from shared.ml import auto, registry
from shared.ml.imaging import estimate_jpeg_quality
from shared.ml.noise_estimation import estimate_noise_sigma
from shared.ml.restorers.common import RestoreJob
from shared.ml.runtime import ModelRuntime

DEFAULT_TESTSET = Path(__file__).resolve().parents[2] / "shared/data/testsets/Kodak24"
DEFAULT_FIX = ("denoise",)


def _jpeg(pixels: np.ndarray, quality: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def _png(pixels: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


def _noisy(pixels: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    return np.clip(np.rint(pixels + rng.normal(0, sigma, pixels.shape)), 0, 255).astype(np.uint8)


def _quarter(pixels: np.ndarray) -> np.ndarray:
    height, width = pixels.shape[:2]
    small = Image.fromarray(pixels).resize((width // 4, height // 4), Image.Resampling.BICUBIC)
    return np.array(small)


Degrade = Callable[[np.ndarray, np.random.Generator], bytes]
DEGRADATIONS: dict[str, Degrade] = {
    **{f"JPEG Q{q}": (lambda p, r, q=q: _jpeg(p, q)) for q in (10, 20, 30, 40)},
    **{f"noise σ{s}": (lambda p, r, s=s: _png(_noisy(p, s, r))) for s in (5, 15, 30)},
    "σ5 + Q20": lambda p, r: _jpeg(_noisy(p, 5, r), 20),
    "σ15 + Q30": lambda p, r: _jpeg(_noisy(p, 15, r), 30),
    "×¼ downscale": lambda p, r: _png(_quarter(p)),
}


def _decode(data: bytes) -> tuple[np.ndarray, int | None]:
    with Image.open(io.BytesIO(data)) as img:
        tables = getattr(img, "quantization", None)
        quality = estimate_jpeg_quality(tables) if img.format == "JPEG" and tables else None
        return np.array(img.convert("RGB")), quality


def _candidates(quality: int | None, small: bool) -> list[tuple[str, ...]]:
    """The sensible chains by hand for a file (artifacts only where it is a JPEG)."""
    fixes: list[tuple[str, ...]] = [(), ("denoise",)]
    if quality is not None:
        fixes += [("artifacts",), ("artifacts", "denoise")]
    return [(*c, "superres") for c in fixes] if small else fixes


class Runner:
    """Runs chains on one degraded image, each prefix once."""

    def __init__(self, runtime: ModelRuntime, pixels: np.ndarray, quality: int | None) -> None:
        self.runtime, self.quality = runtime, quality
        self.cache: dict[tuple[str, ...], np.ndarray] = {(): pixels}

    def run(self, chain: tuple[str, ...]) -> np.ndarray:
        if chain not in self.cache:
            before = self.run(chain[:-1])
            step = chain[-1]
            job = RestoreJob(pixels=before, quality=self.quality if step == "artifacts" else None)
            model = registry.default_model(step, self.runtime.weights_dir)
            self.cache[chain] = registry.restore(self.runtime, step, model, job).pixels
        return self.cache[chain]


def _score(reference: np.ndarray, output: np.ndarray) -> float:
    height, width = reference.shape[:2]
    if output.shape[:2] != (height, width):
        output = np.array(Image.fromarray(output).resize((width, height), Image.Resampling.BICUBIC))
    return psnr(reference, output)


def _name(chain: tuple[str, ...]) -> str:
    return "+".join(chain) or "none"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--testset", type=Path, default=DEFAULT_TESTSET)
    parser.add_argument("--images", type=int, default=8, help="the first N images of the set")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(2)
    runtime = ModelRuntime(registry.SHIPPED_WEIGHTS_DIR, torch.device("cpu"))
    paths = sorted(args.testset.glob("*.png"))[: args.images]
    originals = [np.array(Image.open(p).convert("RGB")) for p in paths]
    print(f"{args.testset.name}, {len(paths)} images; PSNR (dB, RGB) against the original\n")
    print("| degradation | input | default (denoise) | auto | best by hand | auto − best | "
          "auto's chains |")
    print("|---|---|---|---|---|---|---|")
    for index, (name, degrade) in enumerate(DEGRADATIONS.items()):
        rng = np.random.default_rng(args.seed + index)
        rows, chosen = [], []
        for original in originals:
            pixels, quality = _decode(degrade(original, rng))
            try:
                sigma: float | None = estimate_noise_sigma(pixels)
            except UnprocessableInput:
                sigma = None
            height, width = pixels.shape[:2]
            choice = auto.choose(quality, sigma, (width, height))
            chosen.append(_name(choice.chain))
            runner = Runner(runtime, pixels, quality)
            small = max(width, height) <= auto.SUPERRES_MAX_LONG_SIDE
            by_hand = max(_score(original, runner.run(c)) for c in _candidates(quality, small))
            rows.append((
                _score(original, pixels),
                _score(original, runner.run(DEFAULT_FIX)),
                _score(original, runner.run(choice.chain)),
                by_hand,
            ))
        mean = np.mean(rows, axis=0)
        counts = ", ".join(f"{c} ×{chosen.count(c)}" for c in dict.fromkeys(chosen))
        print(f"| {name} | {mean[0]:.2f} | {mean[1]:.2f} | **{mean[2]:.2f}** | {mean[3]:.2f} | "
              f"{mean[2] - mean[3]:+.2f} | {counts} |", flush=True)


if __name__ == "__main__":
    main()
