"""Performance records, the records API, /metrics and the span tree of each task.

Jobs run on the embedded stack (the restart test also on the real servers); the API filter
tests write synthetic records straight into the store, so their expectations are exact.
"""

from __future__ import annotations

import asyncio
import csv
import io
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import pytest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client.parser import text_string_to_metric_families
from skimage import data

from services.gateway.app import create_app, running_gateway
from shared.platform import records, topology
from shared.platform.blobstore import BlobStore, LocalDirBlobStore
from shared.platform.config import GatewaySettings
from shared.platform.eventbus import InProcessBus
from shared.platform.health import health_app
from shared.platform.jobs import JobLog, JobSpec, StatusReporter
from shared.platform.messages import JobOptions, JobStatus
from shared.platform.records import (
    Filters,
    RecordStore,
    RecordWriter,
    build_record,
    record_key,
)
from shared.platform.telemetry import setup_tracing
from tests.pipeline_helpers import jpeg_bytes, png_bytes
from tests.servers import S3Endpoint
from tests.stack import ADMIN, ADMIN_TOKEN, Stack, follow_events, free_port, running_stack, submit

IMAGE = png_bytes(data.camera()[:48, :64])
JPEG = jpeg_bytes(data.camera()[:48, :64])
RGB = data.astronaut()[::8, ::8][:32, :40].copy()
PROCESSING = ("upload_s", "preprocess_s", "load_s", "inference_s", "encode_s", "store_s")
WAITS = ("queue_preprocess_s", "queue_inference_s")


@pytest.fixture(scope="module")
def spans() -> InMemorySpanExporter:
    exporter = InMemorySpanExporter()
    setup_tracing("restora-tests", exporter)
    return exporter


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(headers=ADMIN) as client:
        yield client


async def run_job(
    session: aiohttp.ClientSession, url: str, task: str, image: bytes | None = None,
    **fields: str,
) -> tuple[str, list[dict[str, Any]]]:
    mask = None
    if image is None:
        image = png_bytes(RGB) if task != "denoise" else IMAGE
    if task == "inpaint":
        hole = np.zeros(RGB.shape[:2], np.uint8)
        hole[10:20, 10:24] = 255
        mask = png_bytes(hole)
    status, body = await submit(session, url, image, task, mask, model="classic", **fields)
    assert status == 202, body
    return body["id"], await follow_events(session, url, body["id"], timeout=120)


async def get_records(session: aiohttp.ClientSession, url: str, **query: str) -> dict[str, Any]:
    async with session.get(f"{url}/api/v1/records", params=query) as response:
        assert response.status == 200, await response.text()
        return await response.json()


# ---------------------------------------------------------------------------- one job's record
async def test_a_done_job_has_a_complete_record(
    tmp_path: Path, session: aiohttp.ClientSession, spans: InMemorySpanExporter
) -> None:
    async with running_stack(tmp_path) as stack:
        # A JPEG goes through every stage (a plain PNG skips preprocess: below).
        job_id, events = await run_job(session, stack.url, "denoise", JPEG, sigma="25")
        assert events[-1]["state"] == "done"
        # Written beside the SSE streams, and the records API waits for it: readable at once.
        body = await get_records(session, stack.url)
    (record,) = [r for r in body["records"] if r["job_id"] == job_id]
    assert record["outcome"] == "done" and record["error"] is None
    assert record["task"] == "denoise" and record["model"] == "classic"
    assert record["device"] and record["recorded_by"] == "gateway"
    assert record["final_stage"] == "denoise"
    for column in PROCESSING + WAITS:
        assert record[column] is not None and record[column] >= 0, column
    assert sum(record[c] for c in PROCESSING + WAITS) <= record["latency_s"] + 1e-6
    assert record["finished_at"] - record["started_at"] == pytest.approx(record["latency_s"])
    assert (record["input_width"], record["input_height"]) == (64, 48)
    assert record["input_pixels"] == record["output_pixels"] == 64 * 48
    assert record["input_bytes"] == len(JPEG) and record["output_bytes"] > 0
    assert record["input_format"] == "JPEG" and record["output_format"] == "png"
    assert set(record["versions"]) == {"gateway", "preprocess", "denoise"}
    assert record["versions"]["gateway"].startswith(records.service_version().split("+")[0])
    assert record["trace_id"] and len(record["trace_id"]) == 32
    assert record["attempts"] == 1


