"""Live job events for server-sent events, whichever replica the browser reaches.

Each replica subscribes once to the status fan-out and hands every status to the SSE
streams of that job open on this replica.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict

from shared.platform.messages import JobStatus


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
