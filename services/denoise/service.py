"""Denoise service adapter: tasks `denoise` and `artifacts` on the shared model runtime."""

from __future__ import annotations

from services.denoise.core import denoise, remove_artifacts, resolve_quality, resolve_sigma
from services.denoise.networks import denoiser_for
from shared.ml.catalog import weights_sha256
from shared.ml.hashing import cached_file_sha256
from shared.platform import topology
from shared.platform.blobstore import BlobStore
from shared.platform.eventbus import EventBus
from shared.platform.model_service import ModelService, RestoreInput, RestoreOutput


def _weights_sha256(job: RestoreInput) -> str | None:
    """The weights the job runs with: a gray photo may go through the gray denoiser."""
    if job.task == "denoise" and job.options.model == "mwcnn":
        path = denoiser_for(job.pixels)
        return cached_file_sha256(path) if path.is_file() else None
    return weights_sha256(job.task, job.options.model)


def restore(job: RestoreInput) -> RestoreOutput:
    model = job.options.model
    hooks = {
        "on_progress": job.on_progress,
        "should_cancel": job.should_cancel,
        "ensemble": job.options.ensemble,
    }
    details: dict[str, object] = {
        "weights_sha256": _weights_sha256(job),
        "ensemble": job.options.ensemble,
    }
    if job.task == "artifacts":
        quality = resolve_quality(job.options.quality)
        pixels = remove_artifacts(job.pixels, quality, model, **hooks)
        return RestoreOutput(pixels, model, {**details, "quality": quality})
    sigma = resolve_sigma(job.pixels, job.options.sigma)
    pixels = denoise(job.pixels, sigma, model, **hooks)
    return RestoreOutput(pixels, model, {**details, "sigma": round(sigma, 2)})


def build(bus: EventBus, store: BlobStore, device: str = "cpu") -> ModelService:
    return ModelService("denoise", topology.DENOISE, restore, bus, store, device)
