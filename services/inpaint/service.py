"""Inpaint service adapter: task `inpaint` on the shared model runtime."""

from __future__ import annotations

from services.inpaint.core import inpaint
from shared.errors import UnprocessableInput
from shared.ml.catalog import weights_sha256
from shared.platform import topology
from shared.platform.blobstore import BlobStore
from shared.platform.eventbus import EventBus
from shared.platform.model_service import ModelService, RestoreInput, RestoreOutput


def restore(job: RestoreInput) -> RestoreOutput:
    if job.mask is None:
        raise UnprocessableInput("inpaint needs a mask")
    options = job.options
    filled = inpaint(job.pixels, job.mask, options.model, job.on_progress, job.should_cancel,
                     ensemble=options.ensemble)
    details = {"ensemble": options.ensemble,
               "weights_sha256": weights_sha256("inpaint", options.model)}
    return RestoreOutput(filled, options.model, details)


def build(bus: EventBus, store: BlobStore, device: str = "cpu") -> ModelService:
    return ModelService("inpaint", topology.INPAINT, restore, bus, store, device)
