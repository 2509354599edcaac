"""When the broker or the store is down: 503 with Retry-After, and no half-made job left behind.

Every store and bus call is bounded (see shared.platform.blobstore and eventbus), so a dead or
hung dependency surfaces as `StoreUnavailable` / `BusUnavailable` within seconds; the
middleware turns either into a prompt 503 on every route. A submission that fails after
storing some of its objects rolls them back in the background (the client is not kept
waiting on a store that may be the very thing that is down).
"""

from __future__ import annotations

import asyncio

from aiohttp import web
from aiohttp.typedefs import Handler

from services.gateway import maintenance
from shared.platform.blobstore import BlobStore, StoreUnavailable
from shared.platform.eventbus import BusUnavailable
from shared.platform.logging import get_logger

log = get_logger(__name__)

# What a 503 asks the client to wait before trying again (seconds).
RETRY_AFTER_S = 5
ROLLBACK_ATTEMPTS = 3
ROLLBACK_PAUSE_S = 2.0

_rollbacks: set[asyncio.Task[None]] = set()


def unavailable(message: str) -> web.Response:
    return web.json_response(
        {"error": message}, status=503, headers={"Retry-After": str(RETRY_AFTER_S)}
    )


@web.middleware
async def unavailable_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    # An expected outage: one line each, no traceback (rendering one costs more than the 503).
    try:
        return await handler(request)
    except StoreUnavailable as exc:
        log.warning("store_unavailable", path=request.path, error=str(exc))
        return unavailable("the object store is unavailable; try again shortly")
    except BusUnavailable as exc:
        log.warning("broker_unavailable", path=request.path, error=str(exc))
        return unavailable("the job queue is unavailable; try again shortly")


def roll_back(store: BlobStore, job_id: str) -> asyncio.Task[None]:
    """Delete what a failed submission stored, in the background, retrying a few times.
    What even that leaves (a store down throughout) has no event: the sweeper deletes it."""
    task = asyncio.create_task(_roll_back(store, job_id))
    _rollbacks.add(task)
    task.add_done_callback(_rollbacks.discard)
    return task


async def _roll_back(store: BlobStore, job_id: str) -> None:
    for attempt in range(1, ROLLBACK_ATTEMPTS + 1):
        try:
            await maintenance.delete_job_objects(store, job_id)
        except Exception as exc:
            log.warning("rollback_failed", job_id=job_id, attempt=attempt, error=repr(exc))
            await asyncio.sleep(ROLLBACK_PAUSE_S * attempt)
        else:
            log.info("submission_rolled_back", job_id=job_id)
            return
