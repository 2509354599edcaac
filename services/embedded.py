"""`make run`: the whole service in one process for one machine.

Gateway, preprocess and the three model services share one event loop, an in-process
event bus and a local-disk store by default; with RESTORA_BROKER_URL and RESTORA_S3_*
set, the same command uses RabbitMQ and S3 instead. This module is the composition root:
it is the only code that imports every service (they never import each other).
"""

from __future__ import annotations

import asyncio
import os
import secrets
from dataclasses import replace

from services.denoise import service as denoise_service
from services.dip import service as dip_service
from services.gateway.app import create_app, running_gateway
from services.inpaint import service as inpaint_service
from services.preprocess.service import PreprocessService
from services.superres import service as superres_service
from shared.ml import registry
from shared.ml.runtime import ModelRuntime
from shared.platform.blobstore import BlobStore
from shared.platform.bootstrap import (
    build_runtime,
    configure_process,
    connect,
    freeze_startup_objects,
    shutdown,
    wait_for_shutdown,
    warm_up,
)
from shared.platform.config import EmbeddedSettings, PreprocessSettings, load_settings
from shared.platform.eventbus import EventBus
from shared.platform.logging import get_logger

log = get_logger(__name__)


async def start_workers(
    bus: EventBus, store: BlobStore, preprocess_settings: PreprocessSettings, runtime: ModelRuntime
) -> list[object]:
    """Everything behind the gateway, consuming from `bus`; the model services share `runtime`."""
    services: list[object] = [PreprocessService(bus, store, preprocess_settings)]
    for module in (denoise_service, superres_service, inpaint_service, dip_service):
        model_service = module.build(bus, store, runtime)
        model_service.heartbeat_interval_s = preprocess_settings.heartbeat_interval_s
        services.append(model_service)
    for service in services:
        await service.start()  # type: ignore[attr-defined]
    return services


async def main() -> None:
    settings = load_settings(EmbeddedSettings)
    # As Jupyter does: without a configured admin token, one for this run, in the link below.
    settings = replace(settings, admin_token=settings.admin_token or secrets.token_urlsafe(24))
    configure_process("restora", settings)
    # The services share the cores and one runtime: one inference at a time, using all of them.
    runtime = build_runtime(
        replace(settings, threads=settings.threads or os.cpu_count() or 1,
                max_concurrent_inferences=1),
        settings.weights_dir,
    )
    await warm_up(runtime, registry.TASKS)
    bus, store = await connect(settings)
    await start_workers(bus, store, load_settings(PreprocessSettings), runtime)
    app = create_app(bus, store, settings)
    async with running_gateway(app, settings.host, settings.port):
        log.info("restora_ready", url=f"http://{settings.host}:{settings.port}",
                 frozen_objects=freeze_startup_objects())
        url = f"http://{settings.host}:{settings.port}"
        print(f"Restora is running at {url}  (Ctrl-C stops)")
        print(f"Dashboard (operators): {url}/dashboard?token={settings.admin_token}", flush=True)
        try:
            await wait_for_shutdown()
        finally:
            # Ctrl-C on a laptop: finish the job in hand, but never wait long.
            await shutdown(bus, drain_timeout_s=30)


if __name__ == "__main__":
    asyncio.run(main())
