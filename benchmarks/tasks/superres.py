"""4× super-resolution: Set5 and Set14 from their ``LR_bicubic/X4`` inputs.

Recipe (SOURCES.md; reproduces RCAN's 32.63 dB): PSNR/SSIM on unrounded float Y (MATLAB
rgb2ycbcr), 4 pixels shaved from every border, HR cropped to 4× the LR size (some Set14 HR sizes
are not multiples of 4). Gray images (Set14 ``bridge``) are replicated to RGB first, as BasicSR
reads every test image, so every method gets an RGB input and Y is computed the same way.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Callable
from pathlib import Path

import numpy as np

from benchmarks.harness import Case, Row, Sample, Scores, View
from benchmarks.metrics import to_uint8, y_psnr_ssim
from benchmarks.tasks.common import (
    Options,
    Setup,
    ensemble_choices,
    ensemble_label,
    include_classic,
    list_images,
    model_limits,
    our_models,
    read_image,
    restore,
    runtime,
    source_version,
    wanted,
)
from shared.ml import registry
from shared.ml.restorers import classic
from training import matlab_resize
from training.matlab_resize import imresize

SCALE = 4
BORDER = 4
SETS = ("Set5", "Set14")
RCAN_OUTPUTS = Path("reference_outputs/RCAN_SR_x4")

# ESRGAN README, RRDB_PSNR (DF2K): the paper's PSNR-oriented network.
PAPER_RRDB = {
    "Set5 ×4": {"psnr": 32.73, "ssim": 0.9011},
    "Set14 ×4": {"psnr": 28.99, "ssim": 0.7917},
}
PAPER_RCAN = {
    "Set5 ×4": {"psnr": 32.63, "ssim": 0.9002},
    "Set14 ×4": {"psnr": 28.87, "ssim": 0.7889},
}
# RCAN's official outputs under this recipe (SOURCES.md check; SSIM: RCAN's table).
RCAN_EXPECTED = {"Set5 ×4": {"psnr": 32.634, "ssim": 0.9002}}


def column_name(set_name: str) -> str:
    return f"{set_name} ×{SCALE}"


def _load(hr_path: Path, variant: str) -> Sample:
    lr_path = hr_path.parent.parent / "LR_bicubic" / f"X{SCALE}" / f"{hr_path.stem}x{SCALE}.png"
    lr = read_image(lr_path, "RGB")
    hr = read_image(hr_path, "RGB")[: lr.shape[0] * SCALE, : lr.shape[1] * SCALE]
    return {"hr": hr, "lr": lr, "stem": hr_path.stem, "set": hr_path.parent.parent.name}


def build_cases(options: Options) -> list[Case]:
    cases = []
    for set_name in SETS:
        column = column_name(set_name)
        if not wanted(options, column):
            continue
        for path in list_images(options.data / "testsets" / set_name / "HR", options.limit):
            cases.append(Case(column, path.stem, functools.partial(_load, path)))
    return cases


def score(sample: Sample, out: np.ndarray) -> Scores:
    if out.shape != sample["hr"].shape:
        raise ValueError(f"output {out.shape} is not 4× the input: expected {sample['hr'].shape}")
    value_psnr, value_ssim = y_psnr_ssim(sample["hr"], out, BORDER)
    return {"psnr": value_psnr, "ssim": value_ssim}


def score_rcan(sample: Sample, out: np.ndarray) -> Scores:
    """RCAN's outputs may be cropped: crop HR to the SR size, as the recipe says."""
    hr = sample["hr"][: out.shape[0], : out.shape[1]]
    value_psnr, value_ssim = y_psnr_ssim(hr, out, BORDER)
    return {"psnr": value_psnr, "ssim": value_ssim}


def _classic(sample: Sample) -> np.ndarray:
    return to_uint8(restore("superres", "classic", sample["lr"], scale=SCALE))


def _matlab_bicubic(sample: Sample) -> np.ndarray:
    return imresize(sample["lr"], SCALE)


