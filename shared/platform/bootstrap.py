"""One bootstrap for every process: settings → logging, tracing, bus, store → run.

Tests and the embedded launcher pass in-memory fakes (in-process bus, local store) through
the same functions the real services use.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Awaitable, Callable

import torch

from shared.ml.accel import device_name
from shared.ml.inference import inference_lock, set_cpu_threads
from shared.ml.tiling import set_memory_budget
from shared.platform.blobstore import BlobStore, S3BlobStore, make_blob_store
from shared.platform.config import CommonSettings, ModelServiceSettings
from shared.platform.eventbus import EventBus, make_event_bus
from shared.platform.health import serve_health
from shared.platform.logging import configure_logging, get_logger
from shared.platform.metrics import setup_metrics
from shared.platform.telemetry import setup_tracing
from shared.platform.topology import CONSUMER_TIMEOUT_MS

log = get_logger(__name__)


async def connect(settings: CommonSettings) -> tuple[EventBus, BlobStore]:
    bus = make_event_bus(settings.broker_url, settings.data_dir / "queues")
    await bus.start()
    store = make_blob_store(settings)
    if isinstance(store, S3BlobStore):
        await store.ensure_bucket()
    return bus, store


def configure_process(service: str, settings: CommonSettings) -> None:
    configure_logging(settings.log_level, service=service)
    setup_tracing(service)
    setup_metrics(service)


def configure_inference(settings: ModelServiceSettings) -> torch.device:
    if settings.threads > 0:
        set_cpu_threads(settings.threads)
    inference_lock.configure(settings.max_concurrent_inferences)
    set_memory_budget(settings.tile_budget_mb)
    if settings.device == "cpu" or not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device("cuda")


# A stopping process finishes the job in hand (never longer than a job may take); the
# Kubernetes termination grace period and compose's stop_grace_period are set above this.
DRAIN_TIMEOUT_S = CONSUMER_TIMEOUT_MS / 1000


async def shutdown(bus: EventBus, drain_timeout_s: float = DRAIN_TIMEOUT_S) -> None:
    """Stop taking messages, let running handlers finish (store, publish, ack), disconnect."""
    await bus.drain(drain_timeout_s)
    await bus.close()


async def wait_for_shutdown() -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    await stop.wait()


async def run_model_service(
    name: str,
    build: Callable[[EventBus, BlobStore, str], Awaitable[object] | object],
    settings: ModelServiceSettings,
) -> None:
    """`python -m services.<name>`: consume the service's queue until SIGTERM."""
    configure_process(name, settings)
    device = configure_inference(settings)
    bus, store = await connect(settings)
    service = build(bus, store, device_name(device))
    await service.start()  # type: ignore[attr-defined]
    health = await serve_health({"broker": bus.ping, "store": store.ping}, settings.health_port)
    log.info("service_started", service=name, device=device_name(device))
    try:
        await wait_for_shutdown()
    finally:
        await shutdown(bus)
        await health.cleanup()
