"""A job's life across replicas, crashes and cancellations, on the real servers."""

from __future__ import annotations

import asyncio
import io
import os
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import numpy as np
import pytest
from PIL import Image
from skimage import data

from services.gateway import maintenance
from services.gateway.app import create_app, running_gateway
from services.gateway.maintenance import sweep
from services.preprocess.service import PreprocessService
from shared.ml.tiling import Cancelled
from shared.platform import topology
from shared.platform.blobstore import LinkOptions, LocalDirBlobStore
from shared.platform.config import PreprocessSettings
from shared.platform.eventbus import InProcessBus, RabbitBus
from shared.platform.jobs import JobKeys, JobLog, JobSpec, StatusReporter
from shared.platform.messages import JobOptions, JobStatus, RestoreRequested
from shared.platform.model_service import ModelService, RestoreInput, RestoreOutput
from tests.pipeline_helpers import png_bytes
from tests.stack import (
    ADMIN,
    Stack,
    download,
    follow_events,
    free_port,
    running_stack,
    submit,
    wait_for_state,
)

pytestmark = pytest.mark.servers


IMAGE = png_bytes(data.camera()[:64, :96])


@pytest.fixture
async def servers_stack(
    tmp_path: Path, rabbitmq_url: str, s3_server: object
) -> AsyncIterator[Stack]:
    async with running_stack(tmp_path, rabbitmq_url, s3_server) as stack:  # type: ignore[arg-type]
        yield stack


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(headers=ADMIN) as client:
        yield client


async def test_submit_on_one_replica_follow_on_another(
    servers_stack: Stack, session: aiohttp.ClientSession
) -> None:
    # A second gateway replica: its own bus connection, same broker and bucket, no workers.
    second_bus = RabbitBus(servers_stack.settings.broker_url)
    await second_bus.start()
    port = free_port()
    app = create_app(second_bus, servers_stack.store, servers_stack.settings)
    try:
        async with running_gateway(app, "127.0.0.1", port):
            other = f"http://127.0.0.1:{port}"
            status, body = await submit(session, servers_stack.url, IMAGE, "denoise", sigma="15")
            assert status == 202
            events = await follow_events(session, other, body["id"])
            assert events[-1]["state"] == "done"
            async with session.get(f"{other}/api/v1/jobs/{body['id']}") as response:
                assert (await response.json())["state"] == "done"
    finally:
        await second_bus.close()


async def test_reconnect_with_last_event_id_misses_nothing(
    servers_stack: Stack, session: aiohttp.ClientSession
) -> None:
    _, body = await submit(session, servers_stack.url, IMAGE, "denoise", sigma="15")
    await wait_for_state(session, servers_stack.url, body["id"], {"done"})
    url = f"{servers_stack.url}/api/v1/jobs/{body['id']}/events"
    all_ids = await _event_ids(session, url, last_event_id=1)
    assert len(all_ids) >= 3  # queued, running..., done (a plain PNG skips preprocess)
    # Reconnect after the second event: exactly the rest comes, in order.
    rest = await _event_ids(session, url, last_event_id=all_ids[1])
    assert rest == all_ids[2:]


async def _event_ids(session: aiohttp.ClientSession, url: str, last_event_id: int) -> list[int]:
    ids = []
    async with session.get(url, headers={"Last-Event-ID": str(last_event_id)}) as response:
        async for raw in response.content:
            line = raw.decode().strip()
            if line.startswith("id: "):
                ids.append(int(line[4:]))
    return ids


async def test_poison_message_fails_the_job_after_the_delivery_limit(
    servers_stack: Stack, session: aiohttp.ClientSession
) -> None:
    store, bus = servers_stack.store, servers_stack.bus
    job_id = "f" * 32
    keys = JobKeys(job_id)
    await JobLog(store).create(JobSpec(job_id, "denoise", JobOptions("classic"), time.time(), 3))
    # A request no gateway would send (a result format it does not know) fails every attempt:
    # not the user's error (a corrupt upload fails at once, with its reason), so it is retried.
    await store.put(keys.input, png_bytes(np.zeros((16, 16), np.uint8)))
    options = JobOptions("classic", format="nonsense")
    await bus.publish(topology.DENOISE, RestoreRequested(job_id, "denoise", options, keys.input))
    doc = await wait_for_state(session, servers_stack.url, job_id, {"failed", "done"}, timeout=60)
    assert doc["state"] == "failed"
    assert f"attempt {topology.DELIVERY_LIMIT}" in doc["error"], doc["error"]
    assert "denoise" in doc["error"]


