"""The event bus: RabbitMQ through aio-pika, or in-process with the same semantics.

Semantics both implementations keep:
- `publish` returns only once the broker has confirmed the (persistent) message.
- A consumer's handler runs once per delivery; the message is acked only after the
  handler returns, i.e. after its result is stored and the next event published.
- A handler raising `Reject` dead-letters the message at once (it can never succeed);
  any other exception requeues it, and after `DELIVERY_LIMIT` deliveries it goes to the
  service's dead-letter queue instead.
- A dead-letter handler raising `Reject` (it cannot read the message) parks the message in
  `restora.parked`; any other exception retries it, after a pause, up to
  `DEAD_LETTER_ATTEMPTS` times, then parks it too: a dead letter never loops.
- `publish` raises `BusUnavailable` at once while the broker connection is down, and when the
  broker does not confirm within the publish timeout; `ping` is false while reconnecting.
- Status events fan out to every subscriber (every gateway replica).
- The bus carries W3C trace context in message headers, in and out.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import secrets
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import aio_pika
import aiormq
import structlog
from aio_pika.abc import (
    AbstractChannel,
    AbstractExchange,
    AbstractIncomingMessage,
    AbstractQueue,
    AbstractRobustConnection,
)

from shared.platform import messages, telemetry, topology
from shared.platform.logging import get_logger
from shared.platform.messages import JobStatus, Message
from shared.platform.topology import QueueSpec

log = get_logger(__name__)

#: How long RabbitBus.queue_depth reuses a count: a burst of submissions asks the broker once.
DEPTH_CACHE_S = 1.0
#: Up to this age a count is still answered at once while a fresh one is asked for beside it:
#: a submission never waits for the broker's round trip unless the count is this old.
DEPTH_STALE_S = 5.0


class Reject(Exception):
    """Raised by a handler for a message that no retry can ever process."""


class BusUnavailable(RuntimeError):
    """The broker is unreachable or did not confirm a publish in time."""


# Headers a parked or retried dead letter carries.
DEAD_ATTEMPTS_HEADER = "x-restora-dead-letter-attempts"
PARKED_FROM_HEADER = "x-restora-parked-from"
PARKED_REASON_HEADER = "x-restora-parked-reason"
# The pause before a failed dead letter is tried again grows with its attempts, up to this.
DEAD_LETTER_PAUSE_S = 1.0
DEAD_LETTER_MAX_PAUSE_S = 10.0
PUBLISH_TIMEOUT_S = 5.0


def _dead_attempts(headers: dict[str, Any]) -> int:
    try:
        return int(str(headers.get(DEAD_ATTEMPTS_HEADER) or 0))
    except ValueError:
        return 0


def _dead_letter_pause(attempts: int) -> float:
    return min(DEAD_LETTER_PAUSE_S * attempts, DEAD_LETTER_MAX_PAUSE_S)


@dataclass(frozen=True)
class Delivery:
    message: Message
    attempt: int  # 1 for the first delivery
    headers: dict[str, Any] = field(default_factory=dict)

    @property
    def is_last_attempt(self) -> bool:
        return self.attempt >= topology.DELIVERY_LIMIT


Handler = Callable[[Delivery], Awaitable[None]]
DeadLetterHandler = Callable[[QueueSpec, bytes, dict[str, Any]], Awaitable[None]]
StatusHandler = Callable[[JobStatus], Awaitable[None]]


class EventBus(Protocol):
    async def start(self) -> None: ...
    async def close(self) -> None: ...
    async def drain(self, timeout: float) -> None: ...
    async def publish(self, queue: QueueSpec, message: Message) -> None: ...
    async def publish_status(self, status: JobStatus) -> None: ...
    async def consume(self, queue: QueueSpec, handler: Handler) -> None: ...
    async def consume_dead_letters(self, queue: QueueSpec, handler: DeadLetterHandler) -> None: ...
    async def subscribe_status(self, handler: StatusHandler) -> None: ...
    async def ping(self) -> bool: ...
    async def queue_depths(self) -> dict[str, int]: ...
    async def queue_depth(self, queue: QueueSpec) -> int: ...


class _InFlight:
    """Counts handlers running now, so a shutdown can wait for them to finish."""

    def __init__(self) -> None:
        self.count = 0
        self._idle = asyncio.Event()
        self._idle.set()

    @contextlib.contextmanager
    def track(self) -> Iterator[None]:
        self.count += 1
        self._idle.clear()
        try:
            yield
        finally:
            self.count -= 1
            if self.count == 0:
                self._idle.set()

    async def wait_idle(self, timeout: float) -> bool:
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
            return True
        except TimeoutError:
            return False


def _outgoing_headers() -> dict[str, Any]:
    return dict(telemetry.inject_context({}))


async def _run_handler(
    queue: QueueSpec, body: bytes, headers: dict[str, Any], attempt: int, handler: Handler
) -> None:
    """Decode, open the consumer span in the publisher's trace, call the handler."""
    with telemetry.consumer_span(
        f"{queue.name} process", headers, **{"messaging.destination": queue.name}
    ) as span:
        try:
            message = messages.decode(body)
        except messages.MessageError as exc:
            raise Reject(str(exc)) from exc
        job_id = getattr(message, "job_id", "")
        span.set_attribute("restora.job_id", job_id)
        span.set_attribute("restora.task", getattr(message, "task", ""))
        span.set_attribute("messaging.delivery_attempt", attempt)
        # Every log line written while handling carries the job id (and, via the logging
        # processor, the trace and span ids).
        with structlog.contextvars.bound_contextvars(job_id=job_id, queue=queue.name):
            await handler(Delivery(message=message, attempt=attempt, headers=headers))


