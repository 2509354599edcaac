"""Durable performance records: one per finished job, in the object store, queried with DuckDB.

Storage: one JSON object per job at `records/date=YYYY-MM-DD/<job_id>.json` (UTC date of
the job's end). Why this and not appended JSON-lines or Parquet files:

- S3 has no append. A shared JSON-lines file per day would need read-modify-write from
  every service replica, which loses records under concurrency; one object per job needs
  no coordination at all.
- The key is a function of the job alone (its id and the time of its first final event),
  so a redelivered message or a second `failed` report finds the record already there:
  writing is idempotent and a job never counts twice.
- `date=` partitions let a query over a time range list only the days it covers, and the
  records live outside `jobs/`, so the retention sweeper and the bucket lifecycle rule that
  delete a job's images leave its record alone.
- DuckDB reads the objects after the `BlobStore` fetched them (its httpfs extension would
  be downloaded at run time, which cannot work offline): the same code serves the local
  store of the embedded mode and S3. Fetched records are cached per key, because a
  record never changes once its job has ended.

Many small objects cost one GET each on a cold cache; at this service's rate (jobs take
seconds to minutes) a day holds thousands, not millions. Compacting old days into one
Parquet object per day is the next step if that ever changes.

Who writes: one `RecordWriter` per gateway follows the status stream on the bus and records
each job when its final status goes by; the services that report statuses never write
records themselves.

A record is flat (one column per measure) so that CSV export and SQL need no unnesting.
Stage times are seconds; a stage that did not run is null, never 0.
"""

from __future__ import annotations

import asyncio
import csv
import datetime as dt
import io
import json
import os
import tempfile
import time
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import cache
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

from shared.ml import chains
from shared.platform import metrics, topology
from shared.platform.blobstore import BlobNotFound, BlobStore
from shared.platform.logging import get_logger

if TYPE_CHECKING:
    import duckdb

    from shared.platform.jobs import JobLog, JobView
    from shared.platform.messages import JobStatus

log = get_logger(__name__)

SCHEMA_VERSION = 1
PREFIX = "records/"
# Outcomes a record is written for; a cancelled job is the user's choice, not a result.
RECORDED_OUTCOMES = frozenset({"done", "failed"})
# A record is written before its replica announces the job's end: never hold that up long.
RECORD_TIMEOUT_S = 10.0
# Job ids a writer remembers having recorded; older ones are checked in the store instead.
REMEMBERED_JOBS = 10_000
# Stages in pipeline order: (name, column). `queue_*` are waits in a broker queue.
STAGE_COLUMNS: dict[str, str] = {
    "upload": "upload_s",
    "queue_preprocess": "queue_preprocess_s",
    "preprocess": "preprocess_s",
    "queue_inference": "queue_inference_s",
    "load": "load_s",
    "inference": "inference_s",
    "encode": "encode_s",
    "store": "store_s",
}
# Column → DuckDB type: the schema of a record, also the CSV header's order.
COLUMNS: dict[str, str] = {
    "schema_version": "INTEGER",
    "job_id": "VARCHAR",
    "task": "VARCHAR",
    "model": "VARCHAR",
    "requested_model": "VARCHAR",
    "weights_sha256": "VARCHAR",
    "device": "VARCHAR",
    "outcome": "VARCHAR",
    "error": "VARCHAR",
    "final_stage": "VARCHAR",
    "started_at": "DOUBLE",
    "finished_at": "DOUBLE",
    "latency_s": "DOUBLE",
    **dict.fromkeys(STAGE_COLUMNS.values(), "DOUBLE"),
    "input_content_type": "VARCHAR",
    "input_format": "VARCHAR",
    "input_bytes": "BIGINT",
    "input_width": "INTEGER",
    "input_height": "INTEGER",
    "input_pixels": "BIGINT",
    "input_resized": "BOOLEAN",
    "output_format": "VARCHAR",
    "output_bytes": "BIGINT",
    "output_width": "INTEGER",
    "output_height": "INTEGER",
    "output_pixels": "BIGINT",
    "attempts": "INTEGER",
    "versions": "VARCHAR",  # JSON object {service: version}, kept as text for CSV
    "trace_id": "VARCHAR",
    "recorded_by": "VARCHAR",
}


