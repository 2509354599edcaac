"""A job's life as an append-only event log in the object store.

Every state change or progress report is written as its own object
(`jobs/<id>/events/<time>-<rank>-<state>-<rand>.json`) by the service that caused it, so
concurrent writers never lose each other's update; the job document any gateway replica
serves is folded from these events, and a state can only move forward.

A worker holding a job overwrites one heartbeat object (`jobs/<id>/heartbeat.json`) every few
seconds instead of appending events, so the log stays small and a reader can tell a job
whose worker died from one that is merely slow.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import socket
import time
from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from shared.platform import messages, records, telemetry
from shared.platform.blobstore import BlobNotFound, BlobStore
from shared.platform.eventbus import EventBus
from shared.platform.logging import get_logger
from shared.platform.messages import FINAL_STATES, STATE_RANK, JobOptions, JobStatus

logger = get_logger(__name__)


def new_job_id() -> str:
    """128 random bits, hex: unguessable, though never the only key (its owner's token is)."""
    return secrets.token_hex(16)


def is_valid_job_id(job_id: str) -> bool:
    return len(job_id) == 32 and all(c in "0123456789abcdef" for c in job_id)


class JobKeys:
    """Where a job's objects live. Keys never contain user-provided names."""

    def __init__(self, job_id: str) -> None:
        self.job_id = job_id
        self.prefix = f"jobs/{job_id}/"

    @property
    def spec(self) -> str:
        return self.prefix + "job.json"

    @property
    def upload(self) -> str:
        return self.prefix + "upload/image"

    @property
    def upload_mask(self) -> str:
        return self.prefix + "upload/mask"

    @property
    def input(self) -> str:
        return self.prefix + "work/input.png"

    @property
    def input_mask(self) -> str:
        return self.prefix + "work/mask.png"

    @property
    def input_alpha(self) -> str:
        return self.prefix + "work/alpha.png"

    def step_output(self, index: int, step: str) -> str:
        """A chain step's output (PNG), the next step's input."""
        return self.prefix + f"work/step-{index}-{step}.png"

    @property
    def icc(self) -> str:
        return self.prefix + "work/icc.bin"

    def result(self, fmt: str) -> str:
        return self.prefix + f"result/result.{_EXTENSIONS[fmt]}"

    @property
    def thumbnail(self) -> str:
        return self.prefix + "result/thumbnail.webp"

    @property
    def preview(self) -> str:
        return self.prefix + "result/preview.webp"

    @property
    def events_prefix(self) -> str:
        return self.prefix + "events/"

    @property
    def heartbeat(self) -> str:
        return self.prefix + "heartbeat.json"


_EXTENSIONS = {"png": "png", "jpeg": "jpg", "webp": "webp"}
CONTENT_TYPES = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp"}


async def store_result(
    store: BlobStore, keys: JobKeys, fmt: str, encoded: bytes,
    renditions: list[tuple[bytes, str]],
) -> None:
    """Store a job's result and its renditions (the thumbnail, then the preview where a result
    has one: `imaging.renditions`'s order) side by side: the job is done once the slowest is in."""
    if not 1 <= len(renditions) <= 2:
        raise ValueError(f"a thumbnail and at most a preview, got {len(renditions)} renditions")
    rendition_keys = (keys.thumbnail, keys.preview)[: len(renditions)]
    await asyncio.gather(
        store.put(keys.result(fmt), encoded, CONTENT_TYPES[fmt]),
        *(
            store.put(key, data, content_type)
            for key, (data, content_type) in zip(rendition_keys, renditions, strict=True)
        ),
    )


@dataclass(frozen=True)
class JobSpec:
    """What the gateway accepted; written once, never changed."""

    job_id: str
    task: str
    options: JobOptions
    created_at: float
    upload_bytes: int
    upload_content_type: str = ""
    # Who may read and delete the job: sha256 hex digests of its owner token and, for a job
    # submitted with an API key, of that key. Never the credentials themselves.
    owner_token_sha256: str = ""
    owner_key_sha256: str = ""


_SPEC_FIELDS = frozenset(f.name for f in fields(JobSpec))


@dataclass
class JobView:
    """The job document: folded from the spec and the event log."""

    spec: JobSpec
    state: str = "queued"
    stages: dict[str, float] = field(default_factory=dict)
    progress: float | None = None
    error: str | None = None
    result_key: str | None = None
    details: dict[str, Any] = field(default_factory=dict)
    last_event_at: float = 0.0
    events: list[JobStatus] = field(default_factory=list)

    @property
    def is_final(self) -> bool:
        return self.state in FINAL_STATES


@dataclass(frozen=True)
class Heartbeat:
    worker: str  # service@host:pid
    at: float


WAITING_FOR_A_WORKER = "waiting for a worker"


def worker_status(
    view: JobView, heartbeat: Heartbeat | None, stale_s: float, now: float
) -> dict[str, Any] | None:
    """Whether a worker is on an unfinished job: heard from (a heartbeat or any status)
    within `stale_s`. None for a finished job."""
    if view.is_final:
        return None
    last = max(view.last_event_at, heartbeat.at if heartbeat else 0.0)
    return {
        "alive": now - last <= stale_s,
        "name": heartbeat.worker if heartbeat else None,
        "last_heartbeat_at": last,
    }


# Details every stage adds its own entry to (per stage or chain step), merged not replaced.
_MERGED_DETAILS = ("timings", "models")


def fold(spec: JobSpec, events: list[JobStatus]) -> JobView:
    """Apply events in time order; a state never moves backwards, a final one never changes."""
    view = JobView(spec=spec, stages={"queued": spec.created_at}, last_event_at=spec.created_at)
    for event in sorted(events, key=lambda e: e.at):
        view.events.append(event)
        view.last_event_at = max(view.last_event_at, event.at)
        if view.is_final:
            continue
        rank, current = STATE_RANK.get(event.state, -1), STATE_RANK[view.state]
        if rank < current:
            continue
        if rank > current:
            view.state = event.state
            view.stages.setdefault(event.state, event.at)
            view.progress = None
        if event.progress is not None:
            view.progress = event.progress
        if event.error:
            view.error = event.error
        if event.result_key:
            view.result_key = event.result_key
        step = event.details.get("step")
        if isinstance(step, dict) and isinstance(step.get("name"), str):
            # A chain's step: a stage of its own, named by its task ("artifacts", "superres").
            view.stages.setdefault(step["name"], event.at)
        merged = {key: {**view.details.get(key, {}), **event.details.get(key, {})}
                  for key in _MERGED_DETAILS}
        view.details.update(event.details)
        # Each stage's (each chain step's) own entry, merged one level deep.
        view.details.update({key: value for key, value in merged.items() if value})
    return view


@dataclass(frozen=True)
class JobEnd:
    """`JobLog.end`'s answer: a deleted job does not exist; a final state is the first one in
    the log, as in the job's view (a final state never changes)."""

    exists: bool
    final_state: str | None

    @property
    def is_over(self) -> bool:
        """Deleted, cancelled, failed or done: nothing more to do for it."""
        return not self.exists or self.final_state is not None


def _state_in_key(key: str) -> str:
    """`append`'s names are `<at ns>-<rank>-<state>-<token>.json`."""
    parts = key.rsplit("/", 1)[-1].split("-")
    return parts[2] if len(parts) == 4 else ""


class JobLog:
    """Reads and appends a job's events in the object store."""

    def __init__(self, store: BlobStore) -> None:
        self.store = store

    async def create(self, spec: JobSpec) -> None:
        body = json.dumps(asdict(spec)).encode()
        await self.store.put(JobKeys(spec.job_id).spec, body, "application/json")

    async def append(self, status: JobStatus) -> None:
        rank = STATE_RANK.get(status.state, 9)
        name = f"{int(status.at * 1e9):020d}-{rank}-{status.state}-{secrets.token_hex(4)}.json"
        key = JobKeys(status.job_id).events_prefix + name
        await self.store.put(key, messages.encode(status), "application/json")

    async def beat(self, job_id: str, worker: str) -> None:
        body = json.dumps({"worker": worker, "at": time.time()}).encode()
        await self.store.put(JobKeys(job_id).heartbeat, body, "application/json")

    async def heartbeat(self, job_id: str) -> Heartbeat | None:
        try:
            raw = json.loads(await self.store.get(JobKeys(job_id).heartbeat))
            return Heartbeat(worker=str(raw["worker"]), at=float(raw["at"]))
        except (BlobNotFound, ValueError, KeyError, TypeError):
            return None

    async def spec(self, job_id: str) -> JobSpec | None:
        try:
            raw = json.loads(await self.store.get(JobKeys(job_id).spec))
        except BlobNotFound:
            return None
        raw["options"] = JobOptions(**raw["options"])
        # Fields a newer gateway added are ignored, so workers can be rolled out after it.
        return JobSpec(**{k: v for k, v in raw.items() if k in _SPEC_FIELDS})

    async def view(self, job_id: str) -> JobView | None:
        # The spec and the listing at once, then every event at once: a view is read on every
        # hop of a job (and by each client), so its latency is one round trip per step, not
        # one per event.
        spec, keys = await asyncio.gather(
            self.spec(job_id), self.store.list(JobKeys(job_id).events_prefix)
        )
        if spec is None:
            return None
        events = await asyncio.gather(*(self._event(key) for key in keys))
        return fold(spec, [event for event in events if event is not None])

    async def end(self, job_id: str) -> JobEnd:
        """Whether the job is still there and how it ended, if it has, from one listing of its
        objects (an event's state is in its key), no event read: what a worker asks before
        and while it works, one round trip instead of a view's two."""
        keys = JobKeys(job_id)
        listed = await self.store.list(keys.prefix)
        if keys.spec not in listed:
            return JobEnd(exists=False, final_state=None)
        states = (_state_in_key(k) for k in listed if k.startswith(keys.events_prefix))
        return JobEnd(exists=True, final_state=next((s for s in states if s in FINAL_STATES), None))

    async def _event(self, key: str) -> JobStatus | None:
        try:
            event = messages.decode(await self.store.get(key))
        except (BlobNotFound, messages.MessageError):
            return None  # deleted meanwhile, or unreadable: never block the job view
        return event if isinstance(event, JobStatus) else None


def worker_name(service: str) -> str:
    return f"{service}@{socket.gethostname()}:{os.getpid()}"


@contextlib.asynccontextmanager
async def heartbeats(
    jobs: JobLog, job_id: str, worker: str, interval_s: float, first_after_s: float = 0.0
) -> AsyncIterator[None]:
    """Write the job's heartbeat `first_after_s` into the block and every `interval_s` after,
    while the block runs (on the event loop: a long inference runs in a thread and never holds
    it up). A job is heard from by its statuses too: a worker that tells one as it starts can
    leave the first beat to the work that outlasts `first_after_s`."""

    async def beat_forever() -> None:
        await asyncio.sleep(first_after_s)
        while True:
            try:
                await jobs.beat(job_id, worker)
            except Exception as exc:  # a store hiccup: the next beat may get through
                logger.warning("heartbeat_failed", job_id=job_id, error=repr(exc))
            await asyncio.sleep(interval_s)

    task = asyncio.create_task(beat_forever())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


class StatusReporter:
    """Appends a status to the job's log, then tells every listener on the bus.

    It writes nothing else: the job's performance record is written by the records writer
    that follows the statuses (`records.RecordWriter`).
    """

    def __init__(self, log: JobLog, bus: EventBus, stage: str) -> None:
        self.log = log
        self.bus = bus
        self.stage = stage

    async def report(
        self, job_id: str, state: str, at: float | None = None, **fields: Any
    ) -> JobStatus:
        if fields.get("progress") is None or fields["progress"] >= 1.0:
            # Which build of each service handled the job, and in which trace: the job's
            # record takes both from its events (a stage's first or last, not its progress).
            extra: dict[str, Any] = {"versions": {self.stage: records.service_version()}}
            if trace_id := telemetry.current_trace_id():
                extra["trace_id"] = trace_id
            fields["details"] = {**fields.get("details", {}), **extra}
        at = time.time() if at is None else at
        status = JobStatus(job_id=job_id, state=state, stage=self.stage, at=at, **fields)
        await self.log.append(status)
        await self.bus.publish_status(status)
        return status
