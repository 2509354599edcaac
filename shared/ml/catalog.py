"""Which models serve which task, the option ranges the API accepts, and the defaults.

Defined once here: the gateway validates against it and publishes it in the OpenAPI
document; each model service dispatches on the same names. A network is offered only when
its shipped weights are present, so a fresh checkout always has a working default; the first
available model of a task is its default, so the order says which measured best.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from shared.errors import UnprocessableInput
from shared.ml.hashing import cached_file_sha256

SCALES: tuple[int, ...] = (4,)
JPEG_QUALITY_RANGE = (10, 90)  # what the artifact-removal model is trained on and the API serves
SIGMA_RANGE = (0.0, 75.0)  # what the denoising model is trained on and the API serves
STRENGTH_RANGE = (0.0, 1.0)
MAX_SIDE_RANGE = (16, 16384)
DIP_ITERATIONS_RANGE = (10, 5000)
DEFAULT_WEIGHTS_DIR = Path(__file__).resolve().parents[2] / "weights"


@dataclass(frozen=True)
class ModelEntry:
    name: str
    description: str
    weights: tuple[str, ...] = ()  # files under weights/ that must exist
    # Offers ensemble=true: the network averaged over 8 flips/rotations (shared.ml.inference).
    ensemble: bool = False
    # Weights that `strength` blends toward (ESRGAN's GAN stage); offered when present.
    strength_weights: str | None = None

    def available(self, weights_dir: Path = DEFAULT_WEIGHTS_DIR) -> bool:
        return all((weights_dir / w).is_file() for w in self.weights)


_CLASSIC_DENOISE = ModelEntry("classic", "non-local means (OpenCV)")
# Deep Image Prior needs no weights (fitted per image) but is slow: listed last, never a default.
_DIP = ModelEntry("dip", "Deep Image Prior (Ulyanov et al. 2018), fitted per image; slow")
CATALOG: dict[str, tuple[ModelEntry, ...]] = {
    "denoise": (
        ModelEntry("mwcnn", "MWCNN (Liu et al. 2018)", ("mwcnn-denoise.safetensors",), True),
        _CLASSIC_DENOISE,
        _DIP,
    ),
    "artifacts": (
        ModelEntry("mwcnn", "MWCNN (Liu et al. 2018)", ("mwcnn-artifacts.safetensors",), True),
        ModelEntry("classic", "non-local means tuned to the JPEG quality (OpenCV)"),
    ),
    "superres": (
        ModelEntry(
            "esrgan",
            "ESRGAN RRDBNet (Wang et al. 2018)",
            ("esrgan-psnr.safetensors",),
            ensemble=True,
            strength_weights="esrgan-gan.safetensors",
        ),
        ModelEntry("classic", "bicubic interpolation"),
    ),
    # DeepFill is the default since its weights beat Telea inside the hole (README table).
    "inpaint": (
        ModelEntry(
            "deepfill",
            "contextual attention (Yu et al. 2018) over a Telea prefill",
            ("deepfill-contextual-attention.safetensors",),
            ensemble=True,
        ),
        ModelEntry("classic", "Telea fast marching (OpenCV)"),
        _DIP,
    ),
}


def weights_sha256(task: str, model: str, weights_dir: Path = DEFAULT_WEIGHTS_DIR) -> str | None:
    """The sha256 of the weights a model runs with (job records name it); None for classic."""
    entry = next((m for m in CATALOG[task] if m.name == model), None)
    if entry is None or not entry.weights:
        return None
    path = weights_dir / entry.weights[0]
    return cached_file_sha256(path) if path.is_file() else None


def models_for(task: str, weights_dir: Path = DEFAULT_WEIGHTS_DIR) -> list[str]:
    """The models a user may pick for `task`, best first."""
    return [m.name for m in CATALOG[task] if m.available(weights_dir)]


def offers_ensemble(task: str, model: str) -> bool:
    return any(m.name == model and m.ensemble for m in CATALOG[task])


def require_ensemble_offered(task: str, model: str, ensemble: bool) -> None:
    """A model service's own check (the gateway rejects it earlier, with a 400)."""
    if ensemble and not offers_ensemble(task, model):
        raise UnprocessableInput(f"{task} model {model!r} has no ensemble mode")


def offers_strength(task: str, model: str, weights_dir: Path = DEFAULT_WEIGHTS_DIR) -> bool:
    """True when `model` has the weights its `strength` option blends toward."""
    return any(
        m.name == model and m.strength_weights and (weights_dir / m.strength_weights).is_file()
        for m in CATALOG[task]
    )


def default_model(task: str, weights_dir: Path = DEFAULT_WEIGHTS_DIR) -> str:
    return models_for(task, weights_dir)[0]


__all__ = [
    "CATALOG",
    "DIP_ITERATIONS_RANGE",
    "JPEG_QUALITY_RANGE",
    "MAX_SIDE_RANGE",
    "SCALES",
    "SIGMA_RANGE",
    "STRENGTH_RANGE",
    "default_model",
    "models_for",
    "offers_ensemble",
    "offers_strength",
    "require_ensemble_offered",
]
