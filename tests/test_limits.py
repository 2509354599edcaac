"""Push-back at the gateway: full queues, costly jobs, oversized fields and slow clients.

Every test runs a gateway on loopback with no workers (what is queued stays queued) and small
limits or timeouts, and talks to it through aiohttp or a raw socket; every loop is bounded.
"""

from __future__ import annotations

import asyncio
import io
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from PIL import Image
from skimage import data

from services.gateway import limits
from services.gateway.app import create_app, running_gateway
from shared.ml import cost, registry
from shared.platform import topology
from shared.platform.blobstore import LocalDirBlobStore
from shared.platform.config import GatewaySettings
from shared.platform.eventbus import EventBus, InProcessBus
from shared.platform.messages import JobOptions, JobStatus, JobSubmitted
from tests.pipeline_helpers import png_bytes
from tests.stack import ADMIN, Stack, free_port, running_stack, submit

IMAGE = png_bytes(data.camera()[:64, :96])
MiB = 1 << 20


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as client:
        yield client


def _flat_png(width: int, height: int) -> bytes:
    """A flat gray PNG: a few KB however many pixels it has."""
    buf = io.BytesIO()
    Image.new("L", (width, height), 128).save(buf, format="PNG", optimize=True)
    return buf.getvalue()


async def _queue(bus: EventBus, queue: topology.QueueSpec, count: int) -> None:
    for n in range(count):
        message = JobSubmitted(f"{n:032x}", "denoise", JobOptions(model="classic"), "jobs/x/i")
        await bus.publish(queue, message)


async def _depth_reaches(bus: EventBus, queue: topology.QueueSpec, depth: int) -> None:
    """Until the bus reports `depth` (RabbitMQ counts what it confirmed a moment later, and the
    gateway's bus caches the count for a second)."""
    deadline = time.monotonic() + 10
    while await bus.queue_depth(queue) != depth:
        assert time.monotonic() < deadline, f"{queue.name} never reached {depth}"
        await asyncio.sleep(0.1)


@pytest.fixture(params=["inprocess", pytest.param("rabbitmq", marks=pytest.mark.servers)])
def broker(request: pytest.FixtureRequest) -> str | None:
    return request.getfixturevalue("rabbitmq_url") if request.param == "rabbitmq" else None


# ------------------------------------------------------------------------------ queue depth
async def test_a_full_queue_is_a_503_with_retry_after(
    tmp_path: Path, broker: str | None, session: aiohttp.ClientSession
) -> None:
    async with running_stack(tmp_path, broker, workers=False, max_queue_depth=3) as stack:
        for _ in range(3):
            status, body = await submit(session, stack.url, IMAGE, "denoise", model="classic")
            assert status == 202, body
        # Plain PNGs wait in the model's queue (straight from the gateway); the limit counts
        # the preprocess queue and the task's model queue together.
        await _depth_reaches(stack.bus, topology.queue_for_task("denoise", "classic"), 3)
        form = aiohttp.FormData()
        form.add_field("image", IMAGE, filename="photo.png", content_type="image/png")
        form.add_field("task", "denoise")
        async with session.post(f"{stack.url}/api/v1/jobs", data=form) as response:
            assert response.status == 503
            retry_after = int(response.headers["Retry-After"])
            body = await response.json()
        assert retry_after >= 1 and body["retry_after_s"] == retry_after
        assert "busy" in body["error"] and "3" in body["error"]
        assert body["limit"] == "queue depth" and body["waiting"] == 3


async def test_a_full_model_queue_refuses_its_task_only(
    tmp_path: Path, broker: str | None, session: aiohttp.ClientSession
) -> None:
    async with running_stack(tmp_path, broker, workers=False, max_queue_depth=2) as stack:
        await _queue(stack.bus, topology.SUPERRES, 2)
        await _depth_reaches(stack.bus, topology.SUPERRES, 2)
        status, body = await submit(session, stack.url, IMAGE, "superres", model="classic")
        assert status == 503, body
        assert "superres" in body["error"]
        status, body = await submit(session, stack.url, IMAGE, "denoise", model="classic")
        assert status == 202, body


