"""Faults that must end cleanly: broker down, store hung or down, poison messages, worker death.

Bounded in time, loopback only. The broker-restart and store tests run servers of their own:
stopping or freezing the session's servers would disturb every other test.
"""

from __future__ import annotations

import asyncio
import copy
import json
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aio_pika
import aiohttp
import pytest
from skimage import data

from services.gateway import faults
from services.gateway.app import create_app, running_gateway
from services.gateway.maintenance import sweep
from services.preprocess import service as preprocess_service
from services.preprocess.service import PreprocessService
from shared.platform import eventbus, messages, topology
from shared.platform.blobstore import LocalDirBlobStore, StoreUnavailable
from shared.platform.config import GatewaySettings, PreprocessSettings
from shared.platform.eventbus import BusUnavailable, InProcessBus
from shared.platform.jobs import (
    WAITING_FOR_A_WORKER,
    JobKeys,
    JobLog,
    JobSpec,
    StatusReporter,
    heartbeats,
)
from shared.platform.messages import (
    JobOptions,
    JobStatus,
    JobSubmitted,
    MessageError,
    RestoreRequested,
)
from tests.pipeline_helpers import jpeg_bytes
from tests.servers import (
    RabbitMQServer,
    S3Endpoint,
    SeaweedS3Server,
    ServerBinaryMissing,
    in_ci,
)
from tests.stack import ADMIN, ADMIN_TOKEN, Stack, free_port, running_stack, wait_for_state

REPO = Path(__file__).resolve().parent.parent
# A JPEG: these jobs go through preprocess (a plain PNG goes from the gateway to its model).
IMAGE = jpeg_bytes(data.camera()[:48, :64])
JOB_ID = "c" * 32


# ------------------------------------------------------------------------ helpers
@dataclass
class Answer:
    status: int
    body: dict[str, Any]
    retry_after: str | None
    seconds: float
    started: float  # monotonic


async def post_job(session: aiohttp.ClientSession, url: str, **fields: str) -> Answer:
    form = aiohttp.FormData()
    form.add_field("image", IMAGE, filename="photo.jpg", content_type="image/jpeg")
    form.add_field("task", "denoise")
    for name, value in fields.items():
        form.add_field(name, value)
    started = time.monotonic()
    async with session.post(f"{url}/api/v1/jobs", data=form) as response:
        body = await response.json()
        retry_after = response.headers.get("Retry-After")
        return Answer(response.status, body, retry_after, time.monotonic() - started, started)


async def get_json(session: aiohttp.ClientSession, url: str) -> Answer:
    started = time.monotonic()
    async with session.get(url) as response:
        body = await response.json()
        retry_after = response.headers.get("Retry-After")
        return Answer(response.status, body, retry_after, time.monotonic() - started, started)


async def poll(check: Any, timeout: float, what: str, every: float = 0.1) -> Any:
    """`await check()` until it returns something truthy."""
    deadline = time.monotonic() + timeout
    while True:
        result = await check()
        if result:
            return result
        assert time.monotonic() < deadline, f"{what} did not happen within {timeout} s"
        await asyncio.sleep(every)


async def wait_ready(session: aiohttp.ClientSession, url: str, timeout: float) -> None:
    async def ready() -> bool:
        try:
            return (await get_json(session, f"{url}/readyz")).status == 200
        except aiohttp.ClientError:
            return False

    await poll(ready, timeout, f"{url} ready", every=0.3)


def _own_server(cls: type[RabbitMQServer] | type[SeaweedS3Server]) -> Any:
    try:
        return cls()
    except ServerBinaryMissing as exc:
        if in_ci():
            pytest.fail(f"{exc} (CI is set: a missing server is an error, not a skip)")
        pytest.skip(str(exc))


@pytest.fixture
def own_broker() -> Iterator[RabbitMQServer]:
    """A RabbitMQ node for this test alone, to stop and restart."""
    server = _own_server(RabbitMQServer)
    with server.start():
        yield server