async def test_a_plain_pngs_record_has_no_preprocess_and_waits_from_queued(
    tmp_path: Path, session: aiohttp.ClientSession
) -> None:
    async with running_stack(tmp_path) as stack:
        job_id, events = await run_job(session, stack.url, "denoise", sigma="25")
        assert events[-1]["state"] == "done"
        body = await get_records(session, stack.url)
    (record,) = [r for r in body["records"] if r["job_id"] == job_id]
    assert record["preprocess_s"] is None and record["queue_preprocess_s"] is None
    assert record["queue_inference_s"] is not None and record["queue_inference_s"] >= 0
    assert (record["input_width"], record["input_height"]) == (64, 48)
    assert record["input_format"] == "PNG" and record["input_bytes"] == len(IMAGE)
    assert set(record["versions"]) == {"gateway", "denoise"}


async def test_a_failed_job_has_a_record_with_the_reason(
    tmp_path: Path, session: aiohttp.ClientSession
) -> None:
    async with running_stack(tmp_path) as stack:
        bad = png_bytes(np.zeros((4000, 4000), np.uint8))  # over superres's 4 MP input cap
        status, job = await submit(session, stack.url, bad, "superres", model="classic")
        assert status == 202, job
        events = await follow_events(session, stack.url, job["id"])
        assert events[-1]["state"] == "failed"
        body = await get_records(session, stack.url, outcome="failed")
    (record,) = body["records"]
    assert record["job_id"] == job["id"] and record["error"]
    assert record["final_stage"] == "preprocess"
    assert record["inference_s"] is None and record["output_pixels"] is None  # never ran


async def test_records_survive_a_gateway_restart(
    tmp_path: Path, session: aiohttp.ClientSession
) -> None:
    async with running_stack(tmp_path) as stack:
        job_id, _ = await run_job(session, stack.url, "denoise", sigma="15")
    # A new gateway over the same store: no workers, nothing in memory from before.
    async with running_stack(tmp_path, workers=False) as restarted:
        body = await get_records(session, restarted.url)
    assert [r["job_id"] for r in body["records"]] == [job_id]


@pytest.mark.servers
async def test_records_survive_a_gateway_restart_on_s3(
    tmp_path: Path, session: aiohttp.ClientSession, rabbitmq_url: str, s3_server: S3Endpoint
) -> None:
    bucket = f"restora-records-{int(time.time() * 1000) % 10**9}"
    async with running_stack(tmp_path, rabbitmq_url, s3_server, s3_bucket=bucket) as stack:
        job_id, _ = await run_job(session, stack.url, "denoise", sigma="15")
    async with running_stack(
        tmp_path / "2", rabbitmq_url, s3_server, workers=False, s3_bucket=bucket
    ) as restarted:
        body = await get_records(session, restarted.url)
    assert [r["job_id"] for r in body["records"]] == [job_id]


# ---------------------------------------------------------------------------- the records writer
JOB = "ab" * 16


class _CountingStore(LocalDirBlobStore):
    """Counts the records put; a full records bucket when `full`."""

    full = False

    def __init__(self, root: Path) -> None:
        super().__init__(root, b"secret")
        self.record_puts = 0

    async def put(self, key: str, data: Any, content_type: str = "") -> None:
        if key.startswith(records.PREFIX):
            if self.full:
                raise OSError("the records bucket is full")
            self.record_puts += 1
        await super().put(key, data, content_type)


def _writer(store: BlobStore) -> RecordWriter:
    return RecordWriter(JobLog(store), RecordStore(store), recorded_by="test")


async def _job(
    store: BlobStore, states: list[tuple[str, dict[str, Any]]], writer: RecordWriter | None
) -> StatusReporter:
    """Reports `states` for JOB on a bus the writer (if any) follows."""
    await JobLog(store).create(JobSpec(JOB, "denoise", JobOptions("classic"), time.time(), 10))
    bus = InProcessBus()
    if writer is not None:
        await bus.subscribe_status(writer.on_status)
    reporter = StatusReporter(JobLog(store), bus, stage="denoise")
    for state, fields in states:
        await reporter.report(JOB, state, **fields)
    return reporter


async def test_a_status_reporter_writes_no_record(tmp_path: Path) -> None:
    store = _CountingStore(tmp_path)
    await _job(store, [("running", {}), ("done", {})], writer=None)
    assert store.record_puts == 0 and await store.list(records.PREFIX) == []


