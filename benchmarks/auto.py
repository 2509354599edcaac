"""How well `task=auto` chooses: PSNR of its chain against the best chain chosen by hand per
image and against the default single fix (`denoise`, the page's default), on degraded copies of
held-out test images.

    python -m benchmarks.auto [--testset ../shared/data/testsets/Kodak24] [--images 8]
        [--model esrgan] [--only ×¼]

Degradations (seeded): JPEG Q10–Q40 (the file is a JPEG, its quality read from its tables),
Gaussian noise σ 5–30 (a PNG), noise then JPEG, and a ×¼ bicubic downscale (a PNG). auto
decides as preprocess does (shared.ml.auto on the tables' quality, the estimated σ, the size);
every step runs the registry's default model (or --model's, read as a job's `model` field) with
its level options on auto, as a job would.
By hand: the best per image of every sensible chain for the file (none, artifacts, denoise,
artifacts+denoise; superres and denoise+superres for the downscale). An output smaller than
the original (a fix without superres on the downscale) is compared after a bicubic ×4.
"""

from __future__ import annotations

import argparse
import io
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from benchmarks.metrics import psnr
from shared.errors import UnprocessableInput
from shared.ml import auto, chains, registry
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
    """Runs chains on one degraded image, each prefix once, each step with its model."""

    def __init__(
        self,
        runtime: ModelRuntime,
        models: dict[str, str],
        pixels: np.ndarray,
        quality: int | None,
    ) -> None:
        self.runtime, self.models, self.quality = runtime, models, quality
        self.cache: dict[tuple[str, ...], np.ndarray] = {(): pixels}

    def run(self, chain: tuple[str, ...]) -> np.ndarray:
        if chain not in self.cache:
            before = self.run(chain[:-1])
            step = chain[-1]
            job = RestoreJob(pixels=before, quality=self.quality if step == "artifacts" else None)
            self.cache[chain] = registry.restore(self.runtime, step, self.models[step], job).pixels
        return self.cache[chain]


def _score(reference: np.ndarray, output: np.ndarray) -> float:
    height, width = reference.shape[:2]
    if output.shape[:2] != (height, width):
        output = np.array(Image.fromarray(output).resize((width, height), Image.Resampling.BICUBIC))
    return psnr(reference, output)


def _name(chain: tuple[str, ...]) -> str:
    return "+".join(chain) or "none"


Row = tuple[float, float, float, float]  # input, default fix, auto, best by hand


def _measure(
    runtime: ModelRuntime, models: dict[str, str], original: np.ndarray, data: bytes
) -> tuple[Row, tuple[str, ...], str]:
    """One degraded file: its scores, auto's chain and a line on what was chosen."""
    pixels, quality = _decode(data)
    try:
        sigma: float | None = estimate_noise_sigma(pixels)
    except UnprocessableInput:
        sigma = None
    height, width = pixels.shape[:2]
    choice = auto.choose(quality, sigma, (width, height))
    runner = Runner(runtime, models, pixels, quality)
    small = max(width, height) <= auto.SUPERRES_MAX_LONG_SIDE
    scores = {c: _score(original, runner.run(c)) for c in _candidates(quality, small)}
    best = max(scores, key=scores.__getitem__)
    row = (
        _score(original, pixels),
        _score(original, runner.run(DEFAULT_FIX)),
        _score(original, runner.run(choice.chain)),
        scores[best],
    )
    line = (
        f"quality {quality}, σ {sigma if sigma is None else round(sigma, 2)}, "
        f"auto {_name(choice.chain)} {row[2]:.2f}, best {_name(best)} {scores[best]:.2f}"
    )
    return row, choice.chain, line


def _parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--testset", type=Path, default=DEFAULT_TESTSET)
    parser.add_argument("--images", type=int, default=8, help="the first N images of the set")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--model",
        default="",
        help="as a job's `model` field (`esrgan`, `superres:esrgan,denoise:classic`); "
        "steps not named run their default model",
    )
    parser.add_argument(
        "--only",
        action="append",
        default=[],
        help="the degradations whose name contains this (repeatable; default: all)",
    )
    return parser.parse_args()


def main() -> None:
    args = _parse_args()
    torch.set_num_threads(2)
    runtime = ModelRuntime(registry.SHIPPED_WEIGHTS_DIR, torch.device("cpu"))
    try:
        models = chains.parse_models(
            args.model, auto.AUTO_STEPS,
            lambda t: auto.models_in_preference(t, registry.models_for(t, runtime.weights_dir))
        )
    except chains.ChainError as exc:
        raise SystemExit(f"--model: {exc}") from None
    paths = sorted(args.testset.glob("*.png"))[: args.images]
    originals = [np.array(Image.open(p).convert("RGB")) for p in paths]
    print(f"{args.testset.name}, {len(paths)} images; PSNR (dB, RGB) against the original")
    print(f"models: {', '.join(f'{s} {m}' for s, m in models.items())}\n")
    print(
        "| degradation | input | default (denoise) | auto | best by hand | auto − best | "
        "worst image | auto's chains |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for index, (name, degrade) in enumerate(DEGRADATIONS.items()):
        if args.only and not any(part in name for part in args.only):
            continue
        rng = np.random.default_rng(args.seed + index)
        rows, chosen = [], []
        for path, original in zip(paths, originals, strict=True):
            row, chain, line = _measure(runtime, models, original, degrade(original, rng))
            rows.append(row)
            chosen.append(_name(chain))
            print(f"{name} {path.stem}: {line}", file=sys.stderr, flush=True)
        mean, worst = np.mean(rows, axis=0), min(r[2] - r[3] for r in rows)
        counts = ", ".join(f"{c} ×{chosen.count(c)}" for c in dict.fromkeys(chosen))
        print(
            f"| {name} | {mean[0]:.2f} | {mean[1]:.2f} | **{mean[2]:.2f}** | {mean[3]:.2f} | "
            f"{mean[2] - mean[3]:+.2f} | {worst:+.2f} | {counts} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
