"""What every task's benchmark needs: options, image loading, and our models from the registry."""

from __future__ import annotations

import hashlib
import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from benchmarks.harness import Case, Row, RowResult, ScoreFn, View
from shared.ml import inpaint_window, registry
from shared.ml.models import deep_image_prior
from shared.ml.restorers import dip as dip_restorer
from shared.ml.restorers.common import RestoreJob
from shared.ml.runtime import ModelRuntime, resolve_device

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_DATA = REPO_ROOT.parent / "shared" / "data"
# Models too slow to run on a whole set on a CPU (fitted per image, the registry's `slow`):
# scored on the first few images per column.
SLOW_MODELS = frozenset(r.name for r in registry.RESTORERS if r.slow)
# Calibration tolerances: the recipes reproduce the published values to these margins.
CALIBRATION_TOLERANCE = {"psnr": 0.02, "ssim": 0.0005}


@dataclass(frozen=True)
class Options:
    data: Path
    limit: int | None  # images per set
    models: list[str] | None  # None: every available model of the task (and classic)
    only: frozenset[str] | None  # column names to run; None: all
    slow_limit: int
    grid: Path | None = None
    ensemble: bool = False  # also score ensemble=true where a network offers it


@dataclass
class Setup:
    title: str
    cases: list[Case]
    rows: list[Row]
    score: ScoreFn
    views: list[View]
    notes: list[str] = field(default_factory=list)
    keep: list[tuple[str, str]] = field(default_factory=list)  # outputs to keep (grids)
    after: Callable[[list[RowResult]], list[str]] | None = None  # e.g. write the picture grid


def read_image(path: Path, mode: str | None = None) -> np.ndarray:
    """uint8 array of an image file, converted to `mode` ("L"/"RGB") when given."""
    with Image.open(path) as img:
        if mode is not None and img.mode != mode:
            img = img.convert(mode)
        return np.asarray(img).copy()


def centre_crop(image: np.ndarray, size: int) -> np.ndarray:
    """The central `size`×`size` pixels (top/left rounded down)."""
    h, w = image.shape[:2]
    top, left = (h - size) // 2, (w - size) // 2
    return image[top : top + size, left : left + size]


def list_images(folder: Path, limit: int | None, pattern: str = "*.png") -> list[Path]:
    files = sorted(folder.glob(pattern))
    if not files:
        raise FileNotFoundError(f"no {pattern} images in {folder}")
    return files[:limit] if limit else files


def wanted(options: Options, column: str) -> bool:
    return options.only is None or column.lower() in options.only


def our_models(task: str, options: Options) -> list[str]:
    """Our networks for `task` (registry order, weights present), minus classic."""
    available = [m for m in registry.models_for(task, runtime().weights_dir) if m != "classic"]
    if options.models is not None:
        available = [m for m in available if m in options.models]
    if options.slow_limit <= 0:
        available = [m for m in available if m not in SLOW_MODELS]
    return available


def ensemble_choices(task: str, model: str, options: Options) -> tuple[bool, ...]:
    """Plain, and with ``--ensemble`` also the 8-pass ensemble where `model` offers it."""
    offered = registry.offers_ensemble(task, model)
    return (False, True) if options.ensemble and offered else (False,)


def ensemble_label(ensemble: bool) -> str:
    """Suffix of a row's name and key for the ensemble mode."""
    return " x8" if ensemble else ""


def include_classic(options: Options) -> bool:
    return options.models is None or "classic" in options.models


def model_limits(model: str, options: Options, slow_columns: frozenset[str]) -> dict[str, Any]:
    """Row arguments for one of our models: a very slow one (DIP) runs only on the task's
    `slow_columns` and on ``--slow-limit`` images of each (0 leaves it out), and its scores
    are cached: DIP is seeded, so its output is fixed by its code and by torch's version,
    and minutes per image are worth computing once."""
    if model not in SLOW_MODELS:
        return {}
    return {"max_images": options.slow_limit, "columns": slow_columns,
            "version": slow_model_version()}


def slow_model_version() -> str:
    """Cache version of the DIP rows: the source of its fit and network, and torch's version."""
    code = source_version(dip_restorer, deep_image_prior, inpaint_window)
    return f"torch{torch.__version__}-{code}"


def source_version(*objects: object) -> str:
    """A short hash of the source code of `objects`: cached rows of a classic method are
    recomputed when its code (e.g. its tuned parameters) changes."""
    text = "".join(inspect.getsource(o) for o in objects)  # type: ignore[arg-type]
    return hashlib.sha1(text.encode()).hexdigest()[:10]


def file_version(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:12]


_runtime: list[ModelRuntime] = []


def configure_runtime(tile_budget_mb: int = 0) -> ModelRuntime:
    """The model runtime every benchmark row runs on: the shipped weights, CUDA when present."""
    _runtime[:] = [ModelRuntime(registry.SHIPPED_WEIGHTS_DIR, resolve_device("auto"),
                                tile_budget_mb=tile_budget_mb)]
    return _runtime[0]


def runtime() -> ModelRuntime:
    return _runtime[0] if _runtime else configure_runtime()


def restore(task: str, model: str, image: np.ndarray, **options: Any) -> np.ndarray:
    """`model`'s output for `task` through the registry, exactly as the service runs it."""
    return registry.restore(runtime(), task, model, RestoreJob(pixels=image, **options)).pixels