async def test_a_full_queue_refuses_before_the_upload_is_sent(tmp_path: Path) -> None:
    async with running_stack(tmp_path, workers=False, max_queue_depth=1) as stack:
        await _queue(stack.bus, topology.PREPROCESS, 1)
        reader, writer = await _connect(stack)
        body = _part_head("image", filename="photo.png") + IMAGE
        writer.write(_multipart_head(len(body)))  # the headers only: the body is held back
        await writer.drain()
        answer = await asyncio.wait_for(reader.read(4096), 5)
        writer.write(body)  # what the gateway reads and drops after answering, then closes
        await asyncio.wait_for(reader.read(), 5)
        writer.close()
        assert answer.startswith(b"HTTP/1.1 503"), answer
        assert b"Retry-After: " in answer


# ------------------------------------------------------------------------------ cost
async def test_a_costly_job_is_a_413_naming_the_limit_and_a_max_side_that_fits(
    tmp_path: Path, session: aiohttp.ClientSession
) -> None:
    image = _flat_png(1000, 800)
    async with running_stack(tmp_path, workers=False, max_job_cost=1.0) as stack:
        status, body = await submit(session, stack.url, image, "denoise", model="classic")
        assert status == 413, body
        assert "RESTORA_MAX_JOB_COST" in body["error"] and "1000x800" in body["error"]
        side = body["max_side"]
        assert f"max_side={side}" in body["error"]
        assert body["cost"] > body["max_cost"] == 1.0
        # The suggestion is the largest that fits: one pixel more does not.
        classic = registry.find("denoise", "classic")
        assert classic is not None
        fits = cost.estimate(classic, cost.JobShape((1000, 800), max_side=side)).units
        over = cost.estimate(classic, cost.JobShape((1000, 800), max_side=side + 1)).units
        assert fits <= 1.0 < over
        fields = {"model": "classic", "max_side": str(side)}
        status, body = await submit(session, stack.url, image, "denoise", **fields)
        assert status == 202, body


async def test_a_tiny_6000x6000_png_no_longer_costs_minutes(
    tmp_path: Path, session: aiohttp.ClientSession
) -> None:
    """36 MP of flat colour is a 35 KB PNG inside the 40 MP limit; the default budget says no."""
    image = _flat_png(6000, 6000)
    assert len(image) < 100_000
    async with running_stack(tmp_path, workers=False) as stack:
        status, body = await submit(session, stack.url, image, "denoise")
        assert status == 413, body
        assert "max_side=" in body["error"] and 16 <= body["max_side"] < 6000


async def test_ensemble_and_superres_output_count_in_the_cost() -> None:
    esrgan = registry.find("superres", "esrgan")
    mwcnn = registry.find("denoise", "mwcnn")
    deepfill = registry.find("inpaint", "deepfill")
    assert esrgan is not None and mwcnn is not None and deepfill is not None
    plain = cost.estimate(mwcnn, cost.JobShape((1000, 1000))).units
    eight = cost.estimate(mwcnn, cost.JobShape((1000, 1000), ensemble=True)).units
    handling = cost.HANDLING_COST_PER_MEGAPIXEL
    assert eight - handling == pytest.approx(8 * (plain - handling))
    # ×4 SR works on 16× the pixels it is given.
    sr = cost.estimate(esrgan, cost.JobShape((500, 500), scale=4))
    assert sr.work_megapixels == pytest.approx(4.0)
    # max_side shrinks first, as preprocess does.
    assert cost.estimate(mwcnn, cost.JobShape((4000, 2000), max_side=1000)).size == (1000, 500)
    # DeepFill works on a window of at most 512², however large the photo.
    assert cost.estimate(deepfill, cost.JobShape((6000, 4000))).work_megapixels <= 512**2 / 1e6