async def test_a_repeated_final_status_writes_no_second_record(tmp_path: Path) -> None:
    store = _CountingStore(tmp_path)
    writer = _writer(store)
    await _job(store, [("running", {}), ("done", {}), ("failed", {"error": "again"})], writer)
    assert store.record_puts == 1
    (record,) = await RecordStore(store).load()
    assert record["outcome"] == "done" and record["error"] is None
    assert record["recorded_by"] == "test" and record["final_stage"] == "denoise"
    # A redelivery, duplicates arriving together, another writer (a replica, a restart).
    done = JobStatus(JOB, "done", "denoise", at=time.time())
    await writer.on_status(done)
    await asyncio.gather(*(writer.on_status(done) for _ in range(5)))
    assert await _writer(store).record(JOB) is None
    assert store.record_puts == 1 and len(await store.list(records.PREFIX)) == 1


async def test_concurrent_duplicates_on_a_fresh_writer_write_once(tmp_path: Path) -> None:
    store = _CountingStore(tmp_path)
    await _job(store, [("running", {}), ("failed", {"error": "boom"})], writer=None)
    writer = _writer(store)
    keys = await asyncio.gather(*(writer.record(JOB) for _ in range(5)))
    assert [k for k in keys if k is not None] == await store.list(records.PREFIX)
    assert store.record_puts == 1


async def test_a_cancelled_job_has_no_record(tmp_path: Path) -> None:
    store = _CountingStore(tmp_path)
    await _job(store, [("running", {}), ("cancelled", {}), ("failed", {})], _writer(store))
    assert await store.list(records.PREFIX) == []


async def test_a_record_that_cannot_be_written_never_fails_the_job(tmp_path: Path) -> None:
    store = _CountingStore(tmp_path)
    store.full = True
    reporter = await _job(store, [("running", {}), ("done", {})], _writer(store))
    view = await reporter.log.view(JOB)
    assert view is not None and view.state == "done"
    assert await store.list(records.PREFIX) == []


async def test_the_sweeper_records_an_end_no_writer_heard(tmp_path: Path) -> None:
    from services.gateway.maintenance import RECORD_GRACE_S, sweep

    store = _CountingStore(tmp_path)
    log, writer = JobLog(store), _writer(store)
    reporter = StatusReporter(log, InProcessBus(), stage="gateway")  # nobody follows it
    now = time.time()
    for job_id, ended in (("1" * 32, now - 2 * RECORD_GRACE_S), ("2" * 32, now)):
        await log.create(JobSpec(job_id, "denoise", JobOptions("classic"), ended - 5, 10))
        await log.append(JobStatus(job_id, "running", "denoise", at=ended - 1))
        await log.append(JobStatus(job_id, "done", "denoise", at=ended))
    # The job that ended just now is the live writer's; the older one was missed.
    assert (await sweep(store, reporter, 10**9, 10**9, writer))["recorded"] == 1
    (record,) = await RecordStore(store).load()
    assert record["job_id"] == "1" * 32
    assert (await sweep(store, reporter, 10**9, 10**9, _writer(store)))["recorded"] == 0
    assert store.record_puts == 1


# ---------------------------------------------------------------------------- reads write nothing
async def test_no_get_writes_to_the_store_or_publishes(
    tmp_path: Path, session: aiohttp.ClientSession
) -> None:
    async with running_stack(tmp_path, maintenance_interval_s=10**6) as stack:
        job_id, _ = await run_job(session, stack.url, "denoise", sigma="25")
        # A job stalled past its deadline: only the sweeper may fail it.
        stalled = "d" * 32
        log = JobLog(stack.store)
        old = time.time() - 2 * stack.settings.job_deadline_s
        await log.create(JobSpec(stalled, "denoise", JobOptions("classic"), old, 1))
        await log.append(JobStatus(stalled, "running", "denoise", at=old))
        heard: list[JobStatus] = []

        async def hear(status: JobStatus) -> None:
            heard.append(status)

        await stack.bus.subscribe_status(hear)
        await get_records(session, stack.url)  # the job's record, written beside its SSE stream
        before = await stack.store.list("")
        paths = [
            f"/api/v1/jobs/{job_id}",
            f"/api/v1/jobs/{stalled}",
            f"/api/v1/jobs/{job_id}/events",
            f"/api/v1/jobs/{'0' * 32}",
            "/api/v1/records",
            "/api/v1/records?format=csv&outcome=done",
            "/api/v1/records/summary",
            "/dashboard",
            "/metrics",
            "/readyz",
            "/healthz",
            "/api/v1/models",
        ]
        for path in paths:
            async with session.get(stack.url + path) as response:
                assert response.status in (200, 404), path
                await response.read()
        async with session.get(f"{stack.url}/api/v1/jobs/{stalled}") as response:
            assert (await response.json())["state"] == "running"
        assert await stack.store.list("") == before
        assert heard == []


