"""Training and validation data for the restoration networks: patches from folders of clean images.

Sources (``../shared/data/train`` relative to the repo, or ``$RESTORA_DATA/train``):
``Train400`` (gray, 180×180), ``BSD200`` and ``T91`` (RGB). A few fixed images are set aside
for validation (:data:`VALIDATION`) and never sampled for training. The benchmark test sets and
Kodak24 are never read here (LIVE1 reuses Kodak photos).

Networks are 3-channel: gray images are degraded as gray and then replicated to three channels,
which is exactly how inference serves a gray image, so one colour model handles both.
Arrays handed to the network are float32 NCHW in [0, 1] (noisy inputs may leave that range:
the papers' denoising convention is unclipped float noise).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from shared.ml.colour_planes import ColourBasis
from shared.ml.models.mwcnn import level_from_quality, level_from_sigma
from shared.ml.registry import JPEG_QUALITY_RANGE, SIGMA_RANGE
from training.degradations import add_gaussian_noise, jpeg_compress

GRAY_SOURCES = ("Train400",)
COLOUR_SOURCES = ("BSD200", "T91")

# Held out from training, used for validation PSNR. Fixed names: changing them changes every
# logged validation number, so don't.
VALIDATION: dict[str, tuple[str, ...]] = {
    "BSD200": ("100075.png", "16052.png", "231015.png", "353013.png"),
    "Train400": ("test_050.png", "test_150.png", "test_250.png", "test_350.png"),
}
VAL_SIGMAS = (15.0, 25.0, 50.0)
VAL_QUALITIES = (10, 30)
VAL_SEED = 20181

Task = str  # "denoise" | "artifacts"
TASKS = ("denoise", "artifacts")


def data_root() -> Path:
    """``$RESTORA_DATA`` or ``<repo>/../shared/data`` (read-only; never copied into the repo)."""
    env = os.environ.get("RESTORA_DATA")
    return Path(env) if env else Path(__file__).resolve().parents[2] / "shared" / "data"


def read_image(path: str | Path, gray: bool) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("L" if gray else "RGB"), dtype=np.uint8)


def load_folder(folder: Path, gray: bool, exclude: Iterable[str] = (),
                min_size: int = 0) -> list[np.ndarray]:
    """Every PNG of ``folder`` (sorted by name) except ``exclude`` and those under ``min_size``."""
    skip = set(exclude)
    images = []
    for path in sorted(folder.glob("*.png")):
        if path.name in skip:
            continue
        img = read_image(path, gray)
        if min(img.shape[:2]) >= min_size:
            images.append(img)
    if not images:
        raise FileNotFoundError(f"no training images in {folder}")
    return images


@dataclass
class TrainingImages:
    gray: list[np.ndarray]
    colour: list[np.ndarray]

    @classmethod
    def load(cls, root: Path | None = None, min_size: int = 64,
             colour_only: bool = False) -> TrainingImages:
        """``colour_only`` skips the gray set: it is 180² and so too small for larger patches."""
        train = (root or data_root()) / "train"
        gray = [] if colour_only else [
            img for s in GRAY_SOURCES
            for img in load_folder(train / s, True, VALIDATION.get(s, ()), min_size)]
        colour = [img for s in COLOUR_SOURCES
                  for img in load_folder(train / s, False, VALIDATION.get(s, ()), min_size)]
        return cls(gray=gray, colour=colour)

    def describe(self) -> str:
        return (f"{len(self.gray)} gray ({'+'.join(GRAY_SOURCES)}), {len(self.colour)} colour "
                f"({'+'.join(COLOUR_SOURCES)}); held out: {VALIDATION}")


def random_dihedral(patch: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One of the 8 flips/rotations by 90°, uniformly."""
    k = int(rng.integers(8))
    out = np.rot90(patch, k % 4, axes=(0, 1))
    return out[:, ::-1] if k >= 4 else out


