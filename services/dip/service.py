"""The DIP service: `model=dip` jobs of any task it serves, on their own queue."""

from __future__ import annotations

from shared.ml.inference import InferenceGate
from shared.ml.runtime import ModelRuntime
from shared.platform import topology
from shared.platform.blobstore import BlobStore
from shared.platform.eventbus import EventBus
from shared.platform.model_service import ModelService, serve_with_registry


def build(bus: EventBus, store: BlobStore, runtime: ModelRuntime) -> ModelService:
    # Its own gate: in the embedded mode a long DIP fit shares the cores with the fast networks
    # instead of holding their one inference slot for minutes.
    return serve_with_registry("dip", topology.DIP, bus, store, runtime, gate=InferenceGate(1))
