"""`python -m services.dip`: the Deep Image Prior service alone (compose, Kubernetes)."""

import asyncio

from services.dip.service import build
from shared.platform.bootstrap import run_model_service
from shared.platform.config import ModelServiceSettings, load_settings

if __name__ == "__main__":
    asyncio.run(run_model_service("dip", build, load_settings(ModelServiceSettings)))
