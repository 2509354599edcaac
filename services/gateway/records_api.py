"""Performance records over HTTP: the records, their summary, the dashboard page, /metrics.

GET /api/v1/records          ?from&to&task&model&outcome&limit&format=json|csv
GET /api/v1/records/summary  ?from&to&task&model&outcome&buckets
GET /dashboard               the charts page (static HTML + JS, drawn as SVG in the browser)
GET /metrics                 Prometheus text format
`from`/`to` are epoch seconds or ISO 8601 times (UTC when no offset is given).

Every handler here only reads: records are written by the gateway's `RecordWriter`
(`RECORD_WRITER`), which follows the status stream, never by a request.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import math
import time
from pathlib import Path
from typing import Any

from aiohttp import web

from shared.platform import metrics
from shared.platform.blobstore import BlobStore
from shared.platform.eventbus import EventBus
from shared.platform.jobs import JobLog
from shared.platform.logging import get_logger
from shared.platform.messages import TASKS, JobStatus
from shared.platform.records import (
    RECORDED_OUTCOMES,
    Filters,
    RecordStore,
    RecordWriter,
    to_csv,
)

log = get_logger(__name__)
STATIC_DIR = Path(__file__).parent / "static"
RECORDS: web.AppKey[RecordStore] = web.AppKey("records", RecordStore)
RECORD_WRITER: web.AppKey[RecordWriter] = web.AppKey("record_writer", RecordWriter)
DEPTH_SAMPLER: web.AppKey[asyncio.Task[None]] = web.AppKey("depth_sampler", asyncio.Task)
DEPTH_SOURCE: web.AppKey[metrics.DepthSource] = web.AppKey("depth_source")
MAX_LIMIT = 10_000
MAX_BUCKETS = 500
QUEUE_DEPTH_EVERY_S = 15.0


class RecordsBeingWritten:
    """Hands each status to the records writer without holding up the statuses behind it (the
    job's SSE stream among them), and keeps the writes in hand, so that a read of the records
    waits for them (`settled`): a client that saw a job end on this replica finds its record."""

    def __init__(self, writer: RecordWriter) -> None:
        self.writer = writer
        self._writing: set[asyncio.Task[None]] = set()

    async def on_status(self, status: JobStatus) -> None:
        if status.state not in RECORDED_OUTCOMES:
            return
        task = asyncio.create_task(self.writer.on_status(status))
        self._writing.add(task)
        task.add_done_callback(self._writing.discard)

    async def settled(self) -> None:
        """Wait for the writes in hand (each ends within the writer's timeout, never raises)."""
        if self._writing:
            await asyncio.gather(*self._writing)


PENDING_RECORDS: web.AppKey[RecordsBeingWritten] = web.AppKey(
    "pending_records", RecordsBeingWritten
)


def add_routes(app: web.Application, store: BlobStore, bus: EventBus | None = None) -> None:
    app[RECORDS] = RecordStore(store)
    # The app hands it the statuses (through PENDING_RECORDS) and the maintenance sweeper.
    app[RECORD_WRITER] = RecordWriter(JobLog(store), app[RECORDS], recorded_by="gateway")
    app[PENDING_RECORDS] = RecordsBeingWritten(app[RECORD_WRITER])
    app.on_cleanup.append(lambda a: a[PENDING_RECORDS].settled())
    app.router.add_get("/api/v1/records", list_records)
    app.router.add_get("/api/v1/records/summary", records_summary)
    app.router.add_get("/dashboard", dashboard)
    app.router.add_get("/metrics", metrics.prometheus_handler)
    if bus is not None and hasattr(bus, "queue_depths"):
        app.on_startup.append(lambda a: _start_depth_sampler(a, bus))
        app.on_cleanup.append(_stop_depth_sampler)


class BadQuery(ValueError):
    pass


def _time(raw: str | None, name: str) -> float | None:
    if not raw:
        return None
    try:
        seconds = float(raw)
    except ValueError:
        pass
    else:
        if not math.isfinite(seconds):  # float() takes "nan" and "inf"
            raise BadQuery(f"'{name}' must be a finite time, not {raw!r}")
        return seconds
    try:
        parsed = dt.datetime.fromisoformat(raw)
    except ValueError as exc:
        raise BadQuery(f"'{name}' must be epoch seconds or an ISO 8601 time") from exc
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=dt.UTC)
    return parsed.timestamp()


def parse_filters(query: Any) -> Filters:
    task, outcome = query.get("task") or None, query.get("outcome") or None
    if task is not None and task not in TASKS:
        raise BadQuery(f"unknown task {task!r}; one of {', '.join(TASKS)}")
    if outcome is not None and outcome not in RECORDED_OUTCOMES:
        raise BadQuery(
            f"unknown outcome {outcome!r}; one of {', '.join(sorted(RECORDED_OUTCOMES))}"
        )
    return Filters(
        start=_time(query.get("from"), "from"),
        end=_time(query.get("to"), "to"),
        task=task,
        model=query.get("model") or None,
        outcome=outcome,
    )


def _int(raw: str | None, name: str, default: int, high: int) -> int:
    if not raw:
        return default
    if not raw.isdigit() or not 1 <= int(raw) <= high:
        raise BadQuery(f"'{name}' must be an integer from 1 to {high}")
    return int(raw)


def _bad(exc: BadQuery) -> web.Response:
    return web.json_response({"error": str(exc)}, status=400)


async def list_records(request: web.Request) -> web.Response:
    await request.app[PENDING_RECORDS].settled()
    try:
        filters = parse_filters(request.query)
        limit = _int(request.query.get("limit"), "limit", 1000, MAX_LIMIT)
        fmt = request.query.get("format", "json")
        if fmt not in ("json", "csv"):
            raise BadQuery("'format' must be json or csv")
    except BadQuery as exc:
        return _bad(exc)
    records = await request.app[RECORDS].query(filters, limit)
    if fmt == "csv":
        return web.Response(
            text=to_csv(records),
            content_type="text/csv",
            headers={"Content-Disposition": 'attachment; filename="restora-records.csv"'},
        )
    for record in records:
        record["versions"] = json.loads(record["versions"] or "{}")
    return web.json_response({"count": len(records), "records": records})


async def records_summary(request: web.Request) -> web.Response:
    await request.app[PENDING_RECORDS].settled()
    try:
        filters = parse_filters(request.query)
        buckets = _int(request.query.get("buckets"), "buckets", 60, MAX_BUCKETS)
    except BadQuery as exc:
        return _bad(exc)
    summary = await request.app[RECORDS].summary(filters, buckets)
    summary["generated_at"] = time.time()
    return web.json_response(summary)


async def dashboard(_: web.Request) -> web.FileResponse:
    return web.FileResponse(STATIC_DIR / "dashboard.html")


# ------------------------------------------------------------------------------ queue depth
async def _start_depth_sampler(app: web.Application, bus: Any) -> None:
    """Sample the bus's queue depths in the background; the gauge reads the last sample."""
    latest: dict[str, int] = {}

    async def sample() -> None:
        while True:
            try:
                latest.update(await bus.queue_depths())
            except Exception:
                log.warning("queue_depth_sample_failed", exc_info=True)
            await asyncio.sleep(QUEUE_DEPTH_EVERY_S)

    app[DEPTH_SOURCE] = lambda: latest
    metrics.add_queue_depth_source(app[DEPTH_SOURCE])
    app[DEPTH_SAMPLER] = asyncio.create_task(sample())


async def _stop_depth_sampler(app: web.Application) -> None:
    if DEPTH_SOURCE in app:
        metrics.remove_queue_depth_source(app[DEPTH_SOURCE])
    if DEPTH_SAMPLER in app:
        app[DEPTH_SAMPLER].cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await app[DEPTH_SAMPLER]