# ---------------------------------------------------------------------------- the API
def synthetic(
    n: int, task: str, model: str, outcome: str, finished_at: float, latency: float
) -> dict[str, Any]:
    """A record as build_record makes it, with chosen values."""
    stages = dict.fromkeys(records.STAGE_COLUMNS.values(), latency / 10)
    return {
        **dict.fromkeys(records.COLUMNS),
        **stages,
        "schema_version": records.SCHEMA_VERSION,
        "job_id": f"{n:032x}",
        "task": task,
        "model": model,
        "requested_model": model,
        "device": "cpu:test",
        "outcome": outcome,
        "error": "boom" if outcome == "failed" else None,
        "started_at": finished_at - latency,
        "finished_at": finished_at,
        "latency_s": latency,
        "input_pixels": 1_000_000,
        "versions": "{}",
    }


DAY = 86400.0
NOW = time.time()
SYNTHETIC = [
    synthetic(1, "denoise", "mwcnn", "done", NOW - 2 * DAY, 1.0),
    synthetic(2, "denoise", "classic", "done", NOW - 600, 2.0),
    synthetic(3, "denoise", "classic", "failed", NOW - 500, 3.0),
    synthetic(4, "superres", "esrgan", "done", NOW - 400, 4.0),
    synthetic(5, "superres", "esrgan", "done", NOW - 300, 6.0),
    synthetic(6, "inpaint", "classic", "done", NOW - 200, 8.0),
]


@pytest.fixture
async def records_stack(tmp_path: Path) -> AsyncIterator[Stack]:
    async with running_stack(tmp_path, workers=False) as stack:
        writer = RecordStore(stack.store)
        for record in SYNTHETIC:
            await writer.write(record)
        yield stack


def ids(body: dict[str, Any]) -> list[int]:
    return sorted(int(r["job_id"], 16) for r in body["records"])


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ({}, [1, 2, 3, 4, 5, 6]),
        ({"task": "denoise"}, [1, 2, 3]),
        ({"model": "classic"}, [2, 3, 6]),
        ({"outcome": "failed"}, [3]),
        ({"task": "denoise", "outcome": "done"}, [1, 2]),
        ({"from": str(NOW - DAY)}, [2, 3, 4, 5, 6]),
        ({"to": str(NOW - 450)}, [1, 2, 3]),
        ({"from": str(NOW - 550), "to": str(NOW - 250)}, [3, 4, 5]),
        ({"limit": "2"}, [5, 6]),  # the newest first
    ],
)
async def test_the_records_api_filters(
    records_stack: Stack,
    session: aiohttp.ClientSession,
    query: dict[str, str],
    expected: list[int],
) -> None:
    assert ids(await get_records(session, records_stack.url, **query)) == expected


async def test_the_records_api_takes_iso_times_and_answers_csv(
    records_stack: Stack, session: aiohttp.ClientSession
) -> None:
    since = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(NOW - DAY))  # naive = UTC
    query = {"from": since, "task": "superres", "format": "csv"}
    async with session.get(f"{records_stack.url}/api/v1/records", params=query) as response:
        assert response.status == 200
        assert response.content_type == "text/csv"
        rows = list(csv.DictReader(io.StringIO(await response.text())))
    assert sorted(int(r["job_id"], 16) for r in rows) == [4, 5]
    assert list(rows[0]) == list(records.COLUMNS)
    assert {float(r["latency_s"]) for r in rows} == {4.0, 6.0}


@pytest.mark.parametrize(
    "query",
    [
        {"task": "paint"},
        {"outcome": "cancelled"},
        {"from": "yesterday"},
        {"from": "NaN"},
        {"to": "inf"},
        {"limit": "0"},
        {"format": "xml"},
    ],
)
async def test_the_records_api_rejects_bad_filters(
    records_stack: Stack, session: aiohttp.ClientSession, query: dict[str, str]
) -> None:
    async with session.get(f"{records_stack.url}/api/v1/records", params=query) as response:
        assert response.status == 400
        assert "error" in await response.json()


