"""Superres service adapter: task `superres` on the shared model runtime."""

from __future__ import annotations

from services.superres.core import upscale
from shared.ml.catalog import weights_sha256
from shared.platform import topology
from shared.platform.blobstore import BlobStore
from shared.platform.config import ModelServiceSettings, load_settings
from shared.platform.eventbus import EventBus
from shared.platform.model_service import ModelService, RestoreInput, RestoreOutput, Restorer


def restorer(weights_override: str = "") -> Restorer:
    def restore(job: RestoreInput) -> RestoreOutput:
        options = job.options
        pixels = upscale(
            job.pixels,
            options.scale,
            options.model,
            options.strength,
            weights_override=weights_override,
            on_progress=job.on_progress,
            should_cancel=job.should_cancel,
            ensemble=options.ensemble,
        )
        details = {
            "scale": options.scale,
            "strength": options.strength,
            "ensemble": options.ensemble,
        }
        return RestoreOutput(
            pixels,
            options.model,
            {**details, "weights_sha256": weights_sha256("superres", options.model)},
        )

    return restore


def build(bus: EventBus, store: BlobStore, device: str = "cpu") -> ModelService:
    settings = load_settings(ModelServiceSettings)
    return ModelService(
        "superres", topology.SUPERRES, restorer(settings.esrgan_weights), bus, store, device
    )
