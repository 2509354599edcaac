"""Inpaint service adapter: task `inpaint` on the shared model runtime."""

from __future__ import annotations

from services.inpaint.core import inpaint
from shared import topology
from shared.blobstore import BlobStore
from shared.errors import UnprocessableInput
from shared.eventbus import EventBus
from shared.model_service import ModelService, RestoreInput, RestoreOutput


def restore(job: RestoreInput) -> RestoreOutput:
    if job.mask is None:
        raise UnprocessableInput("inpaint needs a mask")
    filled = inpaint(job.pixels, job.mask, job.options.model, job.on_progress, job.should_cancel)
    return RestoreOutput(filled, job.options.model)


def build(bus: EventBus, store: BlobStore, device: str = "cpu") -> ModelService:
    return ModelService("inpaint", topology.INPAINT, restore, bus, store, device)