@pytest.fixture
def own_s3() -> Iterator[SeaweedS3Server]:
    """An S3 server for this test alone, to freeze and to stop."""
    server = _own_server(SeaweedS3Server)
    with server.start():
        yield server


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    # The operator's credential: it reads every job (and no owner limit applies to it).
    async with aiohttp.ClientSession(
        timeout=aiohttp.ClientTimeout(total=60), headers=ADMIN
    ) as client:
        yield client


# ------------------------------------------------------------------------ the codec
def _valid_envelopes() -> list[dict[str, Any]]:
    options = JobOptions("mwcnn", sigma=15.0, max_side=512)
    samples: list[messages.Message] = [
        JobSubmitted(JOB_ID, "denoise", options, "jobs/x/upload/image", "jobs/x/upload/mask"),
        RestoreRequested(JOB_ID, "denoise", options, "jobs/x/work/input.png", icc_key="k"),
        JobStatus(JOB_ID, "running", "denoise", progress=0.5, details={"a": [1, 2]}),
    ]
    return [json.loads(messages.encode(m)) for m in samples]


MALFORMED = {
    "empty": b"",
    "not utf-8": b"\xff\xfe\xfa",
    "not json": b"{not json",
    "a list": b"[1, 2]",
    "null": b"null",
    "a string": b'"job.submitted"',
    "deep nesting": b"[" * 100_000,
    "type unhashable": b'{"type": ["job.submitted"], "version": 1, "body": {}}',
    "type unknown": b'{"type": "job.exploded", "version": 1, "body": {}}',
    "version as text": b'{"type": "job.status", "version": "1", "body": {}}',
    "version true": b'{"type": "job.status", "version": true, "body": {}}',
    "body a string": b'{"type": "job.status", "version": 1, "body": "x"}',
    "body a list": b'{"type": "job.status", "version": 1, "body": [["job_id", "x"]]}',
}


def _submitted_with(**body: Any) -> bytes:
    envelope = _valid_envelopes()[0]
    envelope["body"].update(body)
    return json.dumps(envelope).encode()


MALFORMED |= {
    "options a string": _submitted_with(options="denoise"),  # the poison seen in production
    "options pairs": _submitted_with(options=[["model", "mwcnn"]]),
    "options a number": _submitted_with(options=5),
    "options null": _submitted_with(options=None),
    "options model a number": _submitted_with(options={"model": 3}),
    "options unknown field": _submitted_with(options={"model": "m", "colour": "red"}),
    "options scale a float": _submitted_with(options={"model": "m", "scale": 2.5}),
    "options ensemble a number": _submitted_with(options={"model": "m", "ensemble": 1}),
    "job id a number": _submitted_with(job_id=5),
    "job id null": _submitted_with(job_id=None),
    "time a string": _submitted_with(submitted_at="yesterday"),
    "required field missing": b'{"type": "job.status", "version": 1, "body": {"job_id": "x"}}',
}


@pytest.mark.parametrize("body", MALFORMED.values(), ids=MALFORMED.keys())
def test_decode_raises_message_error_for_malformed_input(body: bytes) -> None:
    with pytest.raises(MessageError):
        messages.decode(body)


JUNK: list[Any] = [None, True, 0, -1, 2.5, "", "x", [], [1, "a"], {}, {"k": None}, "🙂" * 3]


