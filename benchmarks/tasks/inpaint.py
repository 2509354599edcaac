"""Inpainting: free-form holes over Kodak24 and CBSD68; the published examples, visually.

Scored cases:
* **Free-form bands** 10–20 %, 20–30 %, 30–40 %: masks from ``nvidia_irregular_masks_subset``
  (512×512, white = hole; band from ``INDEX.tsv``'s ``nominal_ratio_bin``, border-touching masks
  included). Image *i* of the list "Kodak24 then CBSD68" (sorted by name) gets mask *i mod n* of
  the band's sorted list. Kodak24 (768×512, some portrait) is centre-cropped to 512×512; for
  CBSD68 (481×321 / 321×481) the mask is resized to the image with nearest neighbour, which
  keeps its hole ratio to within a percent or so.

Shown in the picture grid only, not scored: the **EdgeConnect examples** and the **DeepFill v2
Places2 examples**. Neither has a ground truth for the hole: EdgeConnect's ``images`` are the
masked inputs (every hole pixel is 255), and every DeepFill case is an *object removal* (the
masked region of ``caseN_raw.png`` is the person or watermark to remove), so a PSNR against
them would reward reproducing what should disappear. Their masks: white = hole (EdgeConnect);
``caseN_mask.png``'s first channel > 127.5 (the authors' test script). The DeepFill grid row
also shows the official DeepFill v2 result (``caseN_output.png``).

Every method sees the image with the hole's pixels set to 0 (no ground truth leaks in). Scores:
PSNR, SSIM and L1 (% of the 0–255 range) over the whole image and inside the hole (SSIM: mean of
the SSIM map over the hole), RGB.

These images and masks are CC BY-NC: results and grids go to ``runs/`` (git-ignored), never into
the repository.
"""

from __future__ import annotations

import csv
import functools
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, ImageDraw

from benchmarks.harness import Case, Row, RowResult, Sample, Scores, View
from benchmarks.metrics import inpaint_scores, to_uint8
from benchmarks.tasks.common import (
    Options,
    Setup,
    centre_crop,
    ensemble_choices,
    ensemble_label,
    include_classic,
    list_images,
    model_limits,
    our_models,
    read_image,
    restore,
    source_version,
    wanted,
)
from shared.ml.imaging import composite_masked
from shared.ml.inpaint_window import TELEA_RADIUS
from shared.ml.restorers import classic

MASKS = Path("inpaint/nvidia_irregular_masks_subset")
BANDS = {"(0.1,0.2]": "holes 10–20%", "(0.2,0.3]": "holes 20–30%", "(0.3,0.4]": "holes 30–40%"}
IMAGE_SETS = ("Kodak24", "CBSD68")
SLOW_COLUMNS = frozenset({"holes 20–30%"})  # where a very slow model (DIP) is scored
EDGECONNECT = Path("inpaint/edgeconnect_examples")
DEEPFILL = Path("inpaint/deepfill_v2_places2_examples")
CROP = 512
GRID_HEIGHT = 192


def band_masks(options: Options) -> dict[str, list[Path]]:
    folder = options.data / MASKS
    with (folder / "INDEX.tsv").open() as f:
        index = list(csv.DictReader(f, delimiter="\t"))
    return {
        column: sorted(folder / r["file"] for r in index if r["nominal_ratio_bin"] == band)
        for band, column in BANDS.items()
    }


def _with_hole(gt: np.ndarray, mask: np.ndarray) -> Sample:
    image = gt.copy()
    image[mask] = 0
    return {"gt": gt, "mask": mask, "input": image}


def _load_freeform(image_path: Path, mask_path: Path, variant: str) -> Sample:
    gt = read_image(image_path, "RGB")
    mask_img = Image.open(mask_path).convert("L")
    if image_path.parent.name == "Kodak24":
        gt = centre_crop(gt, CROP)
    if mask_img.size != (gt.shape[1], gt.shape[0]):
        mask_img = mask_img.resize((gt.shape[1], gt.shape[0]), Image.Resampling.NEAREST)
    return _with_hole(gt, np.asarray(mask_img) >= 128)