# ------------------------------------------------------------------------------ versions
@cache
def service_version() -> str:
    """`<package version>+g<commit>`: the commit from RESTORA_GIT_COMMIT or the checkout."""
    try:
        version = metadata.version("restora")
    except metadata.PackageNotFoundError:
        version = "0+unknown"
    commit = os.environ.get("RESTORA_GIT_COMMIT", "").strip() or _checkout_commit()
    return f"{version}+g{commit[:12]}" if commit else version


def _checkout_commit() -> str:
    """HEAD of the source checkout, read from .git without running git (absent in images)."""
    git = Path(__file__).resolve().parents[2] / ".git"
    try:
        head = (git / "HEAD").read_text().strip()
        if not head.startswith("ref: "):
            return head
        ref = head[5:]
        if (git / ref).is_file():
            return (git / ref).read_text().strip()
        for line in (git / "packed-refs").read_text().splitlines():
            if line.endswith(" " + ref):
                return line.split(" ", 1)[0]
    except OSError:
        pass
    return ""


# ------------------------------------------------------------------------------ building
def _deep_merge(into: dict[str, Any], update: dict[str, Any]) -> None:
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            _deep_merge(into[key], value)
        else:
            into[key] = value


def _merged_details(events: Sequence[JobStatus]) -> dict[str, Any]:
    """Every event's details, nested dicts merged (the job view keeps only the last)."""
    merged: dict[str, Any] = {}
    for event in events:
        _deep_merge(merged, event.details)
    return merged


def _first_at(events: Sequence[JobStatus], state: str, **match: Any) -> float | None:
    for event in events:
        if event.state == state and all(getattr(event, k) == v for k, v in match.items()):
            return event.at
    return None


def _gap(later: float | None, earlier: float | None) -> float | None:
    return max(0.0, later - earlier) if later is not None and earlier is not None else None


def _pixels(part: dict[str, Any]) -> int | None:
    width, height = part.get("width"), part.get("height")
    return int(width) * int(height) if width and height else None


def _stage_times(
    events: Sequence[JobStatus], details: dict[str, Any], task_service: str | None,
    task: str = "",
) -> dict[str, float | None]:
    """Queue waits from event times (they span services); processing from each service."""
    timings = details.get("timings") or {}
    gateway = timings.get("gateway") or {}
    preprocess = timings.get("preprocess") or {}
    model: dict[str, Any] = (timings.get(task_service) if task_service else None) or next(
        (v for k, v in timings.items() if k not in ("gateway", "preprocess")), {}
    )
    steps = [timings[s] for s in chains.steps_of(task) if isinstance(timings.get(s), dict)]
    if len(steps) > 1:  # a chain: each processing time summed over its steps
        model = {
            name: sum(float(t.get(name) or 0.0) for t in steps)
            for name in ("load_s", "inference_s", "encode_s", "store_s")
        }
    queued = _first_at(events, "queued")
    preprocess_end = _first_at(events, "preprocessing", progress=1.0)
    # Where preprocess began: total_s before its last status (a quick one tells no other),
    # else its first status.
    preprocess_start = (
        preprocess_end - float(preprocess["total_s"])
        if preprocess_end is not None and preprocess.get("total_s") is not None
        else _first_at(events, "preprocessing")
    )
    running = _first_at(events, "running")
    # A PNG with nothing to normalise went from the gateway straight to its model: it waited
    # for a model service from "queued" on.
    handed_on = queued if preprocess_start is None else preprocess_end
    return {
        "upload_s": gateway.get("upload_s"),
        "queue_preprocess_s": _gap(preprocess_start, queued),
        "preprocess_s": preprocess.get("total_s"),
        "queue_inference_s": _gap(running, handed_on),
        "load_s": model.get("load_s"),
        "inference_s": model.get("inference_s"),
        "encode_s": model.get("encode_s"),
        "store_s": model.get("store_s"),
    }


def _weights_hash(details: dict[str, Any]) -> str | None:
    weights = details.get("weights")
    if isinstance(weights, dict) and weights.get("sha256"):
        return str(weights["sha256"])
    value = details.get("weights_sha256")
    return str(value) if value else None