def _mutate(rng: random.Random, envelope: dict[str, Any]) -> bytes:
    """A valid envelope with one part replaced, removed or added, or its bytes damaged."""
    kind = rng.randrange(5)
    if kind == 0:  # the bytes: truncated or one byte changed
        raw = bytearray(json.dumps(envelope).encode())
        cut = rng.randrange(len(raw))
        if rng.random() < 0.5:
            return bytes(raw[:cut])
        raw[cut] = rng.randrange(256)
        return bytes(raw)
    targets = [envelope, envelope["body"]]
    if isinstance(envelope["body"].get("options"), dict):
        targets.append(envelope["body"]["options"])
    target = rng.choice(targets)
    key = rng.choice(sorted(target))
    if kind == 1:
        del target[key]
    elif kind == 2:
        target[f"extra_{rng.randrange(9)}"] = rng.choice(JUNK)
    else:
        target[key] = copy.deepcopy(rng.choice(JUNK))
    return json.dumps(envelope).encode()


def test_decode_fuzz_raises_only_message_error() -> None:
    rng = random.Random(20240611)
    accepted = rejected = 0
    for _ in range(2000):
        body = _mutate(rng, copy.deepcopy(rng.choice(_valid_envelopes())))
        try:
            message = messages.decode(body)
        except MessageError:
            rejected += 1
            continue
        # What decodes is a well-formed message: it survives a round trip unchanged.
        assert messages.decode(messages.encode(message)) == message
        accepted += 1
    assert rejected > 1000 and accepted > 0


# ------------------------------------------------------------------------ poison messages
@pytest.mark.servers
async def test_poison_messages_are_parked_once_and_never_redelivered(
    tmp_path: Path, rabbitmq_url: str, s3_server: S3Endpoint
) -> None:
    poison = {name: MALFORMED[name] for name in ("options a string", "not json", "body a list")}
    async with running_stack(tmp_path, rabbitmq_url, s3_server, workers=False) as stack:
        # A job whose message will be poison: it fails at once instead of at the deadline.
        await JobLog(stack.store).create(
            JobSpec(JOB_ID, "denoise", JobOptions("mwcnn"), time.time(), 3)
        )
        await PreprocessService(stack.bus, stack.store, PreprocessSettings()).start()
        connection = await aio_pika.connect(rabbitmq_url)
        async with connection:
            channel = await connection.channel()
            jobs = await channel.get_exchange(topology.JOBS_EXCHANGE)
            sent = []
            for body in poison.values():
                # Through a work queue (preprocess rejects it, the broker dead-letters it)...
                work = body + b" "  # (trailing blanks: each copy is told apart when parked)
                await jobs.publish(aio_pika.Message(work), routing_key=topology.PREPROCESS.service)
                # ...and straight into a dead-letter queue.
                dead = body + b"  "
                await channel.default_exchange.publish(
                    aio_pika.Message(dead), routing_key=topology.DENOISE.dead_letter_queue
                )
                sent += [work, dead]
            parked = await channel.get_queue(topology.PARKED_QUEUE)
            taken: list[aio_pika.abc.AbstractIncomingMessage] = []

            async def all_parked() -> bool:
                while (message := await parked.get(no_ack=True, fail=False)) is not None:
                    taken.append(message)
                return len(taken) >= len(sent)

            await poll(all_parked, 30, "every poison message parked")
            await asyncio.sleep(2.0)  # a loop would show now: more copies, or queues refilling
            await all_parked()
            assert sorted(m.body for m in taken) == sorted(sent)  # each exactly once
            for message in taken:
                headers = message.headers or {}
                assert str(headers[eventbus.PARKED_FROM_HEADER]).endswith(".dead")
                assert str(headers[eventbus.PARKED_REASON_HEADER]).startswith("unreadable")
                assert eventbus.DEAD_ATTEMPTS_HEADER not in headers  # parked on first sight
            for name in (
                topology.PREPROCESS.name,
                topology.PREPROCESS.dead_letter_queue,
                topology.DENOISE.dead_letter_queue,
            ):
                declared = await channel.declare_queue(name, passive=True)
                assert declared.declaration_result.message_count == 0, name
        view = await JobLog(stack.store).view(JOB_ID)
        assert view is not None and view.state == "failed"
        assert "could not read the job's message" in (view.error or "")