# --------------------------------------------------------------------------------------
# In-process bus (embedded mode, fast tests)
# --------------------------------------------------------------------------------------
@dataclass
class _Envelope:
    body: bytes
    headers: dict[str, Any]
    attempt: int = 1
    journal_path: Path | None = None


class _Journal:
    """Work messages on disk until acked, so the embedded mode loses no job to a restart.

    One JSON file per unacked message under `<dir>/<queue>/`; written before publish
    returns (as RabbitMQ's confirm), deleted on ack or dead-letter, replayed on start.
    """

    def __init__(self, root: Path) -> None:
        self.root = root

    def record(self, queue: str, envelope: _Envelope) -> None:
        folder = self.root / queue
        folder.mkdir(parents=True, exist_ok=True)
        path = (
            envelope.journal_path or folder / f"{time.time_ns():020d}-{secrets.token_hex(4)}.json"
        )
        payload = {
            "body": envelope.body.decode(),
            "headers": envelope.headers,
            "attempt": envelope.attempt,
        }
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(payload))
        tmp.replace(path)
        envelope.journal_path = path

    def forget(self, envelope: _Envelope) -> None:
        if envelope.journal_path is not None:
            envelope.journal_path.unlink(missing_ok=True)

    def replay(self, queue: str) -> list[_Envelope]:
        folder = self.root / queue
        envelopes = []
        for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
            raw = json.loads(path.read_text())
            envelopes.append(_Envelope(raw["body"].encode(), raw["headers"], raw["attempt"], path))
        return envelopes


