"""Preprocess adapter: JobSubmitted → normalise (pure core) → store → RestoreRequested."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from typing import Any

from services.preprocess.core import InvalidInput, Limits, NormalizedInput, normalize
from shared.errors import UnprocessableInput
from shared.ml import auto, chains, imaging
from shared.ml.noise_estimation import estimate_noise_sigma
from shared.platform import metrics, telemetry, topology
from shared.platform.aio import forget
from shared.platform.blobstore import BlobNotFound, BlobStore
from shared.platform.config import PreprocessSettings
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
from shared.platform.messages import JobSubmitted, RestoreRequested, input_facts

log = get_logger(__name__)

#: Preprocessing that takes longer than this is told as it starts (and beats); sooner, it is
#: told once, when the job is handed on.
QUIET_START_S = 0.5


def _normalized_for(task: str) -> str:
    """The task whose normalisation a job gets: its first step's; auto's is artifacts's (the
    stored 8x8 grid kept, orientation applied to the result), since it may deblock."""
    return "artifacts" if task == chains.AUTO else chains.steps_of(task)[0]


def _choose(normalized: NormalizedInput) -> auto.AutoChoice:
    try:
        sigma: float | None = estimate_noise_sigma(normalized.pixels)
    except UnprocessableInput:  # too small to tell: no denoising
        sigma = None
    height, width = normalized.pixels.shape[:2]
    return auto.choose(normalized.jpeg_quality, sigma, (width, height))


def _input_facts(normalized: NormalizedInput) -> dict[str, Any]:
    """What the job's record tells of its input."""
    height, width = normalized.pixels.shape[:2]
    return input_facts(width, height, normalized.source_format, normalized.was_resized,
                       normalized.jpeg_quality)


