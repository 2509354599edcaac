"""4× super-resolution of realistic inputs: Kodak24, degraded as the ESRGAN GAN stage trains.

Images: the 24 Kodak photos (never read by training; SOURCES.md), centre-cropped to 512×512 HR
(portrait ones too), so every LR input is 128×128.

Degradation: :func:`training.sr_degradations.degrade`, the GAN stage's own function, with its
ranges, order and share of gray noise, but every step always applied (no clean share; that
case is the ``superres`` task's): Gaussian blur σ 0.3–2.4 on the HR crop, the ×4
MATLAB-bicubic downscale, noise σ 1–12 on the LR image, uint8, JPEG quality 35–95. Each image
draws its parameters from its own seed (2025 + the CRC-32 of its name), so an input is the same
on every run, whatever ``--limit`` or the image order; :func:`drawn` names them.

Scores against the clean 512² crop, 4 pixels shaved from every border: PSNR/SSIM on float Y
(the SR recipe of SOURCES.md, as the ``superres`` task) and on RGB (colour shifts count).
Every row is cached per image (``benchmarks/cache/superres-real.json``), keyed by the
degradation's code and the networks' weights, so a rerun is instant.
"""

from __future__ import annotations

import functools
import hashlib
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import PIL
import torch

from benchmarks.harness import Case, Row, Sample, Scores, View
from benchmarks.metrics import psnr, ssim, to_uint8, y_psnr_ssim
from benchmarks.tasks import superres
from benchmarks.tasks.common import (
    Options,
    Setup,
    centre_crop,
    include_classic,
    list_images,
    read_image,
    restore,
    runtime,
    source_version,
    wanted,
)
from shared.ml import accel, registry
from shared.ml.restorers import classic
from training import degradations, matlab_resize, sr_degradations
from training.sr_degradations import DegradationConfig, degrade

SCALE = 4
BORDER = 4
CROP = 512
IMAGE_SET = "Kodak24"
COLUMN = "Kodak24 realistic ×4"
SEED = 2025
# The GAN stage's degradations (training/sr_degradations.py), every one of them applied.
CONFIG = DegradationConfig(p_clean=0.0, p_blur=1.0, p_noise=1.0, p_jpeg=1.0)


def image_seed(name: str) -> int:
    """A fixed seed per image, from its name only."""
    return SEED + zlib.crc32(name.encode())


def realistic_lr(hr: np.ndarray, seed: int) -> np.ndarray:
    """The degraded ×¼ input of an HR uint8 RGB image (H, W multiples of 4), fixed by `seed`."""
    return degrade(hr, np.random.default_rng(seed), CONFIG)


@dataclass(frozen=True)
class Draw:
    """What :func:`realistic_lr` draws for one seed (``degrade``'s order of draws)."""

    blur_sigma: float
    noise_sigma: float
    gray_noise: bool
    jpeg_quality: int

    def __str__(self) -> str:
        noise = "gray noise" if self.gray_noise else "noise"
        return (f"blur {self.blur_sigma:.1f}, {noise} {self.noise_sigma:.1f}, "
                f"JPEG Q{self.jpeg_quality}")


