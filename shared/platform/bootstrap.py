"""One bootstrap for every process: settings → logging, tracing, bus, store → run.

Tests and the embedded launcher pass in-memory fakes (in-process bus, local store) through
the same functions the real services use.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import signal
import time
from collections.abc import Callable
from pathlib import Path

from shared.ml import imaging, registry
from shared.ml.allocator import keep_freed_memory
from shared.ml.inference import InferenceGate
from shared.ml.runtime import ModelRuntime
from shared.platform import topology
from shared.platform.blobstore import BlobStore, S3BlobStore, make_blob_store
from shared.platform.config import CommonSettings, ModelRuntimeSettings, ModelServiceSettings
from shared.platform.eventbus import EventBus, make_event_bus
from shared.platform.health import serve_health
from shared.platform.logging import configure_logging, get_logger
from shared.platform.metrics import setup_metrics
from shared.platform.model_service import ModelService
from shared.platform.telemetry import setup_tracing
from shared.platform.topology import CONSUMER_TIMEOUT_MS

log = get_logger(__name__)


async def connect(settings: CommonSettings) -> tuple[EventBus, BlobStore]:
    bus = make_event_bus(
        settings.broker_url, settings.data_dir / "queues", settings.publish_timeout_s
    )
    await bus.start()
    store = make_blob_store(settings)
    if isinstance(store, S3BlobStore):
        await store.ensure_bucket()
    return bus, store


def configure_process(service: str, settings: CommonSettings) -> None:
    # The allocator first: glibc gives each thread that allocates an arena of its own, and
    # its arena limit only binds arenas made later. Tracing and metrics set up here already
    # run threads (two arenas more); tuned after them, the inference threads were handed
    # those arenas in turn, which map and unmap their heaps: a 512² colour denoise took
    # ~35,000 page faults (+70-300 ms of system time) every other job. `build_runtime`
    # tunes it again, for processes that make a runtime without this.
    if isinstance(settings, ModelRuntimeSettings) and settings.reuse_memory:
        keep_freed_memory()
    configure_logging(settings.log_level, service=service)
    setup_tracing(service)
    setup_metrics(service)


def build_runtime(settings: ModelRuntimeSettings, weights_dir: Path) -> ModelRuntime:
    """The one model runtime of a process, from its settings (RESTORA_DEVICE, _WEIGHTS_DIR...)."""
    if settings.reuse_memory:
        log.info("freed_memory_reused", applied=keep_freed_memory())
    overrides = {}
    if settings.esrgan_weights:
        # The operator's checkpoint is read in place of the shipped PSNR weights.
        psnr_weights = registry.find("superres", "esrgan").weights[0]  # type: ignore[union-attr]
        overrides[psnr_weights] = Path(settings.esrgan_weights)
    return ModelRuntime.create(
        weights_dir,
        settings.device,
        threads=settings.threads,
        bf16=settings.bf16,
        backend=settings.backend,
        cache_dir=Path(settings.cache_dir) if settings.cache_dir else None,
        tile_budget_mb=settings.tile_budget_mb,
        gate=InferenceGate(settings.max_concurrent_inferences),
        weights_overrides=overrides,
    )


async def warm_up(runtime: ModelRuntime, tasks: tuple[str, ...]) -> None:
    """Load the networks of `tasks` and run a small job through each before taking jobs: the
    first user waits for nothing."""
    started = time.perf_counter()
    loaded = await asyncio.to_thread(registry.preload, runtime, tasks)
    log.info("networks_loaded", networks=loaded, seconds=round(time.perf_counter() - started, 2))
    started = time.perf_counter()
    warmed = await asyncio.to_thread(registry.warm, runtime, tasks)
    log.info("networks_warmed", networks=warmed, seconds=round(time.perf_counter() - started, 2))
    # On the threads that decode inputs and encode results later (asyncio's default executor).
    log.info("codecs_warmed", formats=await asyncio.to_thread(imaging.warm_codecs))


def freeze_startup_objects() -> int:
    """Move every object alive now (modules, networks, clients: hundreds of thousands) out of
    the garbage collector's sight, and return how many. A full collection otherwise walks
    them all, holding the GIL, in whichever thread allocated last: on a model service, often
    the event loop's while a job infers on another, whose every operation then waits for the
    GIL (the gateway and preprocess hold ~118,000 without torch: a full collection took
    50 ms there, mid-request). What is frozen is never freed, so this is for what lives as
    long as the process: every process calls it once it is up."""
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()


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
    build: Callable[[EventBus, BlobStore, ModelRuntime], ModelService],
    settings: ModelServiceSettings,
) -> None:
    """`python -m services.<name>`: consume the service's queue until SIGTERM."""
    configure_process(name, settings)
    runtime = build_runtime(settings, settings.weights_dir)
    bus, store = await connect(settings)
    service = build(bus, store, runtime)
    service.heartbeat_interval_s = settings.heartbeat_interval_s
    await warm_up(runtime, topology.tasks_served_by(service.queue))
    log.info("startup_objects_frozen", objects=freeze_startup_objects())
    await service.start()
    health = await serve_health({"broker": bus.ping, "store": store.ping}, settings.health_port)
    log.info("service_started", service=name, device=runtime.device_name)
    try:
        await wait_for_shutdown()
    finally:
        await shutdown(bus)
        await health.cleanup()