def _load_pair(image_path: Path, mask_path: Path, variant: str) -> Sample:
    gt = read_image(image_path, "RGB")
    mask = read_image(mask_path)
    mask = mask[..., 0] if mask.ndim == 3 else mask
    # DeepFill's test.py thresholds at 127.5; EdgeConnect's masks are binary 0/255.
    return _with_hole(gt, mask > 127.5)


def freeform_cases(options: Options) -> list[Case]:
    images = [
        p for s in IMAGE_SETS for p in list_images(options.data / "testsets" / s, options.limit)
    ]
    cases = []
    for column, masks in band_masks(options).items():
        if not wanted(options, column):
            continue
        for i, image_path in enumerate(images):
            mask_path = masks[i % len(masks)]
            image_id = f"{image_path.parent.name}/{image_path.stem}+{mask_path.stem}"
            cases.append(
                Case(column, image_id, functools.partial(_load_freeform, image_path, mask_path))
            )
    return cases


def example_cases(options: Options) -> list[Case]:
    """The first EdgeConnect and DeepFill v2 examples, for the picture grid."""
    edge = options.data / EDGECONNECT
    image = sorted(edge.glob("*/images/*.png"))[0]
    deepfill = options.data / DEEPFILL
    return [
        Case(
            "EdgeConnect example",
            image.stem,
            functools.partial(_load_pair, image, image.parent.parent / "masks" / image.name),
        ),
        Case(
            "DeepFill v2 example",
            "case1",
            functools.partial(_load_pair, deepfill / "case1_raw.png", deepfill / "case1_mask.png"),
        ),
    ]


def score(sample: Sample, out: np.ndarray) -> Scores:
    return inpaint_scores(sample["gt"], out, sample["mask"])


# --------------------------------------------------------------------------- methods


def _telea(sample: Sample) -> np.ndarray:
    return to_uint8(restore("inpaint", "classic", sample["input"], mask=sample["mask"]))


def _navier_stokes(sample: Sample) -> np.ndarray:
    """OpenCV's Navier–Stokes inpainting (Bertalmio et al. 2001), same radius as Telea."""
    bgr = cv2.cvtColor(sample["input"], cv2.COLOR_RGB2BGR)
    mask = sample["mask"].astype(np.uint8) * 255
    filled = cv2.inpaint(bgr, mask, TELEA_RADIUS, cv2.INPAINT_NS)
    return composite_masked(
        sample["input"], cv2.cvtColor(filled, cv2.COLOR_BGR2RGB), sample["mask"]
    )


def _ours(model: str, sample: Sample, ensemble: bool = False) -> np.ndarray:
    return to_uint8(restore("inpaint", model, sample["input"], mask=sample["mask"],
                            ensemble=ensemble))


def build_rows(options: Options) -> list[Row]:
    rows = []
    if include_classic(options):
        rows.append(
            Row(
                "Telea, classic",
                "telea",
                _telea,
                version=f"{cv2.__version__}-{source_version(classic.inpaint)}",
            )
        )
        rows.append(
            Row(
                "OpenCV Navier-Stokes",
                "ns",
                _navier_stokes,
                version=f"{cv2.__version__}-{source_version(_navier_stokes)}",
            )
        )
    for model in our_models("inpaint", options):
        for ensemble in ensemble_choices("inpaint", model, options):
            name = f"{model}{ensemble_label(ensemble)}"
            rows.append(
                Row(
                    name,
                    name,
                    functools.partial(_ours, model, ensemble=ensemble),
                    **model_limits(model, options, SLOW_COLUMNS),
                    kind="model",
                )
            )
    return rows


# --------------------------------------------------------------------------- picture grid