# ------------------------------------------------------------------------ broker down
class DownBus(InProcessBus):
    async def publish(self, queue: topology.QueueSpec, message: messages.Message) -> None:
        raise BusUnavailable("the broker connection is down (reconnecting)")

    async def ping(self) -> bool:
        return False


async def test_a_job_the_broker_cannot_take_is_rolled_back_and_answered_503(
    tmp_path: Path, session: aiohttp.ClientSession
) -> None:
    store = LocalDirBlobStore(tmp_path / "objects", b"s")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    settings = GatewaySettings(port=port, data_dir=tmp_path, admin_token=ADMIN_TOKEN)
    async with running_gateway(create_app(DownBus(), store, settings), "127.0.0.1", port):
        answer = await post_job(session, url)
        assert answer.status == 503 and answer.retry_after == str(faults.RETRY_AFTER_S), answer
        assert answer.seconds < 5

        async def nothing_left() -> bool:
            return await store.list("jobs/") == []

        await poll(nothing_left, 5, "the rollback")  # no orphan: no spec, upload or event
        ready = await get_json(session, f"{url}/readyz")
        assert ready.status == 503 and ready.body == {
            "ready": False,
            "broker": False,
            "store": True,
        }


async def test_the_sweeper_deletes_a_submission_never_announced(tmp_path: Path) -> None:
    store = LocalDirBlobStore(tmp_path, b"s")
    jobs = JobLog(store)
    await jobs.create(JobSpec(JOB_ID, "denoise", JobOptions("mwcnn"), time.time() - 7200, 1))
    await store.put(JobKeys(JOB_ID).upload, IMAGE)
    counts = await sweep(store, StatusReporter(jobs, InProcessBus(), "test"), 10**9, 3600)
    assert counts["unannounced"] == 1 and counts["stalled"] == 0
    assert await store.list("jobs/") == []


@pytest.mark.servers
async def test_broker_restart_under_load_leaves_no_orphans(
    tmp_path: Path,
    own_broker: RabbitMQServer,
    s3_server: S3Endpoint,
    session: aiohttp.ClientSession,
) -> None:
    async with running_stack(tmp_path, own_broker.url, s3_server, workers=False) as stack:
        await PreprocessService(stack.bus, stack.store, PreprocessSettings()).start()
        answers: list[Answer] = []
        stop = asyncio.Event()

        async def load() -> None:
            while not stop.is_set():
                answers.append(await post_job(session, stack.url))
                await asyncio.sleep(0.05)

        loaders = [asyncio.create_task(load()) for _ in range(3)]
        try:
            await asyncio.sleep(2.0)
            await asyncio.to_thread(own_broker.stop_node)
            down_from = time.monotonic()
            ready = await get_json(session, f"{stack.url}/readyz")
            assert ready.status == 503 and ready.body["broker"] is False, ready
            assert ready.seconds < 2
            await asyncio.sleep(5.0)
            down_until = time.monotonic()
            await asyncio.to_thread(own_broker.start_node)
            await wait_ready(session, stack.url, timeout=30)
            await asyncio.sleep(2.0)
        finally:
            stop.set()
            await asyncio.gather(*loaders)

        assert {a.status for a in answers} <= {202, 503}, [a for a in answers if a.status > 202]
        # Every answer given wholly while the broker was down is a 503, and at least one
        # submission started then was refused (on a busy machine one POST may outlast the
        # outage, so the first set may be empty).
        down = [a for a in answers if down_from <= a.started <= down_until - a.seconds]
        assert all(a.status == 503 for a in down), down
        started_down = [a for a in answers if down_from <= a.started <= down_until]
        assert any(a.status == 503 for a in started_down), started_down
        assert max(a.seconds for a in down) < 5
        assert all(a.retry_after for a in answers if a.status == 503)
        accepted = {a.body["id"] for a in answers if a.status == 202}
        assert any(a.status == 202 and a.started < down_from for a in answers)
        assert any(a.status == 202 and a.started > down_until for a in answers)

        # Every accepted job's message was there: preprocess took each one (after the restart
        # for those queued just before it went down).
        log = JobLog(stack.store)

        async def all_preprocessed() -> bool:
            ids = sorted(accepted)
            views = await asyncio.gather(*(log.view(job_id) for job_id in ids))
            pending.clear()
            for job_id, view in zip(ids, views, strict=True):
                if view is None or view.state != "preprocessing" or view.progress != 1.0:
                    pending[job_id] = (
                        [(e.state, e.progress, e.error) for e in view.events] if view else None
                    )
            return not pending

        pending: dict[str, Any] = {}
        try:
            await poll(all_preprocessed, 60, "every accepted job preprocessed", every=0.5)
        except AssertionError:
            raise AssertionError(f"not preprocessed: {pending}") from None

        # And no orphan: the store holds the accepted jobs and nothing else (rollbacks done).
        async def only_accepted() -> bool:
            keys = await stack.store.list("jobs/")
            return {key.split("/")[1] for key in keys} == accepted

        await poll(only_accepted, 15, "the rollback of every refused job", every=0.5)


