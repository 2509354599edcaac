"""Following the status stream: the records writer, and live job events for the browser.

Each replica subscribes once to the status fan-out (`follow_statuses`) and hands every
status to the records writer (which writes in the background: the records API waits for
the writes in hand, so a client that sees a job end here can read the job's record at
once), then to the SSE streams of that job open on this replica.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict

from shared.platform.eventbus import EventBus, StatusHandler
from shared.platform.logging import get_logger
from shared.platform.messages import JobStatus

log = get_logger(__name__)


async def follow_statuses(bus: EventBus, *handlers: StatusHandler) -> None:
    """One subscription that runs `handlers` in order for each status; one failing handler
    never keeps a status from the next."""

    async def on_status(status: JobStatus) -> None:
        for handler in handlers:
            try:
                await handler(status)
            except Exception:
                log.exception("status_handler_failed", job_id=status.job_id)

    await bus.subscribe_status(on_status)


class StatusBroadcaster:
    def __init__(self) -> None:
        self._listeners: dict[str, set[asyncio.Queue[JobStatus]]] = defaultdict(set)

    async def on_status(self, status: JobStatus) -> None:
        for queue in list(self._listeners.get(status.job_id, ())):
            queue.put_nowait(status)

    def listen(self, job_id: str) -> asyncio.Queue[JobStatus]:
        queue: asyncio.Queue[JobStatus] = asyncio.Queue()
        self._listeners[job_id].add(queue)
        return queue

    def stop_listening(self, job_id: str, queue: asyncio.Queue[JobStatus]) -> None:
        listeners = self._listeners.get(job_id)
        if listeners is not None:
            listeners.discard(queue)
            if not listeners:
                del self._listeners[job_id]


def event_id(status: JobStatus) -> str:
    """SSE ids are the event times in ns: ordered, so Last-Event-ID resumes after it."""
    return str(int(status.at * 1e9))