async def test_cancelled_running_job_stops_and_its_objects_are_gone(
    tmp_path: Path, rabbitmq_url: str, s3_server: object, session: aiohttp.ClientSession
) -> None:
    started, stopped = threading.Event(), threading.Event()

    def slow_restorer(job: RestoreInput) -> RestoreOutput:
        started.set()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:  # a long inference, checking between "tiles"
            if job.should_cancel():
                stopped.set()
                raise Cancelled()
            job.on_progress(0.5)
            time.sleep(0.05)
        return RestoreOutput(job.pixels, "slow")

    async with running_stack(tmp_path, rabbitmq_url, s3_server, workers=False) as stack:  # type: ignore[arg-type]
        await PreprocessService(stack.bus, stack.store, PreprocessSettings()).start()
        slow = ModelService("denoise", topology.DENOISE, slow_restorer, stack.bus, stack.store)
        await slow.start()
        status, body = await submit(session, stack.url, IMAGE, "denoise")
        assert status == 202
        assert await asyncio.to_thread(started.wait, 30)
        async with session.delete(f"{stack.url}/api/v1/jobs/{body['id']}") as response:
            assert response.status == 200
            assert (await response.json())["state"] == "cancelled"
        assert await asyncio.to_thread(stopped.wait, 10), "the running job did not stop"
        await asyncio.sleep(1.5)  # let the worker finish its bookkeeping
        await sweep(stack.store, _reporter(stack), 3600, 3600, orphan_grace_s=0)
        assert await stack.store.list(JobKeys(body["id"]).prefix) == []
        async with session.get(f"{stack.url}/api/v1/jobs/{body['id']}") as response:
            assert response.status == 404


def _reporter(stack: Stack) -> StatusReporter:
    return StatusReporter(JobLog(stack.store), stack.bus, stage="test")


async def test_concurrent_status_writers_never_move_a_job_backwards(servers_stack: Stack) -> None:
    store = servers_stack.store
    job_id = "e" * 32
    await JobLog(store).create(JobSpec(job_id, "denoise", JobOptions("classic"), 0.0, 1))
    states = ["preprocessing", "running", "done", "running", "preprocessing", "queued"] * 3
    log = JobLog(store)
    await asyncio.gather(
        *(log.append(JobStatus(job_id, s, "w", at=1.0 + i * 0.01)) for i, s in enumerate(states))
    )
    view = await log.view(job_id)
    assert view is not None and view.state == "done"
    assert len(view.events) == len(states)  # no write lost


async def test_stalled_job_is_failed_by_the_sweeper_and_recorded(
    servers_stack: Stack, session: aiohttp.ClientSession
) -> None:
    store, settings = servers_stack.store, servers_stack.settings
    job_id = "d" * 32
    log = JobLog(store)
    await log.create(JobSpec(job_id, "denoise", JobOptions("classic"), time.time() - 7200, 1))
    await log.append(JobStatus(job_id, "running", "denoise", at=time.time() - 7000))
    url = f"{servers_stack.url}/api/v1/jobs/{job_id}"
    before = await store.list(JobKeys(job_id).prefix)
    async with session.get(url) as response:
        assert (await response.json())["state"] == "running"  # reading fails nothing
    assert await store.list(JobKeys(job_id).prefix) == before
    counts = await sweep(store, _reporter(servers_stack), settings.retention_s, 3600)
    assert counts["stalled"] == 1
    async with session.get(url) as response:
        doc = await response.json()
    assert doc["state"] == "failed" and "no progress" in doc["error"]
    # The gateway's records writer heard the sweeper's `failed` on the bus.
    deadline = time.monotonic() + 20
    while True:
        params = {"outcome": "failed"}
        async with session.get(f"{servers_stack.url}/api/v1/records", params=params) as response:
            found = [r for r in (await response.json())["records"] if r["job_id"] == job_id]
        if found or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.1)
    assert len(found) == 1 and found[0]["final_stage"] == "test", found


