"""The two event buses keep the same semantics: confirm, ack after handling, retry, dead-letter."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import aio_pika
import pytest

from shared.platform import eventbus, topology
from shared.platform.eventbus import (
    DEPTH_CACHE_S,
    DEPTH_STALE_S,
    Delivery,
    EventBus,
    InProcessBus,
    RabbitBus,
    Reject,
)
from shared.platform.messages import JobOptions, JobStatus, JobSubmitted
from tests.stack import purge_queues

QUEUE = topology.PREPROCESS


def job(job_id: str = "a" * 32) -> JobSubmitted:
    return JobSubmitted(
        job_id, "denoise", JobOptions(model="classic"), "jobs/x/upload/image", submitted_at=1.0
    )


@pytest.fixture(params=["inprocess", pytest.param("rabbitmq", marks=pytest.mark.servers)])
async def bus(request: pytest.FixtureRequest) -> AsyncIterator[EventBus]:
    if request.param == "rabbitmq":
        url = request.getfixturevalue("rabbitmq_url")
        await purge_queues(url)
        instance: EventBus = RabbitBus(url)
    else:
        instance = InProcessBus()
    await instance.start()
    yield instance
    await instance.close()


async def wait_until(predicate, timeout: float = 20.0) -> None:  # type: ignore[no-untyped-def]
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.05)


async def test_message_arrives_once_and_is_acked(bus: EventBus) -> None:
    received: list[Delivery] = []

    async def handler(delivery: Delivery) -> None:
        received.append(delivery)

    await bus.consume(QUEUE, handler)
    await bus.publish(QUEUE, job())
    await wait_until(lambda: len(received) == 1)
    await asyncio.sleep(0.5)
    assert len(received) == 1
    assert received[0].message == job() and received[0].attempt == 1


async def test_failing_handler_is_retried_then_dead_lettered(bus: EventBus) -> None:
    attempts: list[int] = []
    dead: list[tuple[str, dict]] = []

    async def handler(delivery: Delivery) -> None:
        attempts.append(delivery.attempt)
        raise RuntimeError("boom")

    async def on_dead(queue: topology.QueueSpec, body: bytes, headers: dict) -> None:
        dead.append((queue.service, headers))

    await bus.consume(QUEUE, handler)
    await bus.consume_dead_letters(QUEUE, on_dead)
    await bus.publish(QUEUE, job())
    await wait_until(lambda: len(dead) == 1)
    assert attempts == list(range(1, topology.DELIVERY_LIMIT + 1))
    assert dead[0][0] == "preprocess"


async def test_reject_dead_letters_at_once(bus: EventBus) -> None:
    attempts: list[int] = []
    dead: list[str] = []

    async def handler(delivery: Delivery) -> None:
        attempts.append(delivery.attempt)
        raise Reject("can never work")

    async def on_dead(queue: topology.QueueSpec, body: bytes, headers: dict) -> None:
        dead.append(queue.service)

    await bus.consume(QUEUE, handler)
    await bus.consume_dead_letters(QUEUE, on_dead)
    await bus.publish(QUEUE, job())
    await wait_until(lambda: dead == ["preprocess"])
    assert attempts == [1]


async def take_parked(bus: EventBus, count: int) -> list[tuple[bytes, dict[str, Any]]]:
    """The messages in restora.parked once there are `count` (taken off the queue)."""
    if isinstance(bus, InProcessBus):
        await wait_until(lambda: len(bus.parked) >= count)
        return [(e.body, e.headers) for e in bus.parked]
    assert isinstance(bus, RabbitBus)
    taken: list[tuple[bytes, dict[str, Any]]] = []
    async with await aio_pika.connect(bus._url) as connection:
        queue = await (await connection.channel()).get_queue(topology.PARKED_QUEUE)
        deadline = asyncio.get_running_loop().time() + 20
        while len(taken) < count:
            message = await queue.get(no_ack=True, fail=False)
            if message is None:
                assert asyncio.get_running_loop().time() < deadline, f"parked: {taken}"
                await asyncio.sleep(0.05)
                continue
            taken.append((message.body, dict(message.headers or {})))
    return taken


async def test_unreadable_dead_letter_is_parked_after_one_delivery(bus: EventBus) -> None:
    dead: list[bytes] = []

    async def handler(delivery: Delivery) -> None:
        raise Reject("can never work")

    async def on_dead(queue: topology.QueueSpec, body: bytes, headers: dict) -> None:
        dead.append(body)
        raise Reject("cannot read it")

    await bus.consume(QUEUE, handler)
    await bus.consume_dead_letters(QUEUE, on_dead)
    await bus.publish(QUEUE, job())
    [(body, headers)] = await take_parked(bus, 1)
    assert headers[eventbus.PARKED_FROM_HEADER] == QUEUE.dead_letter_queue
    assert "cannot read it" in headers[eventbus.PARKED_REASON_HEADER]
    await asyncio.sleep(1.0)
    assert dead == [body]  # handled once: parked, not redelivered


async def test_failing_dead_letter_handler_is_retried_a_bounded_number_of_times_then_parked(
    bus: EventBus, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(eventbus, "DEAD_LETTER_PAUSE_S", 0.05)
    tries: list[int] = []

    async def handler(delivery: Delivery) -> None:
        raise Reject("can never work")

    async def on_dead(queue: topology.QueueSpec, body: bytes, headers: dict) -> None:
        tries.append(int(headers.get(eventbus.DEAD_ATTEMPTS_HEADER) or 0))
        raise RuntimeError("the store is down")

    await bus.consume(QUEUE, handler)
    await bus.consume_dead_letters(QUEUE, on_dead)
    await bus.publish(QUEUE, job())
    [(_, headers)] = await take_parked(bus, 1)
    assert "the store is down" in headers[eventbus.PARKED_REASON_HEADER]
    await asyncio.sleep(1.0)
    assert tries == list(range(topology.DEAD_LETTER_ATTEMPTS))  # then parked, never again


async def test_status_fans_out_to_every_subscriber(bus: EventBus) -> None:
    first: list[JobStatus] = []
    second: list[JobStatus] = []

    async def to_first(status: JobStatus) -> None:
        first.append(status)

    async def to_second(status: JobStatus) -> None:
        second.append(status)

    await bus.subscribe_status(to_first)
    await bus.subscribe_status(to_second)
    status = JobStatus("b" * 32, "running", "denoise", at=1.0, progress=0.5)
    await bus.publish_status(status)
    await wait_until(lambda: len(first) == 1 and len(second) == 1)
    assert first[0] == status == second[0]


async def test_a_status_nobody_listens_to_is_no_error(bus: EventBus) -> None:
    await bus.publish_status(JobStatus("b" * 32, "running", "denoise", at=1.0))


@pytest.mark.servers
async def test_an_unroutable_job_message_is_an_error_not_a_loss(rabbitmq_url: str) -> None:
    bus = RabbitBus(rabbitmq_url)
    await bus.start()
    try:
        with pytest.raises(eventbus.BusUnavailable):
            await bus.publish(topology.QueueSpec("nowhere"), job())
    finally:
        await bus.close()


async def test_ping(bus: EventBus) -> None:
    assert await bus.ping()
    await bus.close()
    assert not await bus.ping()


async def test_queue_depth_counts_waiting_messages(bus: EventBus) -> None:
    assert await bus.queue_depth(QUEUE) == 0
    for n in range(3):
        await bus.publish(QUEUE, job(f"{n:032x}"))
    deadline = asyncio.get_running_loop().time() + 10
    while (depth := await bus.queue_depth(QUEUE)) != 3:  # RabbitMQ: the cached 0 expires
        assert asyncio.get_running_loop().time() < deadline, f"depth stuck at {depth}"
        await asyncio.sleep(0.1)
    assert await bus.queue_depth(topology.DENOISE) == 0  # per queue


@pytest.mark.servers
async def test_rabbitmq_queue_depth_is_cached_for_a_burst(rabbitmq_url: str) -> None:
    """A burst of submissions asks the broker once a second, not once each."""
    await purge_queues(rabbitmq_url)
    bus = RabbitBus(rabbitmq_url)
    await bus.start()
    try:
        assert await bus.queue_depth(QUEUE) == 0
        await bus.publish(QUEUE, job())
        await asyncio.sleep(0.2)  # the broker has it, but the count is less than a second old
        assert await bus.queue_depth(QUEUE) == 0
        await asyncio.sleep(DEPTH_CACHE_S)
        # older than DEPTH_CACHE_S: answered at once all the same, and asked for anew beside it
        assert await bus.queue_depth(QUEUE) == 0
        deadline = asyncio.get_running_loop().time() + 5
        while (depth := await bus.queue_depth(QUEUE)) != 1:
            assert asyncio.get_running_loop().time() < deadline, f"depth stuck at {depth}"
            await asyncio.sleep(0.02)
        # past DEPTH_STALE_S a count is waited for, never answered stale
        bus._depth_cache[QUEUE.name] = (time.monotonic() - DEPTH_STALE_S, 7)
        assert await bus.queue_depth(QUEUE) == 1
    finally:
        await bus.close()


async def test_drain_finishes_the_job_in_hand_and_takes_no_more(bus: EventBus) -> None:
    started, finished, handled = asyncio.Event(), asyncio.Event(), []

    async def slow(delivery: Delivery) -> None:
        handled.append(delivery.message.job_id)  # type: ignore[union-attr]
        started.set()
        await asyncio.sleep(1.0)
        finished.set()

    await bus.consume(QUEUE, slow)
    await bus.publish(QUEUE, job("1" * 32))
    await asyncio.wait_for(started.wait(), 20)
    await bus.publish(QUEUE, job("2" * 32))
    await bus.drain(timeout=30)
    assert finished.is_set()  # drain waited for the running handler
    await asyncio.sleep(0.5)
    assert handled == ["1" * 32]  # and took nothing new


async def test_embedded_bus_keeps_unacked_messages_across_a_restart(tmp_path) -> None:  # type: ignore[no-untyped-def]
    first = InProcessBus(journal_dir=tmp_path)
    await first.start()
    await first.publish(QUEUE, job("3" * 32))
    await first.close()  # a crash before any consumer acked it

    second = InProcessBus(journal_dir=tmp_path)
    await second.start()
    received: list[Delivery] = []

    async def handler(delivery: Delivery) -> None:
        received.append(delivery)

    await second.consume(QUEUE, handler)
    await wait_until(lambda: len(received) == 1)
    await second.close()
    assert received[0].message == job("3" * 32)
    assert not list(tmp_path.rglob("*.json"))  # acked: nothing left to replay