async def _submit_to_a_model_queue(
    stack: Stack, session: aiohttp.ClientSession
) -> tuple[Answer, list[str]]:
    """Submit a denoise job and wait until preprocess hands it on: the model queue's consumer
    here only notes the ids it is handed (in the list returned, which goes on filling)."""
    handed_on: list[str] = []

    async def model_service(delivery: eventbus.Delivery) -> None:
        handed_on.append(delivery.message.job_id)  # type: ignore[union-attr]

    async def handed_on_once() -> bool:
        return bool(handed_on)

    await stack.bus.consume(topology.DENOISE, model_service)
    answer = await post_job(session, stack.url)
    assert answer.status == 202, answer
    await poll(handed_on_once, 10, "the job handed on")
    return answer, handed_on


async def test_a_preprocessed_report_that_fails_still_hands_the_job_on_once(
    tmp_path: Path, session: aiohttp.ClientSession
) -> None:
    """Preprocess tells "preprocessing 1.0" while it hands the job on (for a small photo, the
    only status it tells): when telling it fails, the job is handed on all the same, and only
    once (no redelivery, no second copy); the job says what the gateway told until the model
    service tells more."""
    async with running_stack(tmp_path, workers=False) as stack:
        preprocess = PreprocessService(stack.bus, stack.store, PreprocessSettings())
        tell = preprocess.reporter.report

        async def hiccup_on_the_last(job_id: str, state: str, **fields: Any) -> Any:
            if state == "preprocessing" and fields.get("progress") == 1.0:
                raise StoreUnavailable("the object store is unavailable: a hiccup")
            return await tell(job_id, state, **fields)

        preprocess.reporter.report = hiccup_on_the_last  # type: ignore[method-assign]
        await preprocess.start()
        answer, handed_on = await _submit_to_a_model_queue(stack, session)
        await asyncio.sleep(1.0)  # time for a redelivery, were the job's message not settled
        assert handed_on == [answer.body["id"]]
        view = await JobLog(stack.store).view(answer.body["id"])
        assert view is not None and view.state == "queued"