def _ours(
    model: str, strength: float | None, sample: Sample, ensemble: bool = False
) -> np.ndarray:
    extra: dict[str, object] = {"ensemble": True} if ensemble else {}
    if strength is not None:
        extra["strength"] = strength
    return to_uint8(restore("superres", model, sample["lr"], scale=SCALE, **extra))


def _rcan(folder: Path, sample: Sample) -> np.ndarray:
    return read_image(folder / sample["set"] / f"{sample['stem']}_RCAN_x{SCALE}.png", "RGB")


#: A row's cache version from its restorer and strength (None: the row is not cached).
VersionFn = Callable[[registry.Restorer, float | None], str | None]


def _strengths(entry: registry.Restorer) -> tuple[tuple[float | None, str], ...]:
    """PSNR weights at 0 and GAN weights at 1 where `entry` blends them; else no strength.
    Without shipped GAN weights strength is ignored: one row, not two equal ones."""
    if not entry.strength_weights:
        return ((None, ""),)
    if entry.offers_strength(runtime().weights_dir):
        return ((0.0, "PSNR"), (1.0, "GAN"))
    return ((0.0, "PSNR"),)


def model_rows(options: Options, version_of: VersionFn | None = None) -> list[Row]:
    """Our networks' rows (ESRGAN at strength 0 and 1 where the GAN weights are shipped; the
    x8 rows with ``--ensemble``); with `version_of`, each row is cached under the version it
    returns (e.g. from its weights' hashes)."""
    rows = []
    for model in our_models("superres", options):
        entry = registry.find("superres", model)
        if entry is None:
            continue
        limit = model_limits(model, options, frozenset({column_name(SETS[0])}))
        strengths = _strengths(entry)
        # realesrgan (no strength) keeps one row: its x8 costs 8 × x4plus on every image.
        ensembles = ensemble_choices("superres", model, options) if entry.strength_weights else (
            False,)
        for (strength, tag), ensemble in itertools.product(strengths, ensembles):
            label = ensemble_label(ensemble)
            name, key = model, model
            if strength is not None:
                name, key = f"{model} strength={strength:g} ({tag})", f"{model}@{strength:g}"
            if version_of is not None:
                limit = {**limit, "version": version_of(entry, strength)}
            rows.append(
                Row(
                    name + label,
                    key + label,
                    functools.partial(_ours, model, strength, ensemble=ensemble),
                    **limit,
                    kind="model",
                )
            )
    return rows


def build(options: Options) -> Setup:
    rows = [
        Row(
            "bicubic, MATLAB imresize (input)",
            "matlab-bicubic",
            _matlab_bicubic,
            version=source_version(matlab_resize),
            kind="input",
        )
    ]
    if include_classic(options):
        rows.append(
            Row(
                "bicubic, classic (Pillow)",
                "classic",
                _classic,
                version=source_version(classic.bicubic_upscale),
            )
        )
    rows += model_rows(options)
    rows += [
        Row("RRDB-PSNR, ESRGAN (paper)", "paper-rrdb", published=PAPER_RRDB, kind="paper"),
        Row("RCAN (paper)", "paper-rcan", published=PAPER_RCAN, kind="paper"),
        Row(
            "calib: RCAN official outputs",
            "calib-rcan",
            functools.partial(_rcan, options.data / RCAN_OUTPUTS),
            columns=frozenset(RCAN_EXPECTED),
            expected=RCAN_EXPECTED,
            score=score_rcan,
            kind="calibration",
        ),
    ]
    return Setup(
        title="4× super-resolution (Y, 4-px border shaved) — PSNR (dB) / SSIM",
        cases=build_cases(options),
        rows=rows,
        score=score,
        views=[View("", ("psnr", "ssim"))],
        notes=[
            "inputs: LR_bicubic/X4 (MATLAB bicubic); HR cropped to 4× LR; gray images "
            "replicated to RGB"
        ],
    )