def test_the_cost_model_knows_what_the_restorers_do() -> None:
    """The registry's copies of the restorers' working sizes and default iterations."""
    from shared.ml.restorers import deepfill, dip

    for task, steps in (("inpaint", dip.DIP_DEFAULT_ITERATIONS),
                        ("denoise", dip.DIP_DENOISE_ITERATIONS)):
        entry = registry.find(task, "dip")
        assert entry is not None
        assert (entry.default_iterations, entry.cost_max_side) == (steps, dip.DIP_CPU_MAX_SIDE)
    entry = registry.find("inpaint", "deepfill")
    assert entry is not None and entry.cost_max_side == deepfill.DEEPFILL_MAX_SIDE


async def test_a_long_dip_fit_is_told_how_many_iterations_fit() -> None:
    dip = registry.find("denoise", "dip")
    assert dip is not None
    settings = GatewaySettings()
    options = JobOptions(model="dip", iterations=5000)
    with pytest.raises(limits.Refused) as refused:
        limits.check_cost(dip, options, (256, 256), settings)
    assert refused.value.status == 413
    steps = refused.value.details["iterations"]
    assert f"iterations={steps}" in str(refused.value) and "RESTORA_MAX_SLOW_JOB_COST" in str(
        refused.value
    )
    limits.check_cost(dip, JobOptions(model="dip", iterations=steps), (256, 256), settings)
    # Its default iterations fit the default budget.
    limits.check_cost(dip, JobOptions(model="dip"), (4000, 3000), settings)


# ------------------------------------------------------------------------------ the form
async def test_an_oversized_text_field_is_refused_while_it_streams(tmp_path: Path) -> None:
    async with running_stack(tmp_path, workers=False) as stack:
        reader, writer = await _connect(stack)
        field_head = _part_head("task")
        writer.write(_multipart_head(len(field_head) + 2 * MiB) + field_head)
        answer = asyncio.create_task(reader.read(4096))
        sent, chunk = 0, b"a" * (16 << 10)
        while not answer.done() and sent < 2 * MiB:  # 128 chunks at most
            writer.write(chunk)
            await writer.drain()
            sent += len(chunk)
            await asyncio.sleep(0.01)
        response = await asyncio.wait_for(answer, 5)
        writer.write(b"a" * (2 * MiB - sent))  # the rest: the gateway reads it, then closes
        await asyncio.wait_for(reader.read(), 5)
        writer.close()
    assert response.startswith(b"HTTP/1.1 413"), response
    assert b"'task'" in response and b"1024 bytes" in response
    assert sent <= 512 << 10, f"the gateway answered only after {sent} bytes of the field"


async def test_too_many_form_fields_are_refused(
    tmp_path: Path, session: aiohttp.ClientSession
) -> None:
    async with running_stack(tmp_path, workers=False) as stack:
        fields = {f"extra{n}": "x" for n in range(40)}
        status, body = await submit(session, stack.url, IMAGE, "denoise", **fields)
    assert status == 413 and "more than 32 fields" in body["error"]


# ------------------------------------------------------------------------------ slow clients
SLOW = {"header_timeout_s": 0.5, "idle_timeout_s": 1.5, "body_timeout_s": 0.5}


async def test_headers_sent_too_slowly_are_cut_off(tmp_path: Path) -> None:
    async with running_stack(tmp_path, workers=False, **SLOW) as stack:
        reader, writer = await _connect(stack)
        started = time.monotonic()
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        closed = await _closed_within(reader, writer, 5.0, trickle=b"X-Slow: 1\r\n")
    assert closed is not None, "the connection was still open after 5 s"
    assert 0.4 <= closed - started < 1.4  # the header timeout, before the idle one