async def test_presigned_links_work_from_a_plain_client(
    servers_stack: Stack, session: aiohttp.ClientSession
) -> None:
    _, body = await submit(session, servers_stack.url, IMAGE, "superres")
    doc = await wait_for_state(session, servers_stack.url, body["id"], {"done"})
    for name in ("result_url", "thumbnail_url", "preview_url", "original_url"):
        async with aiohttp.ClientSession() as fresh, fresh.get(doc[name]) as response:
            assert response.status == 200, name
            payload = await response.read()
        if name == "thumbnail_url":
            assert max(Image.open(io.BytesIO(payload)).size) <= 256
    assert "attachment" in doc["result_url"] or "content-disposition" in doc["result_url"].lower()


async def test_the_done_event_carries_the_result_links(
    servers_stack: Stack, session: aiohttp.ClientSession
) -> None:
    _, body = await submit(session, servers_stack.url, IMAGE, "denoise")
    events = await follow_events(session, servers_stack.url, body["id"])
    done = events[-1]
    assert done["state"] == "done"
    assert all("result_url" not in e for e in events[:-1])
    doc = await wait_for_state(session, servers_stack.url, body["id"], {"done"})
    late = (await follow_events(session, servers_stack.url, body["id"]))[-1]  # after the end
    for name in ("result_url", "result_view_url", "thumbnail_url", "preview_url"):
        expected = await download(session, servers_stack.url, doc[name])
        assert await download(session, servers_stack.url, done[name]) == expected, name
        assert await download(session, servers_stack.url, late[name]) == expected, name
    # A result no larger than a preview is its own preview: none is stored for it.
    assert doc["preview_url"] == doc["result_view_url"]
    assert await servers_stack.store.list(JobKeys(body["id"]).preview) == []


async def test_expired_or_altered_local_links_are_403(tmp_path: Path) -> None:
    async with running_stack(tmp_path) as stack, aiohttp.ClientSession() as session:
        store = stack.store
        assert isinstance(store, LocalDirBlobStore)
        await store.put("jobs/x/result/result.png", IMAGE)
        good = store.link("jobs/x/result/result.png", LinkOptions(60))
        expired = store.link("jobs/x/result/result.png", LinkOptions(-5))
        altered = good.replace("result.png?", "result.png?x=1&").replace("expires=", "expires=9")
        async with session.get(stack.url + good) as response:
            assert response.status == 200 and await response.read() == IMAGE
        for link in (expired, altered):
            async with session.get(stack.url + link) as response:
                assert response.status == 403
                assert "expired" in (await response.json())["error"]


async def test_the_sweeper_leaves_a_specless_job_alone_until_its_objects_are_old(
    tmp_path: Path,
) -> None:
    """A submission's upload may land a moment before its spec (they are written side by
    side): objects without a spec are an orphan's only once none is recent."""
    store = LocalDirBlobStore(tmp_path, b"s")
    reporter = StatusReporter(JobLog(store), InProcessBus(), "t")
    upload = JobKeys("3" * 32).upload
    await store.put(upload, IMAGE)
    assert (await sweep(store, reporter, 3600, 10**9))["orphans"] == 0
    assert await store.exists(upload)
    past = time.time() - 2 * maintenance.ORPHAN_GRACE_S
    os.utime(store.local_path(upload), (past, past))
    assert (await sweep(store, reporter, 3600, 10**9))["orphans"] == 1
    assert await store.list("jobs/") == []


async def test_retention_sweeper_deletes_expired_jobs(tmp_path: Path) -> None:
    store = LocalDirBlobStore(tmp_path, b"s")
    log = JobLog(store)
    old, new = "1" * 32, "2" * 32
    await log.create(JobSpec(old, "denoise", JobOptions("classic"), time.time() - 10_000, 1))
    await log.create(JobSpec(new, "denoise", JobOptions("classic"), time.time(), 1))
    for job_id in (old, new):
        await log.append(JobStatus(job_id, "done", "denoise"))
    counts = await sweep(store, StatusReporter(log, InProcessBus(), "t"), 3600, 10**9)
    assert counts["expired"] == 1
    assert await store.list(f"jobs/{old}/") == []
    assert await store.list(f"jobs/{new}/") != []