def build_record(view: JobView, recorded_by: str) -> dict[str, Any] | None:
    """The record of a finished job, or None when it has not finished (or was cancelled)."""
    if view.state not in RECORDED_OUTCOMES:
        return None
    spec, events = view.spec, view.events
    details = _merged_details(events)
    finished_at = view.stages[view.state]
    final_event = next(e for e in events if e.state == view.state and e.at == finished_at)
    # The trace of the status that ended the job, else the job's (a sweeper's `failed`
    # is reported outside any trace).
    trace_id = final_event.details.get("trace_id") or details.get("trace_id")
    try:
        task_service: str | None = topology.queue_for_task(spec.task, spec.options.model).service
    except KeyError:
        task_service = None
    stages = _stage_times(events, details, task_service, spec.task)
    upload_s = stages["upload_s"]
    queued = _first_at(events, "queued") or spec.created_at
    started_at = queued - upload_s if upload_s is not None else spec.created_at
    source, output = details.get("input") or {}, details.get("output") or {}
    done = view.state == "done"
    return {
        "schema_version": SCHEMA_VERSION,
        "job_id": spec.job_id,
        "task": spec.task,
        "model": details.get("model") or spec.options.model,
        "requested_model": spec.options.model,
        "weights_sha256": _weights_hash(details),
        "device": details.get("device"),
        "outcome": view.state,
        "error": None if done else view.error,
        "final_stage": final_event.stage,
        "started_at": started_at,
        "finished_at": finished_at,
        "latency_s": max(0.0, finished_at - started_at),
        **stages,
        "input_content_type": spec.upload_content_type or None,
        "input_format": source.get("format"),
        "input_bytes": spec.upload_bytes,
        "input_width": source.get("width"),
        "input_height": source.get("height"),
        "input_pixels": _pixels(source),
        "input_resized": source.get("resized"),
        "output_format": spec.options.format if done else None,
        "output_bytes": output.get("bytes"),
        "output_width": output.get("width"),
        "output_height": output.get("height"),
        "output_pixels": _pixels(output),
        # Each delivery to the model service reports `running` without progress once.
        "attempts": sum(1 for e in events if e.state == "running" and e.progress is None),
        "versions": json.dumps(details.get("versions") or {}, sort_keys=True),
        "trace_id": str(trace_id) if trace_id else None,
        "recorded_by": recorded_by,
    }


def record_key(job_id: str, finished_at: float) -> str:
    day = dt.datetime.fromtimestamp(finished_at, dt.UTC).date().isoformat()
    return f"{PREFIX}date={day}/{job_id}.json"


# ------------------------------------------------------------------------------ querying
@dataclass(frozen=True)
class Filters:
    start: float | None = None  # finished_at >= start (epoch seconds)
    end: float | None = None  # finished_at < end
    task: str | None = None
    model: str | None = None
    outcome: str | None = None

    def where(self) -> tuple[str, list[Any]]:
        clauses, params = ["TRUE"], []
        for column, op, value in (
            ("finished_at", ">=", self.start),
            ("finished_at", "<", self.end),
            ("task", "=", self.task),
            ("model", "=", self.model),
            ("outcome", "=", self.outcome),
        ):
            if value is not None:
                clauses.append(f"{column} {op} ?")
                params.append(value)
        return " AND ".join(clauses), params


# Past this many days a query lists every partition instead of one prefix per day.
_MAX_DAYS_LISTED = 62
_FETCH_CONCURRENCY = 16
# Records kept in memory (about 1 KB each); past this the oldest-fetched are dropped.
CACHE_LIMIT = 100_000