async def test_a_connection_that_sends_nothing_is_closed(tmp_path: Path) -> None:
    async with running_stack(tmp_path, workers=False, **SLOW) as stack:
        reader, writer = await _connect(stack)
        started = time.monotonic()
        closed = await _closed_within(reader, writer, 5.0)
    assert closed is not None and closed - started < 1.4


async def test_an_idle_keep_alive_connection_is_closed(tmp_path: Path) -> None:
    async with running_stack(tmp_path, workers=False, **SLOW) as stack:
        reader, writer = await _connect(stack)
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert head.startswith(b"HTTP/1.1 200")
        length = int(_header(head, b"content-length"))
        await asyncio.wait_for(reader.readexactly(length), 5)
        answered = time.monotonic()
        closed = await _closed_within(reader, writer, 6.0)
    assert closed is not None, "an idle connection was still open after 6 s"
    assert 1.0 <= closed - answered < 4.0  # idle_timeout_s = 1.5


async def test_a_stalled_body_is_a_408(tmp_path: Path) -> None:
    async with running_stack(tmp_path, workers=False, **SLOW) as stack:
        reader, writer = await _connect(stack)
        writer.write(_multipart_head(100_000) + _part_head("task") + b"den")
        await writer.drain()
        started = time.monotonic()
        answer = await asyncio.wait_for(reader.read(), 5)  # the answer, then EOF
        answered = time.monotonic()
        writer.close()
    assert answer.startswith(b"HTTP/1.1 408"), answer
    assert b"stalled" in answer
    assert answered - started < 3.0


async def test_a_trickling_body_is_a_408(tmp_path: Path) -> None:
    async with running_stack(tmp_path, workers=False, min_body_rate=1000, **SLOW) as stack:
        reader, writer = await _connect(stack)
        writer.write(_multipart_head(100_000) + _part_head("image", filename="a.png"))
        answer = asyncio.create_task(reader.read(4096))
        started = time.monotonic()
        while not answer.done() and time.monotonic() - started < 5:  # 20 bytes/s, ~100 writes
            writer.write(b"x")
            await writer.drain()
            await asyncio.sleep(0.05)
        response = await asyncio.wait_for(answer, 5)
        answered = time.monotonic()
        writer.close()
    assert response.startswith(b"HTTP/1.1 408"), response
    assert answered - started < 3.0


async def test_connections_over_the_cap_get_a_503(tmp_path: Path) -> None:
    settings = {"max_connections": 2, "header_timeout_s": 30.0}
    async with running_stack(tmp_path, workers=False, **settings) as stack:
        held = [await _connect(stack) for _ in range(2)]
        reader, writer = await _connect(stack)
        refused = await asyncio.wait_for(reader.read(), 5)  # the answer, then EOF
        writer.close()
        assert refused.startswith(b"HTTP/1.1 503") and b"Retry-After: 1" in refused
        assert b"too many connections" in refused
        # A connection closed makes room for the next.
        held[0][1].close()
        deadline = time.monotonic() + 5
        while (status := await _healthz_status(stack)) != 200:  # bounded by the deadline
            assert time.monotonic() < deadline, f"still refused: {status}"
            await asyncio.sleep(0.05)
        for _, held_writer in held[1:]:
            held_writer.close()


# ------------------------------------------------------------------------------ owner hook
async def test_the_owner_hook_answers_429_with_retry_after(
    tmp_path: Path, session: aiohttp.ClientSession
) -> None:
    bus = InProcessBus()
    await bus.start()
    port = free_port()
    app = create_app(
        bus, LocalDirBlobStore(tmp_path, b"secret"), GatewaySettings(port=port, data_dir=tmp_path)
    )

    async def over_the_limit(request: Any) -> limits.Refused | None:
        return limits.too_many_unfinished(unfinished=5, limit=5, retry_after_s=7)

    app[limits.OWNER_CHECK] = over_the_limit
    try:
        async with running_gateway(app, "127.0.0.1", port):
            url = f"http://127.0.0.1:{port}"
            form = aiohttp.FormData()
            form.add_field("image", IMAGE, filename="photo.png", content_type="image/png")
            form.add_field("task", "denoise")
            async with session.post(f"{url}/api/v1/jobs", data=form) as response:
                assert response.status == 429
                assert response.headers["Retry-After"] == "7"
                body = await response.json()
    finally:
        await bus.close()
    assert "5 unfinished jobs" in body["error"] and body["max_unfinished"] == 5


