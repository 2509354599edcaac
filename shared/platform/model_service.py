"""The thin adapter every model service is: consume → load → pure function → store → publish.

A service supplies one `Restorer` (a pure function of arrays); everything around it—
loading the normalised input, running inference off the event loop so AMQP heartbeats keep
flowing, progress, the job's heartbeat and cancellation, re-attaching alpha/ICC/orientation,
storing the result under a deterministic key (a redelivery overwrites, never duplicates),
reporting `done` with timings—lives here once.
"""

from __future__ import annotations

import asyncio
import dataclasses
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from shared.errors import UnprocessableInput
from shared.ml import imaging, registry
from shared.ml.inference import InferenceGate, use_cpu_threads_here
from shared.ml.restorers.common import RestoreJob
from shared.ml.runtime import ModelRuntime
from shared.ml.tiling import Cancelled
from shared.platform import metrics, telemetry, topology
from shared.platform.aio import forget, settle
from shared.platform.blobstore import BlobNotFound, BlobStore
from shared.platform.eventbus import Delivery, EventBus, Reject
from shared.platform.jobs import (
    JobKeys,
    JobLog,
    StatusReporter,
    heartbeats,
    store_result,
    worker_name,
)
from shared.platform.logging import get_logger
from shared.platform.messages import JobOptions, RestoreRequested
from shared.platform.topology import QueueSpec

log = get_logger(__name__)

# How often a running job looks for a cancellation and may report progress (seconds).
CANCEL_POLL_S = 1.0
PROGRESS_EVERY_S = 1.0
# How often a running job's heartbeat is written (RESTORA_HEARTBEAT_INTERVAL_S).
HEARTBEAT_EVERY_S = 5.0


@dataclass(frozen=True)
class RestoreInput:
    """What a restorer gets: arrays and the user's options, nothing about queues or stores."""

    task: str
    options: JobOptions
    pixels: np.ndarray  # uint8 HxW or HxWx3
    mask: np.ndarray | None  # bool HxW (inpaint)
    source_format: str
    on_progress: Callable[[float], None] = lambda _fraction: None
    should_cancel: Callable[[], bool] = lambda: False


@dataclass(frozen=True)
class RestoreOutput:
    pixels: np.ndarray
    model: str  # what actually ran, e.g. "mwcnn" or "classic:nlm"
    details: dict[str, Any] = field(default_factory=dict)


Restorer = Callable[[RestoreInput], RestoreOutput]


def registry_restorer(runtime: ModelRuntime) -> Restorer:
    """Jobs run by the registry's restorer for their (task, model), on `runtime`."""

    def restore(job: RestoreInput) -> RestoreOutput:
        options = job.options
        restored = registry.restore(
            runtime,
            job.task,
            options.model,
            RestoreJob(
                pixels=job.pixels,
                mask=job.mask,
                sigma=options.sigma,
                quality=options.quality,
                scale=options.scale,
                strength=options.strength,
                iterations=options.iterations,
                ensemble=options.ensemble,
                on_progress=job.on_progress,
                should_cancel=job.should_cancel,
            ),
        )
        details = {"ensemble": options.ensemble, **restored.details}
        return RestoreOutput(restored.pixels, options.model, details)

    return restore


# A job's pixels, mask, alpha and ICC profile, as `ModelService._load` reads them.
_Inputs = tuple[np.ndarray, np.ndarray | None, np.ndarray | None, bytes | None]


@dataclass
class _Job:
    """Per-delivery state shared between the event loop and the inference thread."""

    request: RestoreRequested
    cancelled: threading.Event = field(default_factory=threading.Event)
    # The first progress is told PROGRESS_EVERY_S into the job, not at once: a job that ends
    # sooner shows no bar, and spends no store write and broadcast on one while it infers.
    last_progress_at: float = field(default_factory=time.monotonic)
    progress_told: bool = False
    told_running: asyncio.Task[Any] | None = None  # the "running" status, told as work starts

    async def running_told(self) -> None:
        """Wait until "running" is in the job's log (its error, if telling it failed)."""
        if self.told_running is not None:
            await self.told_running


