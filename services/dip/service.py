"""DIP service adapter: `model=dip` jobs of any task it serves, on their own queue."""

from __future__ import annotations

from services.dip.core import dip_restore
from shared.ml.inference import InferenceGate
from shared.platform import topology
from shared.platform.blobstore import BlobStore
from shared.platform.eventbus import EventBus
from shared.platform.model_service import ModelService, RestoreInput, RestoreOutput

# Its own gate: in the embedded mode a long DIP fit shares the cores with the fast networks
# instead of holding their one inference slot for minutes.
dip_gate = InferenceGate(1)


def restore(job: RestoreInput) -> RestoreOutput:
    pixels = dip_restore(
        job.task,
        job.pixels,
        job.mask,
        sigma=job.options.sigma,
        iterations=job.options.iterations,
        on_progress=job.on_progress,
        should_cancel=job.should_cancel,
    )
    return RestoreOutput(pixels, "dip", {"iterations": job.options.iterations})


def build(bus: EventBus, store: BlobStore, device: str = "cpu") -> ModelService:
    return ModelService("dip", topology.DIP, restore, bus, store, device, gate=dip_gate)