def _tile(image: np.ndarray, label: str) -> Image.Image:
    img = Image.fromarray(image).convert("RGB")
    width = round(img.width * GRID_HEIGHT / img.height)
    img = img.resize((width, GRID_HEIGHT), Image.Resampling.LANCZOS)
    canvas = Image.new("RGB", (width, GRID_HEIGHT + 16), "white")
    canvas.paste(img, (0, 16))
    ImageDraw.Draw(canvas).text((3, 2), label, fill="black")
    return canvas


def _output(result: RowResult, case: Case, sample: Sample) -> np.ndarray | None:
    out = result.outputs.get((case.column, case.image))
    if out is None and result.row.run is not None and not result.error:
        out = result.row.run(sample)  # a cached row or a grid-only case: run it now
    return out


def _grid_row(case: Case, shown: list[RowResult], data: Path) -> list[Image.Image]:
    sample = case.load("")
    shown_input = sample["input"].copy()
    shown_input[sample["mask"]] = 255  # the hole in white, as the user paints it
    # Pillow's built-in bitmap font is ASCII only
    label = f"{case.column}: {case.image}".replace("–", "-").encode("ascii", "replace").decode()
    tiles = [_tile(shown_input, label), _tile(sample["mask"].astype(np.uint8) * 255, "mask")]
    for result in shown:
        out = _output(result, case, sample)
        if out is not None:
            tiles.append(_tile(out, result.row.label))
    official = data / DEEPFILL / f"{case.image}_output.png"
    if case.column.startswith("DeepFill") and official.is_file():
        tiles.append(_tile(read_image(official, "RGB"), "DeepFill v2 (official)"))
    return tiles


def write_grid(path: Path, cases: list[Case], results: list[RowResult], data: Path) -> str:
    """Rows: a few cases; columns: input, mask, Telea, ours (NS when no model of ours ran)."""
    by_key = {r.row.key: r for r in results}
    ours = next((r for r in results if r.row.kind == "model" and r.outputs), by_key.get("ns"))
    shown = [r for r in (by_key.get("telea"), ours) if r is not None]
    lines = [_grid_row(case, shown, data) for case in cases]
    width = max(sum(t.width for t in tiles) for tiles in lines)
    grid = Image.new("RGB", (width, sum(t[0].height for t in lines)), "white")
    y = 0
    for tiles in lines:
        x = 0
        for tile in tiles:
            grid.paste(tile, (x, y))
            x += tile.width
        y += tiles[0].height
    path.parent.mkdir(parents=True, exist_ok=True)
    grid.save(path)
    return f"picture grid (CC BY-NC inputs: never commit it): {path}"


def grid_cases(cases: list[Case]) -> list[Case]:
    """One case per band, spread over the image list (Kodak24 first, then CBSD68)."""
    picked = []
    for j, column in enumerate(BANDS.values()):
        in_band = [c for c in cases if c.column == column]
        if in_band:
            picked.append(in_band[j * len(in_band) // len(BANDS)])
    return picked


def build(options: Options) -> Setup:
    cases = freeform_cases(options)
    shown = grid_cases(cases)
    grid_path = options.grid

    def after(results: list[RowResult]) -> list[str]:
        if grid_path is None:
            return []
        visual = shown + example_cases(options)
        return [write_grid(grid_path, visual, results, options.data)]

    return Setup(
        title="Inpainting (RGB) — PSNR (dB) / SSIM / L1 (% of 255), in the hole and whole image",
        cases=cases,
        rows=build_rows(options),
        score=score,
        views=[
            View("hole", ("hole_psnr", "hole_ssim", "hole_l1")),
            View("whole", ("psnr", "ssim", "l1")),
        ],
        notes=[
            "masks: NVIDIA irregular masks by hole-ratio band; images: Kodak24 (centre 512²) "
            "and CBSD68 (mask resized, nearest); hole pixels zeroed before any method sees them",
            "EdgeConnect / DeepFill v2 examples are in the grid only: they have no ground truth "
            "inside the hole (masked inputs; object removals)",
        ],
        keep=[(c.column, c.image) for c in shown],
        after=after,
    )
