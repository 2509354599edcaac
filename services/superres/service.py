"""Superres service adapter: task `superres` on the shared model runtime."""

from __future__ import annotations

from services.superres.core import upscale
from shared import topology
from shared.blobstore import BlobStore
from shared.eventbus import EventBus
from shared.model_service import ModelService, RestoreInput, RestoreOutput


def restore(job: RestoreInput) -> RestoreOutput:
    pixels = upscale(job.pixels, job.options.scale, job.options.model)
    return RestoreOutput(pixels, job.options.model, {"scale": job.options.scale})


def build(bus: EventBus, store: BlobStore, device: str = "cpu") -> ModelService:
    return ModelService("superres", topology.SUPERRES, restore, bus, store, device)