class RecordStore:
    """Writes records and queries them; one per process, so its cache serves every query."""

    def __init__(self, store: BlobStore) -> None:
        self.store = store
        self._cache: dict[str, dict[str, Any]] = {}

    async def write(self, record: dict[str, Any]) -> str:
        key = record_key(record["job_id"], record["finished_at"])
        body = json.dumps(record, separators=(",", ":")).encode()
        await self.store.put(key, body, "application/json")
        self._cache[key] = record
        return key

    async def _keys(self, start: float | None, end: float | None) -> list[str]:
        if start is None:
            return await self.store.list(PREFIX)
        last = dt.datetime.fromtimestamp(end if end is not None else time.time(), dt.UTC).date()
        day = dt.datetime.fromtimestamp(start, dt.UTC).date()
        if (last - day).days > _MAX_DAYS_LISTED:
            return await self.store.list(PREFIX)
        keys: list[str] = []
        while day <= last:
            keys += await self.store.list(f"{PREFIX}date={day.isoformat()}/")
            day += dt.timedelta(days=1)
        return keys

    async def load(self, start: float | None = None, end: float | None = None) -> list[dict]:
        """Every record in the days that [start, end) touches, fetched through the store."""
        keys = [k for k in await self._keys(start, end) if k.endswith(".json")]
        missing = [k for k in keys if k not in self._cache]
        semaphore = asyncio.Semaphore(_FETCH_CONCURRENCY)

        async def fetch(key: str) -> None:
            async with semaphore:
                try:
                    self._cache[key] = json.loads(await self.store.get(key))
                except (BlobNotFound, ValueError):
                    log.warning("record_unreadable", key=key)

        await asyncio.gather(*(fetch(k) for k in missing))
        found = [self._cache[k] for k in keys if k in self._cache]
        for key in list(self._cache)[: max(0, len(self._cache) - CACHE_LIMIT)]:
            del self._cache[key]
        return found

    async def query(self, filters: Filters, limit: int = 1000) -> list[dict[str, Any]]:
        rows = await self.load(filters.start, filters.end)
        return await asyncio.to_thread(query_records, rows, filters, limit)

    async def summary(self, filters: Filters, buckets: int = 60) -> dict[str, Any]:
        rows = await self.load(filters.start, filters.end)
        return await asyncio.to_thread(summarize_records, rows, filters, buckets)


