"""`python -m services.superres`: the superres service alone (compose, Kubernetes)."""

import asyncio

from services.superres.service import build
from shared.platform.bootstrap import run_model_service
from shared.platform.config import ModelServiceSettings, load_settings

if __name__ == "__main__":
    asyncio.run(run_model_service("superres", build, load_settings(ModelServiceSettings)))