# ------------------------------------------------------------------------ store hung or down
@pytest.mark.servers
async def test_store_frozen_or_down_answers_503_promptly(
    tmp_path: Path, own_s3: SeaweedS3Server, session: aiohttp.ClientSession
) -> None:
    async with running_stack(tmp_path, s3=own_s3.endpoint, workers=False) as stack:
        accepted = await post_job(session, stack.url)
        assert accepted.status == 202, accepted
        job_url = f"{stack.url}/api/v1/jobs/{accepted.body['id']}"
        assert (await get_json(session, f"{stack.url}/readyz")).status == 200

        own_s3.freeze()  # SIGSTOP: connections open, nothing ever answers
        try:
            posts = [asyncio.create_task(post_job(session, stack.url)) for _ in range(4)]
            read = asyncio.create_task(get_json(session, job_url))
            for _ in range(3):  # while those hang, the probe still answers in time
                ready = await get_json(session, f"{stack.url}/readyz")
                assert ready.status == 503 and ready.body["store"] is False, ready
                assert ready.seconds < 2, ready
            for answer in [*await asyncio.gather(*posts), await read]:
                assert answer.status == 503 and answer.retry_after, answer
                assert answer.seconds < 5, answer
        finally:
            own_s3.thaw()
        await wait_ready(session, stack.url, timeout=20)
        assert (await post_job(session, stack.url)).status == 202

        await asyncio.to_thread(own_s3.crash)  # down: connections refused
        answer = await post_job(session, stack.url)
        assert answer.status == 503 and answer.retry_after and answer.seconds < 5, answer
        ready = await get_json(session, f"{stack.url}/readyz")
        assert ready.status == 503 and ready.body["store"] is False and ready.seconds < 2


# ------------------------------------------------------------------------ worker death
async def test_a_job_whose_heartbeat_stopped_says_waiting_for_a_worker(
    tmp_path: Path, session: aiohttp.ClientSession
) -> None:
    async with running_stack(tmp_path, workers=False, worker_stale_s=1.0) as stack:
        jobs = JobLog(stack.store)
        await jobs.create(JobSpec(JOB_ID, "denoise", JobOptions("mwcnn"), time.time() - 60, 1))
        await jobs.append(JobStatus(JOB_ID, "running", "denoise", at=time.time() - 30))
        url = f"{stack.url}/api/v1/jobs/{JOB_ID}"
        doc = (await get_json(session, url)).body
        assert doc["message"] == WAITING_FOR_A_WORKER and doc["worker"]["alive"] is False

        async with heartbeats(jobs, JOB_ID, "denoise@test:1", interval_s=0.2):
            for _ in range(8):  # a worker beating: alive throughout
                await asyncio.sleep(0.25)
                doc = (await get_json(session, url)).body
                assert doc["worker"]["alive"] and doc["message"] is None, doc
            assert doc["worker"]["name"] == "denoise@test:1"
        stopped = time.monotonic()

        async def waiting() -> bool:
            return (await get_json(session, url)).body["message"] == WAITING_FOR_A_WORKER

        await poll(waiting, 5, "waiting for a worker")
        assert time.monotonic() - stopped < 1.0 + 2.0
        assert len(await stack.store.list(JobKeys(JOB_ID).events_prefix)) == 1  # no event added


def start_worker(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "tests.fault_worker"],
            cwd=REPO,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=out,
        )