class ModelService:
    def __init__(
        self,
        name: str,
        queue: QueueSpec,
        restorer: Restorer,
        bus: EventBus,
        store: BlobStore,
        device: str = "cpu",
        gate: InferenceGate | None = None,
        heartbeat_interval_s: float = HEARTBEAT_EVERY_S,
    ) -> None:
        self.name = name
        self.gate = gate or InferenceGate(1)
        self.heartbeat_interval_s = heartbeat_interval_s
        self.worker = worker_name(name)
        self.queue = queue
        self.restorer = restorer
        self.bus = bus
        self.store = store
        self.device = device
        self.jobs = JobLog(store)
        self.reporter = StatusReporter(self.jobs, bus, stage=name)

    async def start(self) -> None:
        await self.bus.consume(self.queue, metrics.instrument_handler(self.name, self.handle))

    async def handle(self, delivery: Delivery) -> None:
        request = delivery.message
        if not isinstance(request, RestoreRequested):
            raise Reject(f"{self.name} cannot handle {type(request).__name__}")
        # The inputs are fetched while the job is looked up: one wait, not two.
        inputs = asyncio.create_task(self._load(request))
        try:
            end = await self.jobs.end(request.job_id)
            if end.is_over:
                log.info("skip_job", job_id=request.job_id, state=end.final_state or "deleted")
                return  # cancelled, deleted or already done: ack, never retry
            await self._run(delivery, _Job(request), inputs)
        finally:
            forget(inputs)

    async def _run(self, delivery: Delivery, job: _Job, inputs: asyncio.Task[_Inputs]) -> None:
        request = job.request
        # Told while the job starts, not before it: `_process` waits for it once the network
        # has run, so it is in the log before any later status of the job.
        job.told_running = asyncio.create_task(self.reporter.report(
            request.job_id,
            "running",
            at=time.time(),  # now, before the work it announces: the record's waits use it
            details={"device": self.device, **_step_details(request)},
        ))
        try:
            await self._work(delivery, job, inputs)
        finally:
            await settle(job.told_running)

    async def _work(self, delivery: Delivery, job: _Job, inputs: asyncio.Task[_Inputs]) -> None:
        request = job.request
        # "running" is told as the work starts: a job done within a second writes no beat.
        async with heartbeats(
            self.jobs, request.job_id, self.worker, self.heartbeat_interval_s, PROGRESS_EVERY_S
        ):
            try:
                await self._process(job, inputs)
            except UnprocessableInput as exc:
                await self.reporter.report(
                    request.job_id, "failed", error=_step_named(request, str(exc))
                )
            except Cancelled:
                log.info("job_cancelled", job_id=request.job_id)
            except Exception as exc:
                reason = _step_named(
                    request, f"{self.name} failed (attempt {delivery.attempt}): {exc!r}"
                )
                final = delivery.is_last_attempt
                await self.reporter.report(
                    request.job_id, "failed" if final else "running", error=reason
                )
                raise

    async def _process(self, job: _Job, inputs: asyncio.Task[_Inputs]) -> None:
        request, keys = job.request, JobKeys(job.request.job_id)
        timings: dict[str, float] = {}
        started = time.time()
        pixels, mask, alpha, icc = await inputs
        timings["load_s"] = time.time() - started  # what was left of it once the job started

        loop = asyncio.get_running_loop()
        options = request.options.for_step(request.task)
        restore_input = RestoreInput(
            task=request.task,
            options=options,
            pixels=pixels,
            mask=mask,
            source_format=request.source_format,
            on_progress=lambda f: self._progress_threadsafe(loop, job, f),
            should_cancel=job.cancelled.is_set,
        )
        watcher = asyncio.create_task(self._watch_for_cancel(job))
        t0 = time.time()
        try:
            with telemetry.tracer().start_as_current_span(
                f"{self.name} inference",
                attributes={
                    "restora.task": request.task,
                    "restora.model": options.model,
                    "restora.step": request.step,
                    "restora.megapixels": pixels.shape[0] * pixels.shape[1] / 1e6,
                    "restora.device": self.device,
                },
            ):
                output = await asyncio.to_thread(
                    _run_exclusive, self.gate, self.restorer, restore_input
                )
        finally:
            watcher.cancel()
        timings["inference_s"] = time.time() - t0
        await job.running_told()
        if not request.is_last_step:
            await self._next_step(job, output, timings)
            return

        t0 = time.time()
        if alpha is not None and alpha.shape != output.pixels.shape[:2]:
            alpha = imaging.resize_alpha(alpha, output.pixels.shape[1::-1])
        fmt = request.options.format
        (encoded, renditions), cancelled = await asyncio.gather(
            asyncio.to_thread(
                imaging.encode_result_with_renditions,
                output.pixels,
                alpha=alpha,
                icc_profile=icc,
                fmt=fmt,  # type: ignore[arg-type]
                orientation=request.orientation_after,
            ),
            self._cancelled(request.job_id),  # read while encoding: one wait, not two
        )
        timings["encode_s"] = time.time() - t0
        if cancelled or job.cancelled.is_set():
            raise Cancelled()  # deleted while we worked: store nothing
        t0 = time.time()
        result_key = keys.result(fmt)
        await store_result(self.store, keys, fmt, encoded, renditions)
        timings["store_s"] = time.time() - t0
        metrics.observe_stages(timings, task=request.task)
        height, width = output.pixels.shape[:2]
        await self.reporter.report(
            request.job_id,
            "done",
            result_key=result_key,
            details={
                "model": output.model,
                "timings": {_timings_key(request, self.name): timings},
                "output": {"width": width, "height": height, "bytes": len(encoded)},
                **_step_details(request, output.model),
                **output.details,
            },
        )

    async def _next_step(self, job: _Job, output: RestoreOutput, timings: dict[str, float]) -> None:
        """A chain's step before the last: store the output as the next step's input (PNG, in
        the stored frame: alpha, ICC and orientation wait for the last step) and publish it."""
        request = job.request
        t0 = time.time()
        encoded, cancelled = await asyncio.gather(
            asyncio.to_thread(imaging.encode_png_array, output.pixels),
            self._cancelled(request.job_id),
        )
        timings["encode_s"] = time.time() - t0
        if cancelled or job.cancelled.is_set():
            raise Cancelled()
        t0 = time.time()
        key = JobKeys(request.job_id).step_output(request.step, request.task)
        await self.store.put(key, encoded, "image/png")
        timings["store_s"] = time.time() - t0
        metrics.observe_stages(timings, task=request.task)
        await self.reporter.report(
            request.job_id,
            "running",
            progress=round((request.step + 1) / len(request.steps), 4),
            details={
                "timings": {request.task: timings},
                **_step_details(request, output.model),
            },
        )
        following = request.steps[request.step + 1]
        next_request = dataclasses.replace(
            request, task=following, step=request.step + 1, input_key=key, mask_key=None
        )
        queue = topology.queue_for_task(following, request.options.for_step(following).model)
        await self.bus.publish(queue, next_request)

    async def _load(self, request: RestoreRequested) -> _Inputs:
        # Decoded on a thread: the event loop goes on telling "running", reading the job's
        # state and beating meanwhile (a 512² PNG takes 3.5 ms to decode, a 40 MP one 0.5 s).
        async def decoded(key: str, decode: Callable[[bytes], np.ndarray]) -> np.ndarray:
            data = await self.store.get(key)
            try:
                return await asyncio.to_thread(decode, data)
            except MemoryError:
                raise
            except Exception as exc:  # OSError, SyntaxError, zlib.error, ... from the plugin
                # A PNG upload that came straight from the gateway is decoded first here.
                raise UnprocessableInput(f"the image is corrupt or truncated: {exc}") from exc

        try:
            pixels = await decoded(request.input_key, imaging.decode_png)
            mask = (
                await decoded(request.mask_key, imaging.decode_mask_png)
                if request.mask_key
                else None
            )
            alpha = (
                await decoded(request.alpha_key, imaging.decode_png)
                if request.alpha_key
                else None
            )
            icc = await self.store.get(request.icc_key) if request.icc_key else None
        except BlobNotFound as exc:
            raise UnprocessableInput(f"the job's input is gone (deleted?): {exc}") from exc
        return pixels, mask, alpha, icc

    async def _cancelled(self, job_id: str) -> bool:
        end = await self.jobs.end(job_id)
        return not end.exists or end.final_state == "cancelled"

    async def _watch_for_cancel(self, job: _Job) -> None:
        while True:
            await asyncio.sleep(CANCEL_POLL_S)
            if await self._cancelled(job.request.job_id):
                job.cancelled.set()
                return

    def _progress_threadsafe(
        self, loop: asyncio.AbstractEventLoop, job: _Job, fraction: float
    ) -> None:
        now = time.monotonic()
        finished_a_shown_bar = fraction >= 1.0 and job.progress_told
        if now - job.last_progress_at < PROGRESS_EVERY_S and not finished_a_shown_bar:
            return
        job.last_progress_at, job.progress_told = now, True
        request = job.request
        if request.steps:  # the whole chain's: (step + fraction) / steps
            fraction = (request.step + fraction) / len(request.steps)
        coro = self.reporter.report(
            request.job_id, "running", progress=round(fraction, 4), details=_step_details(request)
        )
        asyncio.run_coroutine_threadsafe(coro, loop)


