"""asyncio helpers the services share."""

from __future__ import annotations

import asyncio
from typing import Any


def forget(task: asyncio.Task[Any]) -> None:
    """Stop `task` if it still runs, and take its error if it ended in one: a prefetch the
    job did not need (a job found deleted, a step that failed first) is never logged as an
    error nobody read."""
    if not task.done():
        task.cancel()
    elif not task.cancelled():
        task.exception()


async def settle(task: asyncio.Task[Any]) -> None:
    """Wait for `task` to end, however it ends, and take its error: for work begun beside the
    caller's (a status told while the job runs) that must not be cut off halfway."""
    await asyncio.wait({task})
    forget(task)