class InProcessBus:
    """Queues in memory, same ack/retry/dead-letter/fan-out semantics as RabbitMQ."""

    def __init__(self, journal_dir: Path | None = None) -> None:
        self._journal = _Journal(journal_dir) if journal_dir is not None else None
        self._queues: dict[str, asyncio.Queue[_Envelope]] = {}
        self.dead_letters: dict[str, list[_Envelope]] = {}
        self.parked: list[_Envelope] = []
        self._dead_queues: dict[str, asyncio.Queue[_Envelope]] = {}
        self._status_subscribers: list[StatusHandler] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._closed = False
        self._draining = False
        self._in_flight = _InFlight()

    def _queue(self, name: str) -> asyncio.Queue[_Envelope]:
        return self._queues.setdefault(name, asyncio.Queue())

    def _dead_queue(self, queue: QueueSpec) -> asyncio.Queue[_Envelope]:
        return self._dead_queues.setdefault(queue.dead_letter_queue, asyncio.Queue())

    async def start(self) -> None:
        for spec in topology.WORK_QUEUES:
            queue = self._queue(spec.name)
            for envelope in self._journal.replay(spec.name) if self._journal else []:
                queue.put_nowait(envelope)

    async def drain(self, timeout: float) -> None:
        """Take no new messages; wait (up to `timeout`) for the handlers running now."""
        self._draining = True
        await self._in_flight.wait_idle(timeout)

    async def close(self) -> None:
        self._closed = True
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks.clear()

    async def publish(self, queue: QueueSpec, message: Message) -> None:
        with telemetry.tracer().start_as_current_span(
            f"{queue.name} publish", kind=telemetry.trace.SpanKind.PRODUCER
        ):
            envelope = _Envelope(messages.encode(message), _outgoing_headers())
            if self._journal is not None:
                self._journal.record(queue.name, envelope)
            self._queue(queue.name).put_nowait(envelope)

    async def publish_status(self, status: JobStatus) -> None:
        # Decode a fresh copy per subscriber, as each replica would receive its own.
        body = messages.encode(status)
        for subscriber in list(self._status_subscribers):
            try:
                await subscriber(messages.decode(body))  # type: ignore[arg-type]
            except Exception:
                log.exception("status_subscriber_failed", job_id=status.job_id)

    async def subscribe_status(self, handler: StatusHandler) -> None:
        self._status_subscribers.append(handler)

    async def consume(self, queue: QueueSpec, handler: Handler) -> None:
        self._tasks.append(asyncio.create_task(self._consume_loop(queue, handler)))

    async def _consume_loop(self, queue: QueueSpec, handler: Handler) -> None:
        source = self._queue(queue.name)
        while not self._closed:
            envelope = await source.get()
            if self._draining:
                source.put_nowait(envelope)  # shutting down: leave it for the next consumer
                return
            try:
                with self._in_flight.track():
                    await _run_handler(
                        queue, envelope.body, envelope.headers, envelope.attempt, handler
                    )
            except asyncio.CancelledError:
                source.put_nowait(envelope)  # unacked at shutdown: stays queued
                raise
            except Reject as exc:
                self._dead_letter(queue, envelope, f"rejected: {exc}")
            except Exception as exc:
                self._retry_or_dead_letter(queue, envelope, exc)
            else:
                self._ack(envelope)

    def _ack(self, envelope: _Envelope) -> None:
        if self._journal is not None:
            self._journal.forget(envelope)

    def _retry_or_dead_letter(self, queue: QueueSpec, envelope: _Envelope, exc: Exception) -> None:
        if envelope.attempt >= topology.DELIVERY_LIMIT:
            self._dead_letter(queue, envelope, f"delivery limit reached: {exc!r}")
            return
        envelope.attempt += 1
        if self._journal is not None:
            self._journal.record(queue.name, envelope)
        self._queue(queue.name).put_nowait(envelope)

    def _dead_letter(self, queue: QueueSpec, envelope: _Envelope, reason: str) -> None:
        log.warning("dead_lettered", queue=queue.name, reason=reason)
        self._ack(envelope)  # off the work queue; the dead-letter consumer fails the job
        headers = {**envelope.headers, "x-delivery-count": envelope.attempt}
        dead = _Envelope(envelope.body, headers, envelope.attempt)
        self.dead_letters.setdefault(queue.dead_letter_queue, []).append(dead)
        self._dead_queue(queue).put_nowait(dead)

    async def consume_dead_letters(self, queue: QueueSpec, handler: DeadLetterHandler) -> None:
        async def loop() -> None:
            source = self._dead_queue(queue)
            while not self._closed:
                envelope = await source.get()
                try:
                    await handler(queue, envelope.body, envelope.headers)
                except Reject as exc:
                    self._park(queue, envelope, f"unreadable: {exc}")
                except Exception as exc:
                    log.exception("dead_letter_handler_failed", queue=queue.dead_letter_queue)
                    attempts = _dead_attempts(envelope.headers) + 1
                    if attempts >= topology.DEAD_LETTER_ATTEMPTS:
                        self._park(queue, envelope, f"failed {attempts} times: {exc!r}")
                        continue
                    await asyncio.sleep(_dead_letter_pause(attempts))
                    headers = {**envelope.headers, DEAD_ATTEMPTS_HEADER: attempts}
                    source.put_nowait(_Envelope(envelope.body, headers, envelope.attempt))

        self._tasks.append(asyncio.create_task(loop()))

    def _park(self, queue: QueueSpec, envelope: _Envelope, reason: str) -> None:
        log.warning("dead_letter_parked", queue=queue.dead_letter_queue, reason=reason)
        headers = {
            **envelope.headers,
            PARKED_FROM_HEADER: queue.dead_letter_queue,
            PARKED_REASON_HEADER: reason[:1000],
        }
        self.parked.append(_Envelope(envelope.body, headers, envelope.attempt))

    @property
    def ready(self) -> bool:
        return not self._closed

    async def ping(self) -> bool:
        return self.ready

    async def queue_depths(self) -> dict[str, int]:
        """Messages waiting in each work queue, for the gateway's queue-depth gauge."""
        return {spec.name: self._queue(spec.name).qsize() for spec in topology.WORK_QUEUES}

    async def queue_depth(self, queue: QueueSpec) -> int:
        """Messages waiting in `queue` (not those being handled now)."""
        return self._queue(queue.name).qsize()