async def test_an_owner_with_too_many_unfinished_jobs_gets_429_until_one_finishes(
    tmp_path: Path, session: aiohttp.ClientSession
) -> None:
    """No workers, so accepted jobs stay queued: the third from one address is refused, the
    operator is not, and a job's final status frees a place."""
    image = _flat_png(32, 32)
    async with running_stack(tmp_path, workers=False, max_unfinished_per_owner=2) as stack:
        accepted = [await submit(session, stack.url, image, "denoise") for _ in range(2)]
        assert [status for status, _ in accepted] == [202, 202]

        form = aiohttp.FormData()
        form.add_field("image", image, filename="photo.png", content_type="image/png")
        form.add_field("task", "denoise")
        async with session.post(f"{stack.url}/api/v1/jobs", data=form) as response:
            assert response.status == 429
            assert int(response.headers["Retry-After"]) >= 1
            refusal = await response.json()
        assert refusal["limit"] == "unfinished jobs per owner" and refusal["max_unfinished"] == 2

        async with aiohttp.ClientSession(headers=ADMIN) as operator:
            assert (await submit(operator, stack.url, image, "denoise"))[0] == 202

        job_id = accepted[0][1]["id"]
        await stack.bus.publish_status(JobStatus(job_id=job_id, state="cancelled",
                                                 stage="test", at=time.time()))
        for _ in range(50):  # the status fan-out is asynchronous
            status, _ = await submit(session, stack.url, image, "denoise")
            if status == 202:
                break
            await asyncio.sleep(0.1)
        assert status == 202


# ------------------------------------------------------------------------------ helpers
async def _connect(stack: Stack) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    port = int(stack.url.rsplit(":", 1)[1])
    return await asyncio.open_connection("127.0.0.1", port)


BOUNDARY = "restora-test-boundary"


def _multipart_head(content_length: int) -> bytes:
    return (
        "POST /api/v1/jobs HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
        f"Content-Type: multipart/form-data; boundary={BOUNDARY}\r\n"
        f"Content-Length: {content_length}\r\n\r\n"
    ).encode()


def _part_head(name: str, filename: str | None = None) -> bytes:
    disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
    return f"--{BOUNDARY}\r\nContent-Disposition: {disposition}\r\n\r\n".encode()


def _header(head: bytes, name: bytes) -> bytes:
    for line in head.split(b"\r\n"):
        key, _, value = line.partition(b":")
        if key.strip().lower() == name:
            return value.strip()
    raise KeyError(name)


async def _closed_within(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, limit_s: float,
    trickle: bytes | None = None,
) -> float | None:
    """When the server closed the connection (monotonic time), or None if it did not within
    `limit_s`; with `trickle`, that is sent every 0.1 s meanwhile."""
    eof = asyncio.create_task(reader.read())
    deadline = time.monotonic() + limit_s
    try:
        while not eof.done() and time.monotonic() < deadline:
            if trickle is not None:
                try:
                    writer.write(trickle)
                    await writer.drain()
                except ConnectionError:
                    return time.monotonic()
            await asyncio.wait({eof}, timeout=0.1)
        if not eof.done():
            return None
        return time.monotonic()
    finally:
        eof.cancel()
        writer.close()


async def _healthz_status(stack: Stack) -> int:
    try:
        reader, writer = await _connect(stack)
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        answer = await asyncio.wait_for(reader.read(), 5)
        writer.close()
    except ConnectionError:
        return 0
    return int(answer.split(b" ", 2)[1]) if answer else 0