def drawn(seed: int, hr_shape: tuple[int, ...] = (CROP, CROP, 3)) -> Draw:
    """The parameters behind ``realistic_lr(hr, seed)`` for an HR image of `hr_shape`: the same
    draws in the same order (the noise itself is drawn too: the JPEG quality comes after it)."""
    rng = np.random.default_rng(seed)
    rng.random()  # clean?  (never: p_clean = 0)
    rng.random()  # blur?
    blur = float(rng.uniform(*CONFIG.blur_sigma))
    rng.random()  # noise?
    gray = bool(rng.random() < CONFIG.p_gray_noise)
    noise = float(rng.uniform(*CONFIG.noise_sigma))
    lr_size = tuple(-(-side // CONFIG.scale) for side in hr_shape[:2])
    rng.normal(0.0, noise, size=(*lr_size, 1 if gray else hr_shape[2]))
    rng.random()  # JPEG?
    quality = int(rng.integers(CONFIG.jpeg_quality[0], CONFIG.jpeg_quality[1] + 1))
    return Draw(blur, noise, gray, quality)


def degradation_version() -> str:
    """Changes when an input could: the degradation code, its settings, Pillow's JPEG."""
    code = source_version(sr_degradations, degradations.jpeg_compress, matlab_resize,
                          image_seed, realistic_lr, centre_crop)
    text = f"{code}|{CONFIG!r}|{SEED}|{CROP}|Pillow{PIL.__version__}"
    return hashlib.sha1(text.encode()).hexdigest()[:10]


def _load(path: Path, variant: str) -> Sample:
    hr = centre_crop(read_image(path, "RGB"), CROP)
    return {"hr": hr, "lr": realistic_lr(hr, image_seed(path.stem)), "stem": path.stem}


def build_cases(options: Options) -> list[Case]:
    if not wanted(options, COLUMN):
        return []
    paths = list_images(options.data / "testsets" / IMAGE_SET, options.limit)
    return [Case(COLUMN, p.stem, functools.partial(_load, p)) for p in paths]


def score(sample: Sample, out: np.ndarray) -> Scores:
    hr = sample["hr"]
    if out.shape != hr.shape:
        raise ValueError(f"output {out.shape} is not 4× the input: expected {hr.shape}")
    y_psnr, y_ssim = y_psnr_ssim(hr, out, BORDER)
    return {"psnr": y_psnr, "ssim": y_ssim,
            "rgb_psnr": psnr(hr, out, BORDER), "rgb_ssim": ssim(hr, out, BORDER)}


def _weights_version(entry: registry.Restorer, strength: float | None) -> str:
    files = list(entry.weights)
    if strength and entry.strength_weights:
        files.append(entry.strength_weights)
    hashes = [(runtime().weights_sha256(f) or "none")[:12] for f in files]
    # bf16 (where the CPU has it natively) moves outputs a little: cached apart from fp32.
    precision = "bf16" if runtime().bf16 and accel.use_bf16(runtime().device) else "fp32"
    return "+".join(hashes) + f"-{precision}-{runtime().device.type}-torch{torch.__version__}"


def model_version(entry: registry.Restorer, strength: float | None) -> str:
    """A network row's cache version: its weights, precision, torch and the inputs."""
    return f"{_weights_version(entry, strength)}-{degradation_version()}"


def _span(bounds: tuple[float, float]) -> str:
    return f"{bounds[0]:g}–{bounds[1]:g}"


def _bicubic(sample: Sample) -> np.ndarray:
    return to_uint8(restore("superres", "classic", sample["lr"], scale=SCALE))


def build(options: Options) -> Setup:
    rows = []
    if include_classic(options):
        code = source_version(classic.upscale, classic.bicubic_upscale)
        rows.append(Row("bicubic (classic)", "classic", _bicubic,
                        version=f"{code}-{degradation_version()}"))
    rows += superres.model_rows(options, version_of=model_version)
    return Setup(
        title="4× super-resolution of realistic inputs (blur, ×4, noise, JPEG; seeded) — "
        "PSNR (dB) / SSIM, 4-px border shaved",
        cases=build_cases(options),
        rows=rows,
        score=score,
        views=[View("Y", ("psnr", "ssim")), View("RGB", ("rgb_psnr", "rgb_ssim"))],
        notes=[
            f"inputs: {IMAGE_SET} centre {CROP}² → {CROP // SCALE}², degraded by "
            "training.sr_degradations.degrade with every step applied (blur σ "
            f"{_span(CONFIG.blur_sigma)}, noise σ {_span(CONFIG.noise_sigma)}, JPEG Q"
            f"{_span(CONFIG.jpeg_quality)}); one seed per image"
        ],
    )
