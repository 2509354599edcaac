"""The inpaint service: consume its queue, run the registry's restorer on the model runtime."""

from __future__ import annotations

from shared.ml.runtime import ModelRuntime
from shared.platform import topology
from shared.platform.blobstore import BlobStore
from shared.platform.eventbus import EventBus
from shared.platform.model_service import ModelService, serve_with_registry


def build(bus: EventBus, store: BlobStore, runtime: ModelRuntime) -> ModelService:
    return serve_with_registry("inpaint", topology.INPAINT, bus, store, runtime)