class PreprocessService:
    def __init__(self, bus: EventBus, store: BlobStore, settings: PreprocessSettings) -> None:
        self.bus = bus
        self.store = store
        self.settings = settings
        self.jobs = JobLog(store)
        self.reporter = StatusReporter(self.jobs, bus, stage="preprocess")
        self.worker = worker_name("preprocess")

    async def start(self) -> None:
        await self.bus.consume(
            topology.PREPROCESS, metrics.instrument_handler("preprocess", self.handle)
        )

    def limits_for(self, task: str) -> Limits:
        """A chain's are its strictest step's (superres's, where it has one); auto's are those
        of the fixes at full size (it upscales only small photos)."""
        steps = ("artifacts", "denoise") if task == chains.AUTO else chains.steps_of(task)
        return Limits(
            max_upload_bytes=self.settings.max_upload_bytes,
            max_input_pixels=min(self.settings.max_pixels_for(s) for s in steps),
        )

    async def handle(self, delivery: Delivery) -> None:
        job = delivery.message
        if not isinstance(job, JobSubmitted):
            raise Reject(f"preprocess cannot handle {type(job).__name__}")
        # The upload is fetched and normalised while the job is looked up: one wait, not two
        # (a job found over drops what was begun).
        fetched = asyncio.create_task(self._fetch(job))
        normalizing = asyncio.create_task(self._normalize(job, fetched))
        try:
            if (await self.jobs.end(job.job_id)).is_over:
                return  # deleted or cancelled before we got to it
            started = time.time()
            # A worker killed here leaves a heartbeat (or a status) that stops: the job says so.
            async with heartbeats(
                self.jobs, job.job_id, self.worker, self.settings.heartbeat_interval_s,
                QUIET_START_S,
            ):
                normalized = await self._normalize_telling_if_slow(job, normalizing, started)
        except BlobNotFound:
            await self.reporter.report(job.job_id, "failed", error="the upload is gone (deleted?)")
            return
        except InvalidInput as exc:
            await self.reporter.report(job.job_id, "failed", error=str(exc))
            return
        finally:
            forget(normalizing)
            forget(fetched)
        height, width = normalized.pixels.shape[:2]
        steps, extra = chains.steps_of(job.task), {}
        if job.task == chains.AUTO:
            choice = await asyncio.to_thread(_choose, normalized)
            steps, extra = choice.chain, {"auto": choice.as_details()}
            log.info("auto_chain", job_id=job.job_id, chain=list(steps))
        if not steps:  # auto found nothing to fix: the original is the result
            await self._finish_untouched(job, normalized, started, extra)
            return
        request = await self._store_normalized(job, normalized, steps)
        elapsed = time.time() - started
        metrics.observe_stage("preprocess", elapsed, task=job.task)
        log.info("preprocessed", job_id=job.job_id, width=width, height=height)
        # Told while the job is handed on, not before: one round trip fewer before the model
        # service may start. Its `at` is now, so the job's log still orders it before the model
        # service's "running"; a failure to tell it is logged, not retried, as redelivering the
        # job would hand it on twice (it is only the input's facts for the job's record).
        told_at = time.time()
        first = request.task
        await asyncio.gather(
            self._tell_preprocessed(job, normalized, extra, elapsed, told_at),
            self.bus.publish(
                topology.queue_for_task(first, request.options.for_step(first).model), request
            ),
        )

    async def _tell_preprocessed(
        self, job: JobSubmitted, normalized: NormalizedInput, extra: dict[str, Any],
        elapsed: float, at: float,
    ) -> None:
        details = {
            **extra,
            "timings": {"preprocess": {"total_s": elapsed}},
            "input": _input_facts(normalized),
        }
        try:
            await self.reporter.report(
                job.job_id, "preprocessing", at=at, progress=1.0, details=details
            )
        except Exception as exc:
            log.warning("preprocessed_not_told", job_id=job.job_id, error=repr(exc))

    async def _normalize_telling_if_slow(
        self, job: JobSubmitted, normalizing: asyncio.Task[NormalizedInput], started: float,
    ) -> NormalizedInput:
        """The normalised input; "preprocessing" is told as it started (at `started`: the
        record's queue wait ends where preprocess_s begins) only when it takes longer than
        QUIET_START_S. A photo done sooner is announced once, as it is handed on: one store
        write and broadcast fewer while the next service waits."""
        try:
            return await asyncio.wait_for(asyncio.shield(normalizing), QUIET_START_S)
        except TimeoutError:
            pass
        await asyncio.gather(
            self.reporter.report(job.job_id, "preprocessing", at=started), normalizing
        )
        return normalizing.result()

    async def _fetch(self, job: JobSubmitted) -> tuple[bytes, bytes | None]:
        """The upload and its mask, where it has one."""
        image = await self.store.get(job.upload_key)
        mask = await self.store.get(job.mask_key) if job.mask_key else None
        return image, mask

    async def _normalize(
        self, job: JobSubmitted, fetched: asyncio.Task[tuple[bytes, bytes | None]]
    ) -> NormalizedInput:
        image, mask = await fetched
        with telemetry.tracer().start_as_current_span(
            "preprocess normalize",
            attributes={
                "restora.job_id": job.job_id,
                "restora.task": job.task,
                "restora.model": job.options.model,
                "restora.upload_bytes": len(image),
            },
        ):
            return await asyncio.to_thread(
                normalize,
                image,
                task=_normalized_for(job.task),  # type: ignore[arg-type]
                mask_bytes=mask,
                max_side=job.options.max_side,
                limits=self.limits_for(job.task),
            )

    async def _finish_untouched(
        self, job: JobSubmitted, normalized: NormalizedInput, started: float,
        details: dict[str, Any],
    ) -> None:
        """`auto` with nothing to fix: the photo as sent (orientation, alpha and ICC as a
        result gets them, in the requested format) is the result, and the job is done."""
        fmt = job.options.format
        encoded, renditions = await asyncio.to_thread(
            imaging.encode_result_with_renditions,
            normalized.pixels,
            alpha=normalized.alpha,
            icc_profile=normalized.icc_profile,
            fmt=fmt,  # type: ignore[arg-type]
            orientation=normalized.orientation_after,
        )
        keys = JobKeys(job.job_id)
        await store_result(self.store, keys, fmt, encoded, renditions)
        elapsed = time.time() - started
        metrics.observe_stage("preprocess", elapsed, task=job.task)
        height, width = normalized.pixels.shape[:2]
        await self.reporter.report(
            job.job_id,
            "done",
            result_key=keys.result(fmt),
            details={
                **details,
                "model": "none",
                "timings": {"preprocess": {"total_s": elapsed}},
                "input": _input_facts(normalized),
                "output": {"width": width, "height": height, "bytes": len(encoded)},
            },
        )

    async def _store_normalized(
        self, job: JobSubmitted, normalized: NormalizedInput, steps: tuple[str, ...]
    ) -> RestoreRequested:
        keys = JobKeys(job.job_id)
        input_key = job.upload_key
        if not normalized.pixels_as_uploaded:  # else the upload is the input: no re-encoding
            input_key = keys.input
            encoded = imaging.encode_png_array(normalized.pixels)
            await self.store.put(input_key, encoded, "image/png")
        mask_key = alpha_key = icc_key = None
        if normalized.mask is not None:
            mask_key = keys.input_mask
            await self.store.put(mask_key, imaging.encode_png_array(normalized.mask), "image/png")
        if normalized.alpha is not None:
            alpha_key = keys.input_alpha
            await self.store.put(alpha_key, imaging.encode_png_array(normalized.alpha), "image/png")
        if normalized.icc_profile:
            icc_key = keys.icc
            await self.store.put(icc_key, normalized.icc_profile, "application/vnd.iccprofile")
        options = job.options
        if "artifacts" in steps and options.quality is None and normalized.jpeg_quality:
            # "auto": the quality the file says it was saved at, read before decoding.
            options = dataclasses.replace(options, quality=normalized.jpeg_quality)
        return RestoreRequested(
            job_id=job.job_id,
            task=steps[0],
            options=options,
            input_key=input_key,
            mask_key=mask_key,
            alpha_key=alpha_key,
            icc_key=icc_key,
            orientation_after=normalized.orientation_after,
            source_format=normalized.source_format,
            submitted_at=job.submitted_at,
            steps=list(steps) if len(steps) > 1 else [],
        )
