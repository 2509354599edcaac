"""Gaussian denoising: gray BSD68/Set12 at σ 15/25/50, colour CBSD68 at σ 15/25/50 and Kodak24
at σ 25/50.

Two input conventions, from the same noise draw:
* ``float`` — the papers': clean + N(0, σ²) in floating point, neither clipped nor rounded, fed
  to the method as is (our networks get it on the [0, 1] scale, values outside included);
* ``uint8`` — what users upload: the same noisy image clipped to [0, 255] and rounded.
Outputs are rounded to uint8 before scoring. PSNR/SSIM on the 0–255 scale, colour over RGB
(SSIM: mean of the channels). The "noisy input" rows score the noisy image itself (float: not
rounded).

Noise seeding: every (set, image, σ) has its own generator,
``np.random.default_rng([20180618, crc32("<set>/<file stem>"), σ])``, so a result does not depend
on which other images or sets were run (``--limit``, ``--only``).

Calibration: the official DnCNN-S σ=25 weights must give the published BSD68/Set12 numbers
(29.23 / 30.44 dB; the check in SOURCES.md gives 29.224 / 30.445). That check seeds numpy's legacy
generator once per set, ``np.random.seed(0)``, and draws ``np.random.normal(0, σ/255, shape)``
for each image in file-name order (one stream, as DnCNN's MATLAB test seeds once); this is what
reproduces its numbers exactly. KAIR's script instead re-seeds 0 before every image, which gives
29.233 / 30.432 (same images, another noise draw: the spread between noise draws is ~0.01 dB).

Colour yardstick: the same DnCNN-S σ25 weights run on each RGB channel (σ25 colour columns only).
``ours, sigma=auto`` is the default network with the noise level estimated from the upload, as
the service's ``sigma=auto`` does (compare it with the ``[uint8]`` row, given the true σ).
``--models mwcnn,colour-bases`` adds a row for every way of denoising a colour photo the MWCNN
restorer knows (the colour network; the gray network on the planes of each colour basis), to
re-measure the choice of ``shared.ml.restorers.mwcnn.COLOUR_BASIS`` after retraining.
"""

from __future__ import annotations

import functools
import importlib.metadata
import itertools
import zlib
from pathlib import Path

import numpy as np