@pytest.mark.servers
async def test_worker_killed_mid_inference_then_the_job_is_done_exactly_once(
    tmp_path: Path, rabbitmq_url: str, s3_server: S3Endpoint, session: aiohttp.ClientSession
) -> None:
    stale_s = 2.0
    async with running_stack(
        tmp_path, rabbitmq_url, s3_server, workers=False, worker_stale_s=stale_s
    ) as stack:
        await PreprocessService(stack.bus, stack.store, PreprocessSettings()).start()
        port = free_port()
        env = {
            **os.environ,
            **s3_server.env(),
            "RESTORA_S3_BUCKET": stack.settings.s3_bucket,
            "RESTORA_BROKER_URL": rabbitmq_url,
            "RESTORA_HEALTH_PORT": str(port),
            "RESTORA_DEVICE": "cpu",
            "RESTORA_THREADS": "1",
            "RESTORA_HEARTBEAT_INTERVAL_S": "0.5",
            "FAULT_WORKER_STEPS": "16",
            "FAULT_WORKER_STEP_S": "0.25",
        }
        log = tmp_path / "worker.log"
        first = start_worker(env, log)
        try:
            await wait_ready(session, f"http://127.0.0.1:{port}", timeout=90)
            answer = await post_job(session, stack.url, model="dip", iterations="10")
            assert answer.status == 202, answer
            url = f"{stack.url}/api/v1/jobs/{answer.body['id']}"

            async def inferring() -> dict[str, Any] | None:
                doc = (await get_json(session, url)).body
                busy = doc["state"] == "running" and doc["progress"] and doc["worker"]["alive"]
                return doc if busy else None

            doc = await poll(inferring, 60, "the job running")
            assert doc["worker"]["name"].startswith("dip@")
            first.send_signal(signal.SIGKILL)  # kill -9, mid-inference
            first.wait(timeout=10)
        finally:
            if first.poll() is None:
                first.kill()
        killed = time.monotonic()

        async def waiting() -> dict[str, Any] | None:
            doc = (await get_json(session, url)).body
            return doc if doc["message"] == WAITING_FOR_A_WORKER else None

        doc = await poll(waiting, 20, "waiting for a worker")
        assert time.monotonic() - killed < stale_s + 5
        assert doc["state"] == "running" and doc["worker"]["alive"] is False

        second = start_worker(env, log)  # the broker redelivers the unacked message
        try:
            doc = await wait_for_state(
                session, stack.url, answer.body["id"], {"done", "failed"}, 90
            )
            assert doc["state"] == "done", (doc, log.read_text()[-3000:])
            assert doc["message"] is None and doc["worker"] is None
        finally:
            second.terminate()
            assert second.wait(timeout=30) == 0, log.read_text()[-3000:]
        view = await JobLog(stack.store).view(answer.body["id"])
        assert view is not None
        states = [e.state for e in view.events]
        assert states.count("done") == 1, states
        starts = [e for e in view.events if e.state == "running" and e.progress is None]
        assert len(starts) == 2, states  # ran twice (killed, then again), done once


async def test_a_worker_can_leave_its_first_beat_to_work_that_lasts(tmp_path: Path) -> None:
    """A service that tells a status as it starts writes its first beat only if the work
    outlasts `first_after_s`; then every interval as before."""
    jobs = JobLog(LocalDirBlobStore(tmp_path, b"test-secret"))
    async with heartbeats(jobs, JOB_ID, "denoise@test:1", interval_s=0.2, first_after_s=0.4):
        await asyncio.sleep(0.25)
        assert await jobs.heartbeat(JOB_ID) is None
        await asyncio.sleep(0.3)
        beat = await jobs.heartbeat(JOB_ID)
        assert beat is not None and beat.worker == "denoise@test:1"


@pytest.mark.parametrize(("normalize_s", "told"), [(0.0, [1.0]), (0.5, [None, 1.0])])
async def test_preprocessing_is_told_as_it_starts_only_when_it_lasts(
    tmp_path: Path, session: aiohttp.ClientSession, monkeypatch: pytest.MonkeyPatch,
    normalize_s: float, told: list[float | None],
) -> None:
    """A photo normalised within QUIET_START_S is told once, as it is handed on; a slower one
    is told as it starts too. Either way the record places the preprocessing in time."""
    monkeypatch.setattr(preprocess_service, "QUIET_START_S", 0.2)
    normalize = preprocess_service.normalize

    def taking_its_time(*args: Any, **kwargs: Any) -> Any:
        time.sleep(normalize_s)  # on the normalising thread, as a large photo would
        return normalize(*args, **kwargs)

    monkeypatch.setattr(preprocess_service, "normalize", taking_its_time)
    async with running_stack(tmp_path, workers=False) as stack:
        await PreprocessService(stack.bus, stack.store, PreprocessSettings()).start()
        answer, _ = await _submit_to_a_model_queue(stack, session)
        view = await JobLog(stack.store).view(answer.body["id"])
        assert view is not None
        assert [e.progress for e in view.events if e.state == "preprocessing"] == told