def _step_details(request: RestoreRequested, model: str | None = None) -> dict[str, Any]:
    """What a chain's step adds to its statuses: which step it is (a stage of the job's), and
    once run, the model it ran."""
    if not request.steps:
        return {}
    step = {"index": request.step, "name": request.task, "of": len(request.steps)}
    return {"step": step, **({"models": {request.task: model}} if model else {})}


def _step_named(request: RestoreRequested, reason: str) -> str:
    if not request.steps:
        return reason
    return f"step {request.step + 1} of {len(request.steps)} ({request.task}) failed: {reason}"


def _timings_key(request: RestoreRequested, service: str) -> str:
    return request.task if request.steps else service


def _run_exclusive(
    gate: InferenceGate, restorer: Restorer, restore_input: RestoreInput
) -> RestoreOutput:
    """One inference at a time per slot: on 2 cores, two at once only slow both."""
    use_cpu_threads_here()  # on this thread too (not every restorer goes through the tiler)
    with gate:
        if restore_input.should_cancel():
            raise Cancelled()
        return restorer(restore_input)


def serve_with_registry(
    name: str,
    queue: QueueSpec,
    bus: EventBus,
    store: BlobStore,
    runtime: ModelRuntime,
    gate: InferenceGate | None = None,
) -> ModelService:
    """A model service whose jobs run through the registry on `runtime` (its gate by default)."""
    return ModelService(
        name, queue, registry_restorer(runtime), bus, store, runtime.device_name,
        gate=gate or runtime.gate,
    )