from benchmarks.dncnn import DnCNN, load_dncnn, run_dncnn, run_dncnn_per_channel
from benchmarks.harness import Case, Row, Sample, Scores, View
from benchmarks.metrics import psnr, ssim, to_uint8
from benchmarks.tasks.common import (
    SLOW_MODELS,
    Options,
    Setup,
    ensemble_choices,
    ensemble_label,
    file_version,
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
from shared.ml import colour_planes
from shared.ml.models.mwcnn import level_from_sigma
from shared.ml.restorers import classic as nlm_module
from shared.ml.restorers import mwcnn
from shared.ml.restorers.common import RestoreJob
from training.degradations import add_gaussian_noise

NOISE_SEED = 20180618
NOISE_VERSION = "1"  # bump when the noise recipe above changes (part of the cache keys)
GRAY_SETS = {"BSD68": (15, 25, 50), "Set12": (15, 25, 50)}
COLOUR_SETS = {"CBSD68": (15, 25, 50), "Kodak24": (25, 50)}
SLOW_COLUMNS = frozenset({"BSD68 σ25", "CBSD68 σ25"})  # where a slow model (DIP) is scored
DNCNN_WEIGHTS = Path("weights/dncnn/kair_dncnn_25.pth")
DNCNN_SIGMA = 25
# The DnCNN-S σ25 yardstick on colour: the σ25 colour columns.
DNCNN_COLOUR_COLUMNS = frozenset({"CBSD68 σ25", "Kodak24 σ25"})
# sigma=auto: the estimated noise level against the true one, on CBSD68.
AUTO_SIGMA_COLUMNS = frozenset({"CBSD68 σ15", "CBSD68 σ25", "CBSD68 σ50"})
# --models colour-bases: every colour path of the MWCNN restorer, on the colour columns.
COLOUR_BASES_MODEL = "colour-bases"
COLOUR_COLUMNS = frozenset(f"{name} σ{sigma}" for name, sigmas in COLOUR_SETS.items()
                           for sigma in sigmas)

# MWCNN Table 1 (PSNR / SSIM where printed); BM3D and DnCNN columns of the same table.
PAPER_MWCNN = {
    "Set12 σ15": {"psnr": 33.15, "ssim": 0.9088},
    "Set12 σ25": {"psnr": 30.79, "ssim": 0.8711},
    "Set12 σ50": {"psnr": 27.74, "ssim": 0.8056},
    "BSD68 σ15": {"psnr": 31.86, "ssim": 0.8947},
    "BSD68 σ25": {"psnr": 29.41, "ssim": 0.8360},
    "BSD68 σ50": {"psnr": 26.53, "ssim": 0.7366},
}
PAPER_BM3D = {
    "Set12 σ15": {"psnr": 32.37}, "Set12 σ25": {"psnr": 29.97}, "Set12 σ50": {"psnr": 26.72},
    "BSD68 σ15": {"psnr": 31.08}, "BSD68 σ25": {"psnr": 28.57}, "BSD68 σ50": {"psnr": 25.62},
}  # fmt: skip
PAPER_DNCNN = {
    "Set12 σ15": {"psnr": 32.86}, "Set12 σ25": {"psnr": 30.44}, "Set12 σ50": {"psnr": 27.18},
    "BSD68 σ15": {"psnr": 31.73}, "BSD68 σ25": {"psnr": 29.23}, "BSD68 σ50": {"psnr": 26.23},
}  # fmt: skip
# What the official weights give under KAIR's protocol (SOURCES.md check).
DNCNN_EXPECTED = {"BSD68 σ25": {"psnr": 29.224}, "Set12 σ25": {"psnr": 30.445}}


def column_name(set_name: str, sigma: int) -> str:
    return f"{set_name} σ{sigma}"


def noise_rng(set_name: str, stem: str, sigma: int) -> np.random.Generator:
    return np.random.default_rng([NOISE_SEED, zlib.crc32(f"{set_name}/{stem}".encode()), sigma])


@functools.lru_cache(maxsize=2)
def seed0_stream(folder: Path, sigma: int) -> dict[str, np.ndarray]:
    """Noise (0–1 scale) per file stem: np.random.seed(0) once, then one draw per image of the
    whole set in file-name order (so --limit does not change any image's noise)."""
    rng = np.random.RandomState(0)  # the legacy generator np.random.seed(0) would set up
    noise = {}
    for path in sorted(folder.glob("*.png")):
        shape = read_image(path, "L").shape
        noise[path.stem] = rng.normal(0, sigma / 255.0, shape)
    return noise


def _load(path: Path, set_name: str, sigma: int, gray: bool, variant: str) -> Sample:
    clean = read_image(path, "L" if gray else "RGB")
    if variant == "seed0":  # the SOURCES.md check's protocol, for the DnCNN calibration row
        noisy01 = clean / 255.0 + seed0_stream(path.parent, sigma)[path.stem]
        return {"gt": clean, "noisy": noisy01 * 255.0, "noisy01": noisy01, "sigma": sigma}
    rng = noise_rng(set_name, path.stem, sigma)
    noisy = add_gaussian_noise(clean, sigma, rng, clip=variant == "uint8")
    return {"gt": clean, "noisy": noisy, "sigma": sigma}


def build_cases(options: Options) -> list[Case]:
    cases = []
    for sets, gray in ((GRAY_SETS, True), (COLOUR_SETS, False)):
        for set_name, sigmas in sets.items():
            for sigma in sigmas:
                column = column_name(set_name, sigma)
                if not wanted(options, column):
                    continue
                for path in list_images(options.data / "testsets" / set_name, options.limit):
                    load = functools.partial(_load, path, set_name, sigma, gray)
                    cases.append(Case(column, path.stem, load))
    return cases


def score(sample: Sample, out: np.ndarray) -> Scores:
    return {"psnr": psnr(sample["gt"], out), "ssim": ssim(sample["gt"], out)}


# --------------------------------------------------------------------------- methods


def _noisy_input(sample: Sample) -> np.ndarray:
    return sample["noisy"]


def _bm3d(sample: Sample) -> np.ndarray:
    import bm3d  # optional dependency (pip install restora[classic])

    noisy01 = sample["noisy"].astype(np.float64) / 255.0
    sigma01 = sample["sigma"] / 255.0
    if noisy01.ndim == 2:
        out = bm3d.bm3d(noisy01, sigma_psd=sigma01)
    else:  # CBM3D in the opponent colour space, the package's default for RGB
        out = bm3d.bm3d_rgb(noisy01, sigma_psd=sigma01)
    return to_uint8(np.asarray(out) * 255.0)


def _nlm(sample: Sample) -> np.ndarray:
    return to_uint8(restore("denoise", "classic", to_uint8(sample["noisy"]),
                            sigma=float(sample["sigma"])))


def _network_input(sample: Sample, convention: str) -> np.ndarray:
    noisy = sample["noisy"]
    # float convention: the unclipped noisy image on the [0, 1] scale our networks work in
    return noisy.astype(np.float32) / 255.0 if convention == "float" else to_uint8(noisy)


def _ours(model: str, sample: Sample, convention: str, ensemble: bool = False) -> np.ndarray:
    return to_uint8(restore("denoise", model, _network_input(sample, convention),
                            sigma=float(sample["sigma"]), ensemble=ensemble))


def _ours_auto_sigma(model: str, sample: Sample) -> np.ndarray:
    """The upload (uint8) with sigma=auto: the service estimates σ from the image."""
    return to_uint8(restore("denoise", model, to_uint8(sample["noisy"]), sigma=None))


def _colour_path(basis: colour_planes.ColourBasis | None, sample: Sample,
                 convention: str) -> np.ndarray:
    """One way of denoising a colour image with the MWCNN weights (None: the colour network)."""
    image, sigma = _network_input(sample, convention), float(sample["sigma"])
    job = RestoreJob(pixels=image, sigma=sigma)
    if basis is None:
        return mwcnn.run_at_level(runtime(), mwcnn.DENOISE_WEIGHTS, image,
                                  level_from_sigma(sigma), job)
    return mwcnn.denoise_colour_planes(runtime(), mwcnn.DENOISE_GRAY_WEIGHTS, image, sigma,
                                       basis, job)


@functools.cache
def _dncnn(path: Path) -> DnCNN:
    return load_dncnn(path)


def _dncnn_seed0(path: Path, sample: Sample) -> np.ndarray:
    return run_dncnn(_dncnn(path), sample["noisy01"])


def _dncnn_each_channel(path: Path, sample: Sample, convention: str) -> np.ndarray:
    noisy = sample["noisy"] if convention == "float" else to_uint8(sample["noisy"])
    return run_dncnn_per_channel(_dncnn(path), noisy.astype(np.float64) / 255.0)


def _colour_base_rows() -> list[Row]:
    """--models colour-bases: the colour network and the gray network on each basis' planes."""
    paths: list[tuple[str, colour_planes.ColourBasis | None]] = [("colour network", None)]
    paths += [(f"gray network, {b.name} planes", b) for b in colour_planes.COLOUR_BASES]
    rows = []
    for (label, basis), conv in itertools.product(paths, ("float", "uint8")):
        key = f"mwcnn-{'colour' if basis is None else basis.name}[{conv}]"
        rows.append(Row(f"mwcnn, {label} [{conv}]", key,
                        functools.partial(_colour_path, basis, convention=conv), conv,
                        columns=COLOUR_COLUMNS, kind="model"))
    return rows


def _bm3d_version() -> str | None:
    try:
        return f"bm3d-{importlib.metadata.version('bm3d')}-noise-v{NOISE_VERSION}"
    except importlib.metadata.PackageNotFoundError:
        return None


def build_rows(options: Options) -> tuple[list[Row], list[str]]:
    notes = []
    rows = [
        Row("noisy input [float]", "input[float]", _noisy_input, "float", kind="input"),
        Row("noisy input [uint8]", "input[uint8]", _noisy_input, "uint8", kind="input"),
    ]
    if include_classic(options):
        bm3d_version = _bm3d_version()
        if bm3d_version is None:
            notes.append("BM3D rows skipped: the `bm3d` package is not installed")
        else:
            for conv in ("float", "uint8"):
                rows.append(Row(f"BM3D [{conv}]", f"bm3d[{conv}]", _bm3d, conv, bm3d_version))
        nlm_version = f"{source_version(nlm_module)}-noise-v{NOISE_VERSION}"
        # NLM (OpenCV) only takes uint8 images, so it has no float-convention row.
        rows.append(Row("NLM, classic [uint8]", "nlm[uint8]", _nlm, "uint8", nlm_version))
    for model in our_models("denoise", options):
        # DIP fits the uploaded 8-bit image itself: it has no float-convention row.
        conventions = ("uint8",) if model in SLOW_MODELS else ("float", "uint8")
        for conv, ensemble in itertools.product(
            conventions, ensemble_choices("denoise", model, options)
        ):
            run = functools.partial(_ours, model, convention=conv, ensemble=ensemble)
            name = f"{model}{ensemble_label(ensemble)}"
            rows.append(
                Row(
                    f"{name} [{conv}]",
                    f"{name}[{conv}]",
                    run,
                    conv,
                    **model_limits(model, options, SLOW_COLUMNS),
                    kind="model",
                )
            )
    if "mwcnn" in our_models("denoise", options):
        rows.append(Row("ours, sigma=auto [uint8]", "mwcnn-sigma-auto[uint8]",
                        functools.partial(_ours_auto_sigma, "mwcnn"), "uint8",
                        columns=AUTO_SIGMA_COLUMNS, kind="model"))
    if options.models is not None and COLOUR_BASES_MODEL in options.models:
        rows += _colour_base_rows()
    rows += [
        Row("MWCNN (paper)", "paper-mwcnn", published=PAPER_MWCNN, kind="paper"),
        Row("DnCNN-S (paper)", "paper-dncnn", published=PAPER_DNCNN, kind="paper"),
        Row("BM3D (paper)", "paper-bm3d", published=PAPER_BM3D, kind="paper"),
    ]
    weights = options.data / DNCNN_WEIGHTS
    if weights.is_file():
        rows.append(
            Row(
                "calib: DnCNN-S σ25 official weights [seed-0 stream]",
                "calib-dncnn25[seed0]",
                functools.partial(_dncnn_seed0, weights),
                "seed0",
                version=f"{file_version(weights)}-seed0-stream",
                columns=frozenset(DNCNN_EXPECTED),
                expected=DNCNN_EXPECTED,
                kind="calibration",
            )
        )
        for conv in ("float", "uint8"):
            rows.append(
                Row(
                    f"DnCNN-S σ25, each channel [{conv}]",
                    f"dncnn25-each-channel[{conv}]",
                    functools.partial(_dncnn_each_channel, weights, convention=conv),
                    conv,
                    version=f"{file_version(weights)}-noise-v{NOISE_VERSION}",
                    columns=DNCNN_COLOUR_COLUMNS,
                )
            )
    else:
        notes.append(f"DnCNN calibration and colour yardstick skipped: {weights} not found")
    return rows, notes


def build(options: Options) -> Setup:
    rows, notes = build_rows(options)
    notes += [
        "[float]: noise added in floating point, unclipped (papers); [uint8]: clipped and "
        "rounded (uploads). Outputs rounded to uint8. PSNR/SSIM on RGB for colour sets.",
        "noise: np.random.default_rng([20180618, crc32('<set>/<stem>'), σ]) per image",
    ]
    return Setup(
        title="Gaussian denoising — PSNR (dB) / SSIM",
        cases=build_cases(options),
        rows=rows,
        score=score,
        views=[View("", ("psnr", "ssim"))],
        notes=notes,
    )