async def test_the_summary_counts_rates_and_percentiles(
    records_stack: Stack, session: aiohttp.ClientSession
) -> None:
    query = {"from": str(NOW - 3600), "to": str(NOW)}
    async with session.get(f"{records_stack.url}/api/v1/records/summary", params=query) as r:
        assert r.status == 200
        summary = await r.json()
    assert summary["count"] == 5 and summary["failed"] == 1
    assert summary["failure_rate"] == pytest.approx(0.2)
    assert summary["throughput_per_min"] == pytest.approx(5 / 60)
    assert summary["latency"]["p50"] == pytest.approx(5.0)  # done jobs: 2, 4, 6, 8 s
    tasks = {t["task"]: t for t in summary["tasks"]}
    assert tasks["denoise"]["failure_rate"] == pytest.approx(0.5)
    assert tasks["superres"]["p50"] == pytest.approx(5.0)  # between 4 and 6
    assert tasks["superres"]["p99"] == pytest.approx(4.0 + 0.99 * 2.0)
    stages = {(s["task"], s["stage"]): s for s in summary["stages"]}
    assert stages[("superres", "inference")]["p50"] == pytest.approx(0.5)
    assert stages[("denoise", "total")]["n"] == 1  # a failed job's time is not a latency
    assert stages[("denoise", "queue_preprocess")]["n"] == 2  # but it did wait
    models = {(m["task"], m["model"]): m for m in summary["models"]}
    assert models[("superres", "esrgan")]["inference_s_per_mpix"] == pytest.approx(0.5)
    assert sum(b["count"] for b in summary["series"]["overall"]) == 5
    assert {s["stage"] for s in summary["series"]["stages"]} >= {"inference", "total"}


async def test_only_the_days_asked_for_are_listed(tmp_path: Path) -> None:
    store = LocalDirBlobStore(tmp_path, b"secret")
    writer = RecordStore(store)
    for record in SYNTHETIC:
        await writer.write(record)
    assert record_key("f" * 32, 0.0) == f"records/date=1970-01-01/{'f' * 32}.json"
    reader = RecordStore(store)
    recent = await reader.load(NOW - 3600, NOW)
    assert 1 not in {int(r["job_id"], 16) for r in recent}  # two days old: not fetched
    assert len(await reader.query(Filters())) == len(SYNTHETIC)


# ---------------------------------------------------------------------------- /metrics
def _families(text: str) -> dict[str, Any]:
    return {family.name: family for family in text_string_to_metric_families(text)}


async def test_metrics_parse_as_prometheus_text(
    tmp_path: Path, session: aiohttp.ClientSession
) -> None:
    async with running_stack(tmp_path) as stack:
        await run_job(session, stack.url, "denoise", sigma="20")
        for _ in range(50):  # the worker leaves its handler just after announcing `done`
            async with session.get(f"{stack.url}/metrics") as response:
                assert response.status == 200
                assert response.content_type == "text/plain"
                families = _families(await response.text())
            if all(s.value == 0 for s in families["restora_jobs_in_flight"].samples):
                break
            await asyncio.sleep(0.05)
    stage = families["restora_stage_duration_seconds"]
    assert stage.type == "histogram"
    stages = {s.labels["stage"] for s in stage.samples if s.name.endswith("_count")}
    assert stages >= {"upload", "preprocess", "load", "inference", "encode", "store"}
    assert families["restora_queue_wait_seconds"].type == "histogram"
    assert families["restora_job_duration_seconds"].type == "histogram"
    finished = families["restora_jobs_finished"]
    assert any(s.labels.get("outcome") == "done" and s.value >= 1 for s in finished.samples)
    in_flight = families["restora_jobs_in_flight"]
    assert {s.labels["stage"] for s in in_flight.samples} >= {"preprocess", "denoise"}
    assert all(s.value == 0 for s in in_flight.samples)  # nothing running any more


async def test_a_service_health_port_serves_metrics() -> None:
    from aiohttp.test_utils import TestClient, TestServer

    async def ok() -> bool:
        return True

    async with TestClient(TestServer(health_app({"broker": ok}))) as client:
        response = await client.get("/metrics")
        assert response.status == 200
        assert "restora_stage_duration_seconds" in _families(await response.text())


class _DepthBus(InProcessBus):
    """A bus that can say how deep its queues are (the gateway samples it for the gauge)."""

    async def queue_depths(self) -> dict[str, int]:
        return {topology.PREPROCESS.name: 3, topology.DENOISE.name: 0}


