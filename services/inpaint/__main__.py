"""`python -m services.inpaint`: the inpaint service alone (compose, Kubernetes)."""

import asyncio

from services.inpaint.service import build
from shared.platform.bootstrap import run_model_service
from shared.platform.config import ModelServiceSettings, load_settings

if __name__ == "__main__":
    asyncio.run(run_model_service("inpaint", build, load_settings(ModelServiceSettings)))