def random_crop(img: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    h, w = img.shape[:2]
    y = int(rng.integers(h - size + 1))
    x = int(rng.integers(w - size + 1))
    return img[y : y + size, x : x + size]


def to_chw3(img: np.ndarray) -> np.ndarray:
    """(H, W) or (H, W, 3) on 0–255 → float32 (3, H, W) in [0, 1] (gray replicated)."""
    arr = np.asarray(img, dtype=np.float32) / 255.0
    if arr.ndim == 2:
        return np.repeat(arr[None], 3, axis=0)
    return np.ascontiguousarray(arr.transpose(2, 0, 1))


def to_chw(img: np.ndarray, channels: int) -> np.ndarray:
    """float32 (channels, H, W) in [0, 1]: 3 replicates a gray image, 1 needs a gray one."""
    if channels == 3:
        return to_chw3(img)
    if img.ndim != 2:
        raise ValueError(f"a one-channel network takes gray images, got shape {img.shape}")
    return (np.asarray(img, dtype=np.float32) / 255.0)[None]


def to_gray(rgb: np.ndarray) -> np.ndarray:
    """Pillow's "L" conversion (ITU-R 601-2 luma) of a uint8 RGB array, as :func:`read_image`."""
    return np.asarray(Image.fromarray(np.ascontiguousarray(rgb)).convert("L"), dtype=np.uint8)


def degrade(clean: np.ndarray, task: Task, level_value: float, rng: np.random.Generator,
            clip: bool) -> np.ndarray:
    """Degrade one uint8 patch/image (gray or RGB) at σ or quality ``level_value``."""
    if task == "denoise":
        return add_gaussian_noise(clean.astype(np.float32), level_value, rng, clip=clip)
    if task == "artifacts":
        return jpeg_compress(np.ascontiguousarray(clean), int(level_value))
    raise ValueError(f"unknown task {task!r}; expected one of {TASKS}")


def level_of(task: Task, level_value: float) -> float:
    return level_from_sigma(level_value) if task == "denoise" else level_from_quality(level_value)


@dataclass
class Batch:
    inputs: np.ndarray  # (B, C, P, P) float32, degraded (C = the network's channels)
    targets: np.ndarray  # (B, C, P, P) float32, clean
    levels: np.ndarray  # (B,) float32, the network's level-map value


class PatchSampler:
    """Random degraded/clean patch pairs for ``task``.

    ``gray_fraction`` of the patches come from the gray sources. Denoise: σ ~ U(SIGMA_RANGE)
    per patch; with probability ``clip_prob`` the noisy patch is clipped and rounded like an
    uploaded image, otherwise it stays float (the papers' convention). Artifacts: quality
    uniform in JPEG_QUALITY_RANGE (integers), Pillow JPEG of the gray or RGB patch.
    With ``focus`` = (low, high, p), a share p of the levels is drawn from [low, high] instead
    (a fine-tune that puts more weight on the hardest levels without leaving the served range).
    ``channels=1`` (a gray network): every patch is gray; the colour sources are converted to
    gray first, so ``gray_fraction`` then picks between Train400 and gray BSD200/T91.
    """

    def __init__(self, images: TrainingImages, task: Task, patch: int, rng: np.random.Generator,
                 gray_fraction: float = 0.5, clip_prob: float = 0.5,
                 focus: tuple[float, float, float] | None = None, channels: int = 3) -> None:
        if task not in TASKS:
            raise ValueError(f"unknown task {task!r}")
        if channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3, got {channels}")
        if channels == 1:
            images = TrainingImages(gray=images.gray, colour=[to_gray(c) for c in images.colour])
        self.images, self.task, self.patch, self.rng = images, task, patch, rng
        self.channels = channels
        self.gray_fraction, self.clip_prob = gray_fraction, clip_prob
        served = SIGMA_RANGE if task == "denoise" else JPEG_QUALITY_RANGE
        if focus is not None and not served[0] <= focus[0] <= focus[1] <= served[1]:
            raise ValueError(f"focus range {focus[:2]} is outside the served range {served}")
        self.focus = focus

    def draw_level(self) -> float:
        low, high = SIGMA_RANGE if self.task == "denoise" else JPEG_QUALITY_RANGE
        if self.focus is not None and self.rng.random() < self.focus[2]:
            low, high = self.focus[0], self.focus[1]
        if self.task == "denoise":
            return float(self.rng.uniform(low, high))
        return float(self.rng.integers(int(low), int(high) + 1))

    def sample(self, batch: int) -> Batch:
        inputs, targets, levels = [], [], []
        for _ in range(batch):
            gray = self.rng.random() < self.gray_fraction
            pool = self.images.gray if gray else self.images.colour
            img = pool[int(self.rng.integers(len(pool)))]
            clean = random_dihedral(random_crop(img, self.patch, self.rng), self.rng)
            value = self.draw_level()
            clip = bool(self.rng.random() < self.clip_prob)
            inputs.append(to_chw(degrade(clean, self.task, value, self.rng, clip), self.channels))
            targets.append(to_chw(clean, self.channels))
            levels.append(level_of(self.task, value))
        return Batch(np.stack(inputs), np.stack(targets), np.asarray(levels, dtype=np.float32))


@dataclass
class PlaneBatch:
    """Patches for a network that restores one colour plane while it sees all three."""

    inputs: np.ndarray  # (B, 1, P, P) float32, the noisy plane to restore
    guides: np.ndarray  # (B, 3, P, P) float32, all three noisy planes
    targets: np.ndarray  # (B, 1, P, P) float32, the clean plane
    levels: np.ndarray  # (B,) float32, the plane's level-map value
    luma_levels: np.ndarray  # (B,) float32, the luminance plane's level-map value


class ColourPlaneSampler:
    """Noisy/clean colour patches (BSD200, T91) mapped onto the planes of ``basis``.

    Noise is added in RGB, as a photo has it (σ per channel as :class:`PatchSampler` draws it,
    clipped and rounded with probability ``clip_prob``); both images are then mapped onto the
    basis' planes and one plane, drawn with ``plane_weights``, is the target, with its own level
    (σ times the plane's noise gain). Luminance deserves most of the draws: it holds ~90 % of
    the error left after denoising (the gray network on CBSD68 σ25: luminance 89 %, chroma
    7 % and 4 %), the chroma planes being smooth enough to lose 98 % of their noise.
    """

    def __init__(self, images: TrainingImages, patch: int, rng: np.random.Generator,
                 basis: ColourBasis, clip_prob: float = 0.5,
                 focus: tuple[float, float, float] | None = None,
                 plane_weights: tuple[float, float, float] = (1 / 3, 1 / 3, 1 / 3)) -> None:
        self.levels = PatchSampler(images, "denoise", patch, rng, 0.0, clip_prob, focus)
        self.images, self.patch, self.rng, self.basis = images, patch, rng, basis
        self.clip_prob = clip_prob
        weights = np.asarray(plane_weights, dtype=np.float64)
        if weights.shape != (3,) or weights.min() < 0 or weights.sum() <= 0:
            raise ValueError(f"plane_weights must be 3 non-negative numbers, got {plane_weights}")
        self.plane_weights = weights / weights.sum()

    def sample(self, batch: int) -> PlaneBatch:
        noisy, clean, sigmas = [], [], []
        for _ in range(batch):
            img = self.images.colour[int(self.rng.integers(len(self.images.colour)))]
            patch = random_dihedral(random_crop(img, self.patch, self.rng), self.rng)
            sigma = self.levels.draw_level()
            clip = bool(self.rng.random() < self.clip_prob)
            noisy.append(to_chw(degrade(patch, "denoise", sigma, self.rng, clip), 3))
            clean.append(to_chw(patch, 3))
            sigmas.append(sigma)
        noisy_planes = self.basis.to_planes(torch.from_numpy(np.stack(noisy))).numpy()
        clean_planes = self.basis.to_planes(torch.from_numpy(np.stack(clean))).numpy()
        target = self.rng.choice(3, size=batch, p=self.plane_weights)
        rows = np.arange(batch)
        gains = np.asarray(self.basis.noise_gains, dtype=np.float32)[target]
        base_levels = np.asarray([level_from_sigma(s) for s in sigmas], dtype=np.float32)
        return PlaneBatch(
            inputs=np.ascontiguousarray(noisy_planes[rows, target][:, None]),
            guides=np.ascontiguousarray(noisy_planes),
            targets=np.ascontiguousarray(clean_planes[rows, target][:, None]),
            levels=base_levels * gains,
            luma_levels=base_levels * np.float32(self.basis.noise_gains[0]),
        )


@dataclass
class ValItem:
    name: str
    input: np.ndarray  # (C, H, W) float32
    target: np.ndarray  # (C, H, W) float32
    level: float
    gray: bool  # replicated gray: score the channel mean against one channel


def crop_to_multiple(img: np.ndarray, multiple: int = 8) -> np.ndarray:
    h, w = img.shape[:2]
    return img[: h - h % multiple, : w - w % multiple]


def validation_images(root: Path | None = None) -> list[tuple[str, np.ndarray]]:
    """The held-out clean images, top-left cropped to a multiple of 8."""
    train = (root or data_root()) / "train"
    out = []
    for source, names in VALIDATION.items():
        gray = source in GRAY_SOURCES
        for name in names:
            img = read_image(train / source / name, gray)
            out.append((f"{source}/{name}", crop_to_multiple(img)))
    return out


def validation_set(task: Task, root: Path | None = None,
                   levels: Sequence[float] | None = None, channels: int = 3) -> list[ValItem]:
    """Deterministic degraded/clean validation pairs (seeded; float unclipped noise).

    ``channels=1`` (a gray network): the colour images are converted to gray first.
    """
    if levels is None:
        levels = VAL_SIGMAS if task == "denoise" else VAL_QUALITIES
    rng = np.random.default_rng(VAL_SEED)
    items = []
    for name, clean in validation_images(root):
        if channels == 1 and clean.ndim == 3:
            clean = to_gray(clean)
        for value in levels:
            degraded = degrade(clean, task, value, rng, clip=False)
            items.append(ValItem(f"{name}@{value:g}", to_chw(degraded, channels),
                                 to_chw(clean, channels), level_of(task, value),
                                 gray=clean.ndim == 2))
    return items
