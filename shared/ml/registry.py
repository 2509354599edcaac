"""The one registry of restorers: for every (task, model), what it needs and what it offers.

The gateway validates against it, `/api/v1/models` and the OpenAPI document publish it, the
page lists its models, the model services dispatch through it and the benchmarks run it.
Adding a network means one model file in `shared/ml/models/`, one restore function in
`shared/ml/restorers/` and one entry below.

A network is offered only when its weights are present in the runtime's weights directory,
so a fresh checkout always has a working default; the first available model of a task is its
default, so the order says which measured best. Importing this module does not import torch:
the network restorers are imported when one first runs (the gateway never needs them).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from shared.errors import UnprocessableInput
from shared.ml import x4plus
from shared.ml.restorers import classic
from shared.ml.restorers.common import (
    JPEG_QUALITY_RANGE,
    SCALES,
    SIGMA_RANGE,
    Restored,
    RestoreJob,
)

if TYPE_CHECKING:
    from shared.ml.runtime import ModelRuntime

#: The weights shipped with the code (the default weights directory).
SHIPPED_WEIGHTS_DIR = Path(__file__).resolve().parents[2] / "weights"
TASKS: tuple[str, ...] = ("denoise", "artifacts", "superres", "inpaint")
STRENGTH_RANGE = (0.0, 1.0)
MAX_SIDE_RANGE = (16, 16384)
DIP_ITERATIONS_RANGE = (10, 5000)

RestoreFn = Callable[["ModelRuntime", RestoreJob], Restored]


@dataclass(frozen=True)
class Restorer:
    """One (task, model): its weights, what it offers, and the function that runs it."""

    task: str
    name: str
    description: str
    restore: RestoreFn
    weights: tuple[str, ...] = ()  # files in the weights directory that must exist
    # Offers ensemble=true: the network averaged over 8 flips/rotations.
    ensemble: bool = False
    # Weights that `strength` blends toward (ESRGAN's GAN stage); offered when present.
    strength_weights: str | None = None
    # Which per-task option it reads: "sigma" (denoise), "quality" (artifacts), or none.
    level_option: str | None = None
    # Fitted per image for minutes (Deep Image Prior): its own queue, never a default.
    slow: bool = False
    # Loads its network(s) into the runtime's cache, so a worker pays it at start, not a user.
    load: Callable[[ModelRuntime], object] | None = None
    # What a job costs (shared.ml.cost): work units, about a second of a 2-core CPU each (the
    # README's speed table), per megapixel it works on; superres counts its output pixels.
    cost_per_megapixel: float = 1.0
    # It never works on more than this many pixels a side (DeepFill's window around the mask,
    # DIP's fit on a CPU), so its cost stops growing there.
    cost_max_side: int | None = None
    # Fitted per image: the optimisation steps a job takes unless it asks (cost_per_megapixel
    # is for these; `iterations` scales it).
    default_iterations: int | None = None
    # Why it is not offered with a weights directory, None when it is (replaces the plain
    # presence check of `weights`; e.g. converted weights whose source must be the pinned one).
    check: Callable[[Path], str | None] | None = None

    def unavailable_reason(self, weights_dir: Path) -> str | None:
        if self.check is not None:
            return self.check(weights_dir)
        if all((weights_dir / w).is_file() for w in self.weights):
            return None
        return f"missing weights: {', '.join(self.weights)}"

    def available(self, weights_dir: Path) -> bool:
        return self.unavailable_reason(weights_dir) is None

    def offers_strength(self, weights_dir: Path) -> bool:
        return self.strength_weights is not None and (weights_dir / self.strength_weights).is_file()


# The network restorers import torch: each is imported on its first job.


def _mwcnn_denoise(runtime: ModelRuntime, job: RestoreJob) -> Restored:
    from shared.ml.restorers import mwcnn

    return mwcnn.denoise(runtime, job)


def _mwcnn_deblock(runtime: ModelRuntime, job: RestoreJob) -> Restored:
    from shared.ml.restorers import mwcnn

    return mwcnn.deblock(runtime, job)


def _esrgan_upscale(runtime: ModelRuntime, job: RestoreJob) -> Restored:
    from shared.ml.restorers import esrgan

    return esrgan.upscale(runtime, job)


def _realesrgan_upscale(runtime: ModelRuntime, job: RestoreJob) -> Restored:
    from shared.ml.restorers import realesrgan

    return realesrgan.upscale(runtime, job)


def _load_realesrgan(runtime: ModelRuntime) -> object:
    from shared.ml.restorers import realesrgan

    return realesrgan.load_network(runtime)


def _deepfill_inpaint(runtime: ModelRuntime, job: RestoreJob) -> Restored:
    from shared.ml.restorers import deepfill

    return deepfill.inpaint(runtime, job)


def _load_mwcnn_denoise(runtime: ModelRuntime) -> object:
    from shared.ml.restorers import mwcnn

    return mwcnn.load_denoisers(runtime)  # the gray network too: it serves colour photos


def _load_mwcnn_deblock(runtime: ModelRuntime) -> object:
    from shared.ml.restorers import mwcnn

    return mwcnn.load_network(runtime, mwcnn.ARTIFACTS_WEIGHTS)


def _load_esrgan(runtime: ModelRuntime) -> object:
    from shared.ml.restorers import esrgan

    return esrgan.load_network(runtime)


def _load_deepfill(runtime: ModelRuntime) -> object:
    from shared.ml.restorers import deepfill

    return deepfill.load_network(runtime)


def _dip_denoise(runtime: ModelRuntime, job: RestoreJob) -> Restored:
    from shared.ml.restorers import dip

    return dip.denoise(runtime, job)


def _dip_inpaint(runtime: ModelRuntime, job: RestoreJob) -> Restored:
    from shared.ml.restorers import dip

    return dip.inpaint(runtime, job)


_MWCNN = "MWCNN (Liu et al. 2018)"
_DIP = "Deep Image Prior (Ulyanov et al. 2018), fitted per image; slow"

# cost_per_megapixel: MWCNN 0.42 s and NLM 0.30 s at 512² (2 threads, fp32), a colour photo's
# planes 1.4× that since its luminance takes two views; RRDBNet ×4 2.4 s for a 1 MP output;
# DIP ~0.6 s per step at 256² (so 600 steps ≈ 6 minutes). Relative values matter: the budget
# (RESTORA_MAX_JOB_COST) is where an operator says what a job may cost.
_DIP_STEP_PER_MP = 9.2
RESTORERS: tuple[Restorer, ...] = (
    Restorer("denoise", "mwcnn", _MWCNN, _mwcnn_denoise, ("mwcnn-denoise.safetensors",),
             ensemble=True, level_option="sigma", load=_load_mwcnn_denoise,
             cost_per_megapixel=2.2),
    Restorer("denoise", "classic", "non-local means (OpenCV)", classic.denoise,
             level_option="sigma", cost_per_megapixel=1.2),
    Restorer("denoise", "dip", _DIP, _dip_denoise, level_option="sigma", slow=True,
             cost_per_megapixel=_DIP_STEP_PER_MP * 1200, cost_max_side=256,
             default_iterations=1200),
    Restorer("artifacts", "mwcnn", _MWCNN, _mwcnn_deblock, ("mwcnn-artifacts.safetensors",),
             ensemble=True, level_option="quality", load=_load_mwcnn_deblock,
             cost_per_megapixel=1.6),
    Restorer("artifacts", "classic", "non-local means tuned to the JPEG quality (OpenCV)",
             classic.deblock, level_option="quality", cost_per_megapixel=1.2),
    # Real-ESRGAN's official x4plus weights lead where converted (shared/ml/convert_x4plus.py):
    # trained on blur, noise and JPEG, they serve a typical phone photo best (sharp and clean),
    # which is what users come for. The PSNR table (README) still ranks faithful upscaling of a
    # bicubic downscale, where `esrgan` scores higher: pick it for that. On realistic inputs
    # (`benchmarks.quality --task superres-real`) x4plus has the best SSIM, `esrgan` strength=1
    # the best PSNR.
    Restorer("superres", "realesrgan", "Real-ESRGAN x4plus (official weights, BSD-3-Clause)",
             _realesrgan_upscale, (x4plus.WEIGHTS,), ensemble=True, load=_load_realesrgan,
             check=x4plus.unavailable_reason,
             # 23 blocks × 64 features: 8.9× the shipped 4 × 32's multiply-adds (17.9 M against
             # 2.0 M per input pixel), about 7× its time. Measured through registry.restore, one
             # thread, CPU seconds per output megapixel, 2-core bf16 EPYC: bf16 6.0 / 6.4 against
             # 0.84 / 0.85 (128² / 256² inputs: 7.1× / 7.5×); fp32 11.4 / 13.7 against 1.6 / 2.0
             # (6.9× / 6.8×); `benchmarks.speed --threads 1 --cpu-time` gave 6.6–8.6×. So 7 × 2.3.
             cost_per_megapixel=16.0),
    Restorer("superres", "esrgan", "ESRGAN RRDBNet (Wang et al. 2018)", _esrgan_upscale,
             ("esrgan-psnr.safetensors",), ensemble=True,
             strength_weights="esrgan-gan.safetensors", load=_load_esrgan,
             cost_per_megapixel=2.3),
    Restorer("superres", "classic", "bicubic interpolation", classic.upscale,
             cost_per_megapixel=0.02),
    # DeepFill is the default since its weights beat Telea inside the hole (README table).
    Restorer("inpaint", "deepfill", "contextual attention (Yu et al. 2018) over a Telea prefill",
             _deepfill_inpaint, ("deepfill-contextual-attention.safetensors",), ensemble=True,
             load=_load_deepfill, cost_per_megapixel=8.0, cost_max_side=512),
    Restorer("inpaint", "classic", "Telea fast marching (OpenCV)", classic.inpaint,
             cost_per_megapixel=0.5),
    Restorer("inpaint", "dip", _DIP, _dip_inpaint, slow=True,
             cost_per_megapixel=_DIP_STEP_PER_MP * 600, cost_max_side=256,
             default_iterations=600),
)


def restorers(task: str) -> tuple[Restorer, ...]:
    """Every restorer of `task`, installed or not, best first."""
    return tuple(r for r in RESTORERS if r.task == task)


def find(task: str, model: str) -> Restorer | None:
    return next((r for r in RESTORERS if r.task == task and r.name == model), None)


def models_for(task: str, weights_dir: Path) -> list[str]:
    """The models a user may pick for `task` with the weights in `weights_dir`, best first."""
    return [r.name for r in restorers(task) if r.available(weights_dir)]


def default_model(task: str, weights_dir: Path) -> str:
    return models_for(task, weights_dir)[0]


def offers_ensemble(task: str, model: str) -> bool:
    entry = find(task, model)
    return entry is not None and entry.ensemble


def offers_strength(task: str, model: str, weights_dir: Path) -> bool:
    entry = find(task, model)
    return entry is not None and entry.offers_strength(weights_dir)


def installed(task: str, model: str, runtime: ModelRuntime) -> Restorer:
    """The restorer a job asks for, or the reason it cannot run here (a failed job, no retry)."""
    entry = find(task, model)
    if entry is None:
        raise UnprocessableInput(f"{task} has no model {model!r}")
    if not runtime.has_weights(entry.weights):
        raise UnprocessableInput(
            f"model {model!r} is not installed (missing {', '.join(entry.weights)})"
        )
    if entry.check is not None and (why := entry.check(runtime.weights_dir)):
        raise UnprocessableInput(f"model {model!r} is not installed: {why}")
    return entry


def _loadable(entry: Restorer, runtime: ModelRuntime, tasks: tuple[str, ...]) -> bool:
    return (entry.task in tasks and entry.load is not None and runtime.has_weights(entry.weights)
            and not (entry.check and entry.check(runtime.weights_dir)))


def preload(runtime: ModelRuntime, tasks: tuple[str, ...]) -> list[str]:
    """Load the installed networks of `tasks` into the runtime; the (task, model)s loaded."""
    loaded = []
    for entry in RESTORERS:
        if _loadable(entry, runtime, tasks):
            assert entry.load is not None
            entry.load(runtime)
            loaded.append(f"{entry.task}:{entry.name}")
    return loaded


#: The side of the small job each loaded network runs once at worker start (superres: its
#: input, half this). A network's first inference pays one-time costs, thread-pool start and
#: kernel selection among them: after a load, the first 128² denoise took 2.2× a warm one
#: (benchmarks/overhead.py), which the first user would otherwise pay.
WARM_UP_SIDE = 64
#: Then one job this size through the first of these tasks' networks: a process's first run
#: at a size grows its heap, page by page (a first 512² denoise took +70 ms after a 256²
#: warm-up, none after a 512² one, 2-core AMD EPYC), and the heap keeps what it grew to
#: (`allocator.keep_freed_memory`), so every later job up to this size, on any of the
#: process's networks, starts warm. About a second at worker start; superres and inpaint are
#: left out, where a job this size takes far longer.
HEAP_WARM_UP_SIDE = 512
HEAP_WARM_UP_TASKS = ("denoise", "artifacts")


def warm_up_job(task: str, side: int = WARM_UP_SIDE) -> RestoreJob:
    """A small seeded colour job for `task` (with a square hole to fill for inpaint)."""
    import numpy as np

    side = side // 2 if task == "superres" else side
    pixels = np.random.default_rng(0).integers(0, 256, (side, side, 3), dtype=np.uint8)
    mask = None
    if task == "inpaint":
        mask = np.zeros((side, side), dtype=bool)
        mask[side // 4: 3 * side // 4, side // 4: 3 * side // 4] = True
    return RestoreJob(pixels, mask=mask, sigma=25.0, quality=50)


def warm(runtime: ModelRuntime, tasks: tuple[str, ...]) -> list[str]:
    """Run :func:`warm_up_job` through every loaded network of `tasks` (slow ones excepted),
    then one at `HEAP_WARM_UP_SIDE` through the first of `HEAP_WARM_UP_TASKS`'; the (task,
    model)s warmed."""
    warmed = [entry for entry in RESTORERS if _loadable(entry, runtime, tasks) and not entry.slow]
    for entry in warmed:
        entry.restore(runtime, warm_up_job(entry.task))
    heap = next((e for e in warmed if e.task in HEAP_WARM_UP_TASKS), None)
    if heap is not None:
        heap.restore(runtime, warm_up_job(heap.task, HEAP_WARM_UP_SIDE))
    return [f"{entry.task}:{entry.name}" for entry in warmed]


def restore(runtime: ModelRuntime, task: str, model: str, job: RestoreJob) -> Restored:
    """Run `model` on `job` for `task`: the one dispatch the services and benchmarks share."""
    entry = installed(task, model, runtime)
    if job.ensemble and not entry.ensemble:
        raise UnprocessableInput(f"{task} model {model!r} has no ensemble mode")
    return entry.restore(runtime, job)


__all__ = [
    "DIP_ITERATIONS_RANGE",
    "JPEG_QUALITY_RANGE",
    "MAX_SIDE_RANGE",
    "RESTORERS",
    "SCALES",
    "SHIPPED_WEIGHTS_DIR",
    "SIGMA_RANGE",
    "STRENGTH_RANGE",
    "TASKS",
    "Restorer",
    "default_model",
    "find",
    "installed",
    "models_for",
    "offers_ensemble",
    "offers_strength",
    "preload",
    "restore",
    "restorers",
    "warm",
    "warm_up_job",
]