# --------------------------------------------------------------------------------------
# RabbitMQ bus
# --------------------------------------------------------------------------------------
class RabbitBus:
    """aio-pika: robust connection, publisher confirms, persistent messages, quorum queues."""

    _ids = itertools.count()

    def __init__(
        self,
        url: str,
        prefetch: int = topology.PREFETCH,
        publish_timeout_s: float = PUBLISH_TIMEOUT_S,
    ) -> None:
        self._url = url
        self._prefetch = prefetch
        self._publish_timeout_s = publish_timeout_s
        self._connection: AbstractRobustConnection | None = None
        self._link_up = False
        self._restored = asyncio.Event()  # set while _link_up
        self._publish_channel: AbstractChannel | None = None
        self._jobs: AbstractExchange | None = None
        self._status: AbstractExchange | None = None
        self._consumer_channels: list[AbstractChannel] = []
        self._work_consumers: list[tuple[AbstractQueue, str]] = []
        self._in_flight = _InFlight()
        self._depth_channel: AbstractChannel | None = None
        self._depth_lock = asyncio.Lock()
        self._depth_cache: dict[str, tuple[float, int]] = {}  # queue -> (monotonic time, count)
        self._depth_refreshes: dict[str, asyncio.Task[None]] = {}  # at most one per queue

    async def start(self) -> None:
        self._connection = await aio_pika.connect_robust(
            self._url, client_properties={"connection_name": "restora"}
        )
        # Down from the moment the connection drops until it and its channels are restored.
        self._connection.close_callbacks.add(self._on_link_down)
        self._connection.reconnect_callbacks.add(self._on_link_up)
        # on_return_raises: a message no queue takes is an error, not a silent loss.
        self._publish_channel = await self._connection.channel(
            publisher_confirms=True, on_return_raises=True
        )
        self._jobs, self._status = await declare_topology(self._publish_channel)
        self._on_link_up(None)

    def _on_link_down(self, sender: object, exc: BaseException | None = None) -> None:
        if self._link_up and not getattr(sender, "close_called", False):
            log.warning("broker_connection_lost", error=repr(exc))
        self._link_up = False
        self._restored.clear()

    def _on_link_up(self, sender: object) -> None:
        if sender is not None:
            log.info("broker_reconnected")
        self._link_up = True
        self._restored.set()

    @property
    def ready(self) -> bool:
        """Connected, with the publishing channel open: not while the connection recovers."""
        connection, channel = self._connection, self._publish_channel
        return (
            self._link_up
            and connection is not None
            and not connection.is_closed
            and connection.connected.is_set()
            and channel is not None
            and not channel.is_closed
        )

    async def drain(self, timeout: float) -> None:
        """Cancel the work consumers (no new deliveries), then wait (up to `timeout`) for the
        handlers running now to store, publish and ack, so a stopping pod wastes no job."""
        for queue, tag in self._work_consumers:
            with contextlib.suppress(Exception):
                await queue.cancel(tag)
        self._work_consumers.clear()
        if not await self._in_flight.wait_idle(timeout):
            log.warning("drain_timeout", in_flight=self._in_flight.count)

    async def close(self) -> None:
        for refresh in self._depth_refreshes.values():
            refresh.cancel()
        if self._connection is not None:
            await self._connection.close()
            self._connection = None

    async def _publish(
        self,
        exchange: AbstractExchange | None,
        key: str,
        body: bytes,
        headers: dict[str, Any] | None = None,
        mandatory: bool = True,
    ) -> None:
        assert exchange is not None, "bus not started"
        await self._wait_until_ready()
        message = aio_pika.Message(
            body,
            content_type="application/json",
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            headers=_outgoing_headers() if headers is None else headers,
        )
        # With publisher confirms, this await returns once the broker has the message;
        # mandatory=True (with on_return_raises) makes an unroutable message an error.
        try:
            await asyncio.wait_for(
                exchange.publish(message, routing_key=key, mandatory=mandatory),
                self._publish_timeout_s,
            )
        except TimeoutError as exc:
            raise BusUnavailable(
                f"the broker did not confirm within {self._publish_timeout_s:g} s"
            ) from exc
        except (
            aiormq.exceptions.AMQPError,
            aiormq.exceptions.ChannelInvalidStateError,
            ConnectionError,
        ) as exc:
            raise BusUnavailable(f"publishing failed: {exc!r}") from exc

    async def _wait_until_ready(self) -> None:
        """Fail at once while the connection is down (a robust channel would wait for the
        broker to come back); while it is up again but its channels are still being restored
        (consumers may already get messages then), wait for them, within the publish timeout."""
        if self.ready:
            return
        connection = self._connection
        if connection is None or connection.is_closed or not connection.connected.is_set():
            raise BusUnavailable("the broker connection is down (reconnecting)")
        try:
            await asyncio.wait_for(self._restored.wait(), self._publish_timeout_s)
        except TimeoutError as exc:
            raise BusUnavailable("the broker connection is still being restored") from exc
        if not self.ready:
            raise BusUnavailable("the broker connection is down (reconnecting)")

    async def publish(self, queue: QueueSpec, message: Message) -> None:
        with telemetry.tracer().start_as_current_span(
            f"{queue.name} publish", kind=telemetry.trace.SpanKind.PRODUCER
        ):
            await self._publish(self._jobs, queue.routing_key, messages.encode(message))

    async def publish_status(self, status: JobStatus) -> None:
        # Not mandatory: with no gateway listening the fan-out has no queue, and that is fine
        # (the status is in the job's event log already).
        await self._publish(self._status, "", messages.encode(status), mandatory=False)

    async def _consumer_channel(self) -> AbstractChannel:
        assert self._connection is not None, "bus not started"
        channel = await self._connection.channel()
        await channel.set_qos(prefetch_count=self._prefetch)
        self._consumer_channels.append(channel)
        return channel

    async def consume(self, queue: QueueSpec, handler: Handler) -> None:
        channel = await self._consumer_channel()
        amqp_queue = await channel.get_queue(queue.name, ensure=True)

        async def on_message(incoming: AbstractIncomingMessage) -> None:
            headers = dict(incoming.headers or {})
            # Quorum queues count earlier failed deliveries in x-delivery-count.
            attempt = int(str(headers.get("x-delivery-count") or 0)) + 1
            with self._in_flight.track():
                try:
                    await _run_handler(queue, incoming.body, headers, attempt, handler)
                except Reject as exc:
                    log.warning("message_rejected", queue=queue.name, reason=str(exc))
                    await incoming.reject(requeue=False)
                except Exception:
                    log.exception("handler_failed", queue=queue.name, attempt=attempt)
                    await incoming.nack(requeue=True)
                else:
                    await incoming.ack()

        tag = await amqp_queue.consume(on_message, no_ack=False)
        self._work_consumers.append((amqp_queue, tag))

    async def consume_dead_letters(self, queue: QueueSpec, handler: DeadLetterHandler) -> None:
        channel = await self._consumer_channel()
        dead_queue = await channel.get_queue(queue.dead_letter_queue, ensure=True)

        async def on_message(incoming: AbstractIncomingMessage) -> None:
            headers = dict(incoming.headers or {})
            try:
                await handler(queue, incoming.body, headers)
            except Reject as exc:
                await self._settle_dead_letter(incoming, queue, headers, f"unreadable: {exc}")
            except Exception as exc:
                log.exception("dead_letter_handler_failed", queue=queue.dead_letter_queue)
                attempts = _dead_attempts(headers) + 1
                if attempts >= topology.DEAD_LETTER_ATTEMPTS:
                    reason = f"failed {attempts} times: {exc!r}"
                    await self._settle_dead_letter(incoming, queue, headers, reason)
                else:
                    await asyncio.sleep(_dead_letter_pause(attempts))
                    await self._settle_dead_letter(
                        incoming, queue, {**headers, DEAD_ATTEMPTS_HEADER: attempts}
                    )
            else:
                await incoming.ack()

        await dead_queue.consume(on_message, no_ack=False)

    async def _settle_dead_letter(
        self,
        incoming: AbstractIncomingMessage,
        queue: QueueSpec,
        headers: dict[str, Any],
        park_reason: str | None = None,
    ) -> None:
        """Park the dead letter (with a reason) or put it back at the end of its queue (with
        its attempts counted), confirmed before it is acked: it is never lost, and never
        requeued by the broker itself (that would bring it back at once, uncounted)."""
        assert self._publish_channel is not None, "bus not started"
        if park_reason is not None:
            log.warning("dead_letter_parked", queue=queue.dead_letter_queue, reason=park_reason)
            headers = {
                **headers,
                PARKED_FROM_HEADER: queue.dead_letter_queue,
                PARKED_REASON_HEADER: park_reason[:1000],
            }
        target = topology.PARKED_QUEUE if park_reason is not None else queue.dead_letter_queue
        try:
            await self._publish(
                self._publish_channel.default_exchange, target, incoming.body, headers
            )
        except BusUnavailable as exc:
            log.warning("dead_letter_not_settled", queue=queue.dead_letter_queue, error=str(exc))
            # Left unacked: the broker redelivers it once this channel is gone or restored;
            # the pause keeps a persistent failure from spinning.
            await asyncio.sleep(DEAD_LETTER_MAX_PAUSE_S)
            with contextlib.suppress(Exception):
                await incoming.nack(requeue=True)
            return
        await incoming.ack()

    async def subscribe_status(self, handler: StatusHandler) -> None:
        channel = await self._consumer_channel()
        # One exclusive, auto-deleted queue per replica: every replica hears every status.
        own = await channel.declare_queue(exclusive=True, auto_delete=True)
        await own.bind(topology.STATUS_EXCHANGE)

        async def on_message(incoming: AbstractIncomingMessage) -> None:
            async with incoming.process(ignore_processed=True):
                try:
                    status = messages.decode(incoming.body)
                except messages.MessageError:
                    log.warning("bad_status_message")
                    return
                if isinstance(status, JobStatus):
                    await handler(status)

        await own.consume(on_message)

    async def ping(self) -> bool:
        return self.ready

    async def queue_depths(self) -> dict[str, int]:
        """Messages ready in each work queue, for the gateway's queue-depth gauge."""
        async with self._depth_lock:
            depths = {q.name: await self._declared_depth(q.name) for q in topology.WORK_QUEUES}
            now = time.monotonic()
            self._depth_cache.update((name, (now, depth)) for name, depth in depths.items())
            return depths

    async def queue_depth(self, queue: QueueSpec) -> int:
        """Messages ready in `queue`: the gateway asks on every submission, and one passive
        declare a second per queue is all the broker sees. A count older than DEPTH_CACHE_S is
        still the answer while a fresh one is asked for in the background, up to DEPTH_STALE_S;
        an older one (or none) is waited for."""
        cached = self._depth_cache.get(queue.name)
        age = time.monotonic() - cached[0] if cached else DEPTH_STALE_S
        if cached is not None and age < DEPTH_STALE_S:
            if age >= DEPTH_CACHE_S and queue.name not in self._depth_refreshes:
                refresh = asyncio.create_task(self._refresh_depth(queue.name))
                self._depth_refreshes[queue.name] = refresh
                refresh.add_done_callback(lambda _t: self._depth_refreshes.pop(queue.name, None))
            return cached[1]
        return await self._fresh_depth(queue.name)

    async def _fresh_depth(self, name: str) -> int:
        async with self._depth_lock:  # a burst waits for the one declare in flight
            cached = self._depth_cache.get(name)
            if cached is None or time.monotonic() - cached[0] >= DEPTH_CACHE_S:
                cached = (time.monotonic(), await self._declared_depth(name))
                self._depth_cache[name] = cached
            return cached[1]

    async def _refresh_depth(self, name: str) -> None:
        try:
            await self._fresh_depth(name)
        except Exception:  # the next submission asks again; past DEPTH_STALE_S it waits
            log.warning("queue_depth_refresh_failed", queue=name, exc_info=True)

    async def _declared_depth(self, name: str) -> int:
        assert self._connection is not None, "bus not started"
        # A channel of its own: a failed passive declare closes the channel it ran on.
        if self._depth_channel is None or self._depth_channel.is_closed:
            self._depth_channel = await self._connection.channel()
        # aiormq's declare-ok: aio-pika's passive declare_queue reported 0 on quorum queues.
        raw = await self._depth_channel.get_underlay_channel()
        ok = await raw.queue_declare(name, passive=True)
        return ok.message_count or 0