def _connect(rows: Iterable[dict[str, Any]]) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB with a `records` table read (as JSON-lines) from `rows`."""
    import duckdb

    connection = duckdb.connect(":memory:")
    with tempfile.NamedTemporaryFile("w", suffix=".jsonl", delete=False) as out:
        for row in rows:
            out.write(json.dumps({c: row.get(c) for c in COLUMNS}) + "\n")
        path = out.name
    try:
        # An explicit schema: columns keep their types even when every value is null.
        columns = "{" + ", ".join(f"'{c}': '{t}'" for c, t in COLUMNS.items()) + "}"
        connection.execute(
            "CREATE TABLE records AS SELECT * FROM read_json(?, format = 'newline_delimited', "
            f"columns = {columns})",
            [path],
        )
    finally:
        os.unlink(path)
    return connection


def _fetch_dicts(
    connection: duckdb.DuckDBPyConnection, sql: str, params: Sequence[Any] = ()
) -> list[dict[str, Any]]:
    cursor = connection.execute(sql, list(params))
    names = [d[0] for d in cursor.description or []]
    return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]


def query_records(
    rows: Iterable[dict[str, Any]], filters: Filters, limit: int = 1000
) -> list[dict[str, Any]]:
    connection = _connect(rows)
    try:
        where, params = filters.where()
        return _fetch_dicts(
            connection,
            f"SELECT * FROM records WHERE {where} ORDER BY finished_at DESC LIMIT ?",
            [*params, limit],
        )
    finally:
        connection.close()


def to_csv(records: Sequence[dict[str, Any]]) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(COLUMNS), extrasaction="ignore")
    writer.writeheader()
    writer.writerows(records)
    return out.getvalue()


_PERCENTILES = (
    "quantile_cont({x}, 0.5) AS p50, quantile_cont({x}, 0.95) AS p95, "
    "quantile_cont({x}, 0.99) AS p99"
)


def _stages_long(where: str) -> str:
    """Records unpivoted to (task, stage, seconds, ...): 'total' is the end-to-end latency."""
    parts = [
        f"SELECT task, model, outcome, finished_at, '{stage}' AS stage, {column} AS seconds "
        f"FROM records WHERE {where}"
        for stage, column in {**STAGE_COLUMNS, "total": "latency_s"}.items()
    ]
    return " UNION ALL ".join(parts)


def summarize_records(
    rows: Iterable[dict[str, Any]], filters: Filters, buckets: int = 60
) -> dict[str, Any]:
    """Counts, failure rates, percentiles per task and stage, throughput, time series."""
    connection = _connect(rows)
    try:
        where, params = filters.where()
        return _summarize(connection, where, params, filters, buckets)
    finally:
        connection.close()


def _summarize(
    connection: duckdb.DuckDBPyConnection,
    where: str,
    params: list[Any],
    filters: Filters,
    buckets: int,
) -> dict[str, Any]:
    span = _fetch_dicts(
        connection,
        f"SELECT count(*) AS n, min(finished_at) AS first, max(finished_at) AS last, "
        f"count(*) FILTER (WHERE outcome = 'failed') AS failed FROM records WHERE {where}",
        params,
    )[0]
    latency = _fetch_dicts(
        connection,
        f"SELECT {_PERCENTILES.format(x='latency_s')} FROM records "
        f"WHERE {where} AND outcome = 'done'",
        params,
    )[0]
    start = filters.start if filters.start is not None else span["first"]
    end = filters.end if filters.end is not None else span["last"]
    minutes = max((end - start) / 60.0, 1.0) if start is not None and end is not None else 1.0
    bucket_s = _bucket_seconds(start, end, buckets)
    # Percentiles of processing time count only jobs that got through; waits count all.
    stage_rows = _fetch_dicts(
        connection,
        f"SELECT task, stage, count(seconds) AS n, {_PERCENTILES.format(x='seconds')}, "
        f"avg(seconds) AS mean FROM ({_stages_long(where)}) "
        "WHERE seconds IS NOT NULL AND (outcome = 'done' OR stage LIKE 'queue_%') "
        "GROUP BY task, stage ORDER BY task, stage",
        params * (len(STAGE_COLUMNS) + 1),
    )
    return {
        "from": start,
        "to": end,
        "count": span["n"],
        "failed": span["failed"],
        "failure_rate": span["failed"] / span["n"] if span["n"] else None,
        "throughput_per_min": span["n"] / minutes if span["n"] else 0.0,
        "latency": latency,
        "tasks": _per_task(connection, where, params, minutes),
        "stages": stage_rows,
        "models": _per_model(connection, where, params),
        "bucket_s": bucket_s,
        "series": _series(connection, where, params, bucket_s),
    }


def _bucket_seconds(start: float | None, end: float | None, buckets: int) -> int:
    """A round bucket width giving at most `buckets` points over [start, end]."""
    if start is None or end is None:
        return 60
    raw = max((end - start) / max(buckets, 1), 1.0)
    for width in (10, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 21600, 43200, 86400):
        if width >= raw:
            return width
    return 86400 * int(raw // 86400 + 1)


def _per_task(
    connection: duckdb.DuckDBPyConnection, where: str, params: list[Any], minutes: float
) -> list[dict[str, Any]]:
    rows = _fetch_dicts(
        connection,
        "SELECT task, count(*) AS count, count(*) FILTER (WHERE outcome = 'failed') AS failed, "
        "quantile_cont(latency_s, 0.5) FILTER (WHERE outcome = 'done') AS p50, "
        "quantile_cont(latency_s, 0.95) FILTER (WHERE outcome = 'done') AS p95, "
        "quantile_cont(latency_s, 0.99) FILTER (WHERE outcome = 'done') AS p99 "
        f"FROM records WHERE {where} GROUP BY task ORDER BY task",
        params,
    )
    for row in rows:
        row["failure_rate"] = row["failed"] / row["count"]
        row["throughput_per_min"] = row["count"] / minutes
    return rows


def _per_model(
    connection: duckdb.DuckDBPyConnection, where: str, params: list[Any]
) -> list[dict[str, Any]]:
    """Speed of each model per task; inference seconds per megapixel compares across sizes."""
    return _fetch_dicts(
        connection,
        "SELECT task, model, device, count(*) AS count, "
        "count(*) FILTER (WHERE outcome = 'failed') AS failed, "
        "quantile_cont(latency_s, 0.5) FILTER (WHERE outcome = 'done') AS latency_p50, "
        "quantile_cont(inference_s, 0.5) FILTER (WHERE outcome = 'done') AS inference_p50, "
        "quantile_cont(inference_s / (input_pixels / 1e6), 0.5) "
        "FILTER (WHERE outcome = 'done' AND input_pixels > 0) AS inference_s_per_mpix "
        f"FROM records WHERE {where} GROUP BY task, model, device ORDER BY task, model, device",
        params,
    )


def _series(
    connection: duckdb.DuckDBPyConnection, where: str, params: list[Any], bucket_s: int
) -> dict[str, list[dict[str, Any]]]:
    bucket = f"floor(finished_at / {bucket_s}) * {bucket_s}"
    overall = _fetch_dicts(
        connection,
        f"SELECT {bucket} AS t, count(*) AS count, "
        "count(*) FILTER (WHERE outcome = 'failed') AS failed, "
        "count(*) FILTER (WHERE outcome = 'failed') / count(*) AS failure_rate, "
        f"count(*) / ({bucket_s} / 60.0) AS throughput_per_min "
        f"FROM records WHERE {where} GROUP BY t ORDER BY t",
        params,
    )
    stages = _fetch_dicts(
        connection,
        f"SELECT {bucket} AS t, stage, {_PERCENTILES.format(x='seconds')} "
        f"FROM ({_stages_long(where)}) "
        "WHERE seconds IS NOT NULL AND (outcome = 'done' OR stage LIKE 'queue_%') "
        "GROUP BY t, stage ORDER BY t, stage",
        params * (len(STAGE_COLUMNS) + 1),
    )
    return {"overall": overall, "stages": stages}


# ------------------------------------------------------------------------------ writing
class RecordWriter:
    """The one writer of records: follows the status stream, records each finished job once.

    Status reporters only append a status to the job's log and publish it; on a final
    status (`RECORDED_OUTCOMES`) this reads the job's view, which already holds that
    status, and writes its record. A redelivered or repeated final status writes nothing:
    the key is a function of the job alone, a job recorded by this writer is remembered,
    and a record already in the store (an earlier run, another gateway replica) is left
    as it is. Only a record written here is counted in the metrics. A failure to write is
    logged; it never touches the job.
    """

    def __init__(
        self,
        jobs: JobLog,
        records: RecordStore,
        recorded_by: str,
        timeout_s: float = RECORD_TIMEOUT_S,
    ) -> None:
        self.jobs = jobs
        self.records = records
        self.recorded_by = recorded_by
        self.timeout_s = timeout_s
        self._recorded: OrderedDict[str, None] = OrderedDict()  # job ids, newest last
        self._locks: dict[str, tuple[asyncio.Lock, list[int]]] = {}  # lock, [holders]

    async def on_status(self, status: JobStatus) -> None:
        """A bus status handler: never raises, never waits longer than `timeout_s`."""
        if status.state not in RECORDED_OUTCOMES:
            return
        try:
            await asyncio.wait_for(self.record(status.job_id), self.timeout_s)
        except Exception:
            log.warning("record_not_written", job_id=status.job_id, exc_info=True)

    async def record(self, job_id: str) -> str | None:
        """Write the job's record unless it exists; the key written now, else None."""
        if job_id in self._recorded:
            return None
        lock, holders = self._locks.setdefault(job_id, (asyncio.Lock(), [0]))
        holders[0] += 1
        try:
            async with lock:  # duplicates arriving together wait for the first
                if job_id in self._recorded:
                    return None
                return await self._record(job_id)
        finally:
            holders[0] -= 1
            if holders[0] == 0:
                del self._locks[job_id]

    async def _record(self, job_id: str) -> str | None:
        view = await self.jobs.view(job_id)
        if view is None:
            return None  # deleted since
        record = build_record(view, self.recorded_by)
        key = None
        if record is not None:
            key = record_key(job_id, record["finished_at"])
            if await self.records.store.exists(key):
                key = None
            else:
                await self.records.write(record)
                metrics.observe_record(record)
        self._remember(job_id)
        return key

    def _remember(self, job_id: str) -> None:
        self._recorded[job_id] = None
        while len(self._recorded) > REMEMBERED_JOBS:
            self._recorded.popitem(last=False)
