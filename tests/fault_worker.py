"""`python -m tests.fault_worker`: a real model-service process whose inference is slow and
harmless, for the fault tests to kill mid-job.

It is the production bootstrap (`run_model_service`: settings, bus, store, health port,
heartbeats, clean SIGTERM) serving the DIP queue (`model=dip` jobs) with a restorer that
takes FAULT_WORKER_STEPS × FAULT_WORKER_STEP_S seconds, reporting progress each step.
"""

from __future__ import annotations

import asyncio
import os
import time

from shared.ml.runtime import ModelRuntime
from shared.ml.tiling import Cancelled
from shared.platform import topology
from shared.platform.blobstore import BlobStore
from shared.platform.bootstrap import run_model_service
from shared.platform.config import ModelServiceSettings, load_settings
from shared.platform.eventbus import EventBus
from shared.platform.model_service import ModelService, RestoreInput, RestoreOutput


def slow_restorer(job: RestoreInput) -> RestoreOutput:
    steps = int(os.environ.get("FAULT_WORKER_STEPS", "20"))
    step_s = float(os.environ.get("FAULT_WORKER_STEP_S", "0.2"))
    for step in range(steps):
        if job.should_cancel():
            raise Cancelled()
        time.sleep(step_s)
        job.on_progress((step + 1) / steps)
    return RestoreOutput(job.pixels, "fault-worker")


def build(bus: EventBus, store: BlobStore, runtime: ModelRuntime) -> ModelService:
    return ModelService("dip", topology.DIP, slow_restorer, bus, store, runtime.device_name)


if __name__ == "__main__":
    asyncio.run(run_model_service("dip", build, load_settings(ModelServiceSettings)))
