"""`task=auto`: which fixes a photo needs, decided from what can be read before any work.

Pure: preprocess, which decodes the upload, passes what it read (the JPEG quality from the
quantisation tables, the noise level from shared.ml.noise_estimation, the size) and runs the
chain chosen here; benchmarks/auto.py measures the choice against the best one made by hand.
The chain is always a valid one (shared.ml.chains): artifacts, then denoise, then superres.
"""

from __future__ import annotations

from dataclasses import dataclass

#: JPEG quality at or below which the file is deblocked. Phone cameras save at 85–95, where
#: the blocking is invisible and deblocking only smooths detail; at 80 and below the 8×8 grid
#: and ringing show and the artifacts networks gain (README: +1.5 dB or more at Q10–40).
ARTIFACTS_MAX_QUALITY = 80
#: Estimated noise σ (0–255 scale) from which the photo is denoised. Clean photos, JPEGs at
#: any quality and ¼ downscales read 0–3 with the estimator (measured on Kodak24); σ 5 noise
#: reads 5.0–5.4, so 3.5 separates them with room on both sides.
DENOISE_MIN_SIGMA = 3.5
#: Long side (pixels) up to which the photo is upscaled ×4: a thumbnail or a web copy, not a
#: camera's photo (which is 2000 px and more). Superres then runs last, on the cleaned image.
SUPERRES_MAX_LONG_SIDE = 640
#: The steps `auto` may choose, in their chain order (inpainting needs a mask: never auto).
AUTO_STEPS: tuple[str, ...] = ("artifacts", "denoise", "superres")
NOTHING_TO_FIX = "nothing to fix"
#: The model an auto step runs where it is installed and the job names none: auto restores what
#: the photo held, so it upscales with the faithful network. Measured on ×¼ copies of 8 Kodak24
#: photos (`python -m benchmarks.auto --images 8 --only ×¼`): esrgan 25.93 dB against 25.03 for
#: the default single fix, where Real-ESRGAN x4plus, the superres default, gets 24.25 by
#: inventing detail. A user who wants that look asks for `task=superres`.
FAITHFUL_MODELS: dict[str, str] = {"superres": "esrgan"}


@dataclass(frozen=True)
class AutoChoice:
    chain: tuple[str, ...]  # empty: nothing to do, the original is the result
    reasons: tuple[str, ...]  # one per step, or NOTHING_TO_FIX

    def as_details(self) -> dict[str, list[str]]:
        return {"chain": list(self.chain), "reasons": list(self.reasons)}


def choose(jpeg_quality: int | None, sigma: float | None, size: tuple[int, int]) -> AutoChoice:
    """The chain for a photo: `jpeg_quality` None when it is not a JPEG, `sigma` None when the
    noise could not be estimated (too small), `size` (width, height)."""
    chain: list[str] = []
    reasons: list[str] = []
    if jpeg_quality is not None and jpeg_quality <= ARTIFACTS_MAX_QUALITY:
        chain.append("artifacts")
        reasons.append(f"JPEG quality {jpeg_quality} → artifacts")
    if sigma is not None and sigma >= DENOISE_MIN_SIGMA:
        chain.append("denoise")
        reasons.append(f"σ≈{sigma:.0f} → denoise")
    width, height = size
    if max(width, height) <= SUPERRES_MAX_LONG_SIDE:
        chain.append("superres")
        reasons.append(f"{width}×{height} px → superres")
    return AutoChoice(tuple(chain), tuple(reasons) or (NOTHING_TO_FIX,))


def models_in_preference(step: str, available: list[str]) -> list[str]:
    """`available` (a task's installed models, best first) with auto's choice for `step`
    first, where it is installed."""
    preferred = FAITHFUL_MODELS.get(step)
    if preferred not in available:
        return available
    return [preferred, *(m for m in available if m != preferred)]


def possible_steps(size: tuple[int, int]) -> tuple[str, ...]:
    """What `auto` may choose for a photo of `size` (the gateway budgets for all of them)."""
    small = max(size) <= SUPERRES_MAX_LONG_SIDE
    return tuple(s for s in AUTO_STEPS if s != "superres" or small)