async def declare_topology(channel: AbstractChannel) -> tuple[AbstractExchange, AbstractExchange]:
    """Declare every exchange and queue; idempotent, so every service may call it."""
    jobs = await channel.declare_exchange(
        topology.JOBS_EXCHANGE, aio_pika.ExchangeType.DIRECT, durable=True
    )
    status = await channel.declare_exchange(
        topology.STATUS_EXCHANGE, aio_pika.ExchangeType.FANOUT, durable=True
    )
    dead = await channel.declare_exchange(
        topology.DEAD_LETTER_EXCHANGE, aio_pika.ExchangeType.DIRECT, durable=True
    )
    await channel.declare_queue(
        topology.PARKED_QUEUE, durable=True, arguments={"x-queue-type": "quorum"}
    )
    for spec in topology.WORK_QUEUES:
        dead_queue = await channel.declare_queue(
            spec.dead_letter_queue, durable=True, arguments={"x-queue-type": "quorum"}
        )
        await dead_queue.bind(dead, routing_key=spec.routing_key)
        work = await channel.declare_queue(
            spec.name,
            durable=True,
            arguments={
                "x-queue-type": "quorum",
                "x-delivery-limit": topology.DELIVERY_LIMIT - 1,
                "x-dead-letter-exchange": topology.DEAD_LETTER_EXCHANGE,
                "x-dead-letter-routing-key": spec.routing_key,
            },
        )
        await work.bind(jobs, routing_key=spec.routing_key)
    return jobs, status


def make_event_bus(
    broker_url: str, journal_dir: Path | None = None, publish_timeout_s: float = PUBLISH_TIMEOUT_S
) -> EventBus:
    """RabbitMQ when a broker URL is given, else the in-process bus (journaled if asked)."""
    if broker_url:
        return RabbitBus(broker_url, publish_timeout_s=publish_timeout_s)
    return InProcessBus(journal_dir)