async def test_queue_depth_is_a_gauge_when_the_bus_reports_it(
    tmp_path: Path, session: aiohttp.ClientSession
) -> None:
    bus = _DepthBus()
    await bus.start()
    store = LocalDirBlobStore(tmp_path, b"secret")
    port = free_port()
    settings = GatewaySettings(port=port, data_dir=tmp_path, admin_token=ADMIN_TOKEN)
    app = create_app(bus, store, settings)
    url = f"http://127.0.0.1:{port}/metrics"
    async with running_gateway(app, "127.0.0.1", port), session.get(url) as response:
        families = _families(await response.text())
    await bus.close()
    depth = {s.labels["queue"]: s.value for s in families["restora_queue_depth"].samples}
    assert depth == {"restora.preprocess": 3, "restora.denoise": 0}


# ---------------------------------------------------------------------------- traces
def _ancestors(span: ReadableSpan, by_id: dict[int, ReadableSpan]) -> list[str]:
    names, parent = [], span.parent
    while parent is not None and parent.span_id in by_id:
        node = by_id[parent.span_id]
        names.append(node.name)
        parent = node.parent
    return names


async def test_each_task_is_one_trace_with_the_expected_span_tree(
    tmp_path: Path, session: aiohttp.ClientSession, spans: InMemorySpanExporter
) -> None:
    fields = {"denoise": {"sigma": "25"}, "artifacts": {}, "superres": {}, "inpaint": {}}
    async with running_stack(tmp_path) as stack:
        jobs = {task: await run_job(session, stack.url, task, **f) for task, f in fields.items()}
        body = await get_records(session, stack.url)
    trace_of = {r["job_id"]: r["trace_id"] for r in body["records"]}
    finished = spans.get_finished_spans()
    for task, (job_id, _) in jobs.items():
        trace_id = int(trace_of[job_id], 16)
        tree = [s for s in finished if s.context.trace_id == trace_id]
        by_id = {s.context.span_id: s for s in tree}
        service = topology.queue_for_task(task).service
        (inference,) = [s for s in tree if s.name == f"{service} inference"]
        assert inference.attributes is not None
        assert inference.attributes["restora.task"] == task
        assert inference.attributes["restora.megapixels"] > 0
        # Each hop's parent chain, nearest first: the service's consumer span, its publish by
        # preprocess, preprocess's consumer span, the gateway's publish, the submit request.
        # The plain PNGs of the other tasks go from the gateway straight to their model.
        via_preprocess = task == "inpaint"
        chain = _ancestors(inference, by_id)
        expected = [
            f"restora.{service} process",
            f"restora.{service} publish",
            *(["restora.preprocess process", "restora.preprocess publish"]
              if via_preprocess else []),
            "gateway submit",
        ]
        assert ("restora.preprocess process" in chain) == via_preprocess, chain
        positions = [chain.index(name) for name in expected]
        assert positions == sorted(positions), chain
        roots = [s for s in tree if s.parent is None or s.parent.span_id not in by_id]
        assert len(roots) == 1, [s.name for s in roots]  # one trace, one root per job


def test_build_record_needs_a_final_state() -> None:
    from shared.platform.jobs import fold

    spec = JobSpec("c" * 32, "denoise", JobOptions("classic"), 1.0, 10)
    assert build_record(fold(spec, []), "test") is None


async def test_the_summary_of_many_records(tmp_path: Path) -> None:
    store = LocalDirBlobStore(tmp_path, b"secret")
    writer = RecordStore(store)
    await asyncio.gather(
        *(writer.write(synthetic(i, "denoise", "m", "done", NOW, 1)) for i in range(50))
    )
    summary = await RecordStore(store).summary(Filters(start=NOW - 60, end=NOW + 60))
    assert summary["count"] == 50


# ---------------------------------------------------------------------------- the report command
def test_the_report_command_prints_a_table_and_writes_plots(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from benchmarks import report

    store = LocalDirBlobStore(tmp_path / "data" / "objects", b"secret")

    async def write() -> None:
        for record in SYNTHETIC:
            await RecordStore(store).write(record)

    asyncio.run(write())
    out = tmp_path / "report"
    start = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(NOW - 3600))
    argv = ["--from", start, "--to", str(NOW + 1), "--out", str(out)]
    assert report.main([*argv, "--data-dir", str(tmp_path / "data")]) == 0
    printed = capsys.readouterr().out
    assert "5 jobs, 1 failed (20.0 %)" in printed
    assert "superres  esrgan" in printed and "inference" in printed
    assert (out / "records.csv").read_text().count("\n") == 6  # header + 5
    assert json.loads((out / "summary.json").read_text())["count"] == 5
    pytest.importorskip("matplotlib")
    for name in ("latency_per_stage", "throughput", "queue_wait", "failure_rate", "models"):
        assert (out / f"{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
