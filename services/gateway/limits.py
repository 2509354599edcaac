"""Push-back: the gateway refuses work it cannot finish soon, or that costs too much.

In the order a submission meets them:
- the preprocess queue already over the limit: 503 + Retry-After before the upload is read;
- the job's estimated cost over the budget (shared.ml.cost): 413 naming the limit, the estimate
  and a `max_side` that fits (preprocess's pixel limits stay behind it, on the decoded image);
- the task's queues (preprocess + its model queue) at the limit: 503 + Retry-After;
- the owner's unfinished jobs: 429 + Retry-After, through the `OWNER_CHECK` hook.

A queue depth that cannot be read lets the job in: publishing it fails on its own (503) when
the broker is really gone, and a slow broker must not slow every submission down.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from aiohttp import web

from shared.ml import auto, chains, cost, registry
from shared.ml.imaging import shrunk_size
from shared.platform import topology
from shared.platform.config import GatewaySettings
from shared.platform.eventbus import EventBus
from shared.platform.logging import get_logger
from shared.platform.messages import JobOptions

log = get_logger(__name__)

#: How long reading a queue's depth may take before the job is let in without it.
DEPTH_TIMEOUT_S = 2.0
#: Retry-After per job waiting beyond the limit: fast jobs take about a second on one worker,
#: a restorer fitted per image minutes. Never less than 1 s nor more than MAX_RETRY_AFTER_S.
FAST_JOB_S, SLOW_JOB_S = 0.5, 60.0
MAX_RETRY_AFTER_S = 300


class Refused(Exception):
    """A submission turned away: status, a message that says why, and what to do instead."""

    def __init__(
        self, status: int, message: str, *, retry_after_s: int | None = None, **details: Any
    ) -> None:
        super().__init__(message)
        self.status = status
        self.retry_after_s = retry_after_s
        self.details = details

    def response(self) -> web.Response:
        headers = {} if self.retry_after_s is None else {"Retry-After": str(self.retry_after_s)}
        body = {"error": str(self), **self.details}
        if self.retry_after_s is not None:
            body["retry_after_s"] = self.retry_after_s
        return web.json_response(body, status=self.status, headers=headers)


# ------------------------------------------------------------------------------ owners (hook)
#: The limit on unfinished jobs per owner belongs with the owners of jobs (accounts and tokens,
#: not part of this module): set app[OWNER_CHECK] to an async function of the request that
#: returns `too_many_unfinished(...)` for an owner over the limit, or None; `check_job` calls it
#: last, once the job is known to be acceptable otherwise.
OwnerCheck = Callable[[web.Request], Awaitable["Refused | None"]]
OWNER_CHECK: web.AppKey[OwnerCheck] = web.AppKey("owner_check")


def too_many_unfinished(unfinished: int, limit: int, retry_after_s: int = 10) -> Refused:
    """The 429 of an owner with `unfinished` jobs queued or running, at most `limit` allowed."""
    return Refused(
        429,
        f"you have {unfinished} unfinished jobs; at most {limit} may be queued or running at "
        "once: wait for one to finish",
        retry_after_s=max(1, retry_after_s),
        limit="unfinished jobs per owner",
        unfinished=unfinished,
        max_unfinished=limit,
    )


# ------------------------------------------------------------------------------ checks
async def check_before_upload(bus: EventBus, settings: GatewaySettings) -> None:
    """Refuse before reading a byte of the upload when the queue every task shares is full."""
    if settings.max_queue_depth <= 0:
        return
    depth = await _depth(bus, topology.PREPROCESS)
    if depth is not None and depth >= settings.max_queue_depth:
        raise _busy(depth, settings.max_queue_depth, "", slow=False)


async def check_job(
    request: web.Request,
    bus: EventBus,
    settings: GatewaySettings,
    task: str,
    options: JobOptions,
    size: tuple[int, int] | None,
) -> None:
    """Refuse a validated job that costs too much, or for which too many jobs are waiting.

    A chain's cost is its steps' sum; its queues are its first step's (where it waits first).
    `auto` is budgeted for every step it may choose for the photo's size.
    """
    names = chains.steps_of(task)
    if task == chains.AUTO:
        shrunk = shrunk_size(size, options.max_side) if size else None
        names = auto.possible_steps(shrunk) if shrunk else auto.AUTO_STEPS
    steps = [registry.find(step, options.for_step(step).model) for step in names]
    restorers = [r for r in steps if r is not None]
    if not restorers or len(restorers) != len(steps):
        return  # validation names the models; nothing to estimate
    if size is not None:
        check_cost(restorers, options, size, settings)
    await check_queues(bus, settings, restorers[0])
    owner_check = request.app.get(OWNER_CHECK)
    if owner_check is not None and (refusal := await owner_check(request)) is not None:
        raise refusal


def check_cost(
    restorers: registry.Restorer | Sequence[registry.Restorer], options: JobOptions,
    size: tuple[int, int], settings: GatewaySettings,
) -> None:
    """413 when the job's estimate (a chain's: summed over its steps) is over its budget, with
    the largest `max_side` that fits."""
    steps = (restorers,) if isinstance(restorers, registry.Restorer) else tuple(restorers)
    budget, setting = (
        (settings.max_slow_job_cost, "RESTORA_MAX_SLOW_JOB_COST")
        if any(r.slow for r in steps)
        else (settings.max_job_cost, "RESTORA_MAX_JOB_COST")
    )
    if budget <= 0:
        return
    shape = cost.JobShape(size, options.scale, options.max_side, options.ensemble,
                          options.iterations)
    estimate = cost.estimate(steps, shape)
    if estimate.units <= budget:
        return
    width, height = estimate.size
    what = " then ".join(f"{r.task} with {r.name}" for r in steps) + f" on {width}x{height}"
    if options.ensemble:
        what += " with ensemble=true (8 passes)"
    message = (
        f"this job would cost about {estimate.units:.0f} work units ({what}); the limit per job "
        f"is {budget:g} ({setting})"
    )
    fits = cost.largest_max_side(steps, shape, budget)
    iterations = cost.largest_iterations(steps, shape, budget, registry.DIP_ITERATIONS_RANGE)
    advice = []
    if fits is not None and fits < max(width, height):
        advice.append(f"max_side={fits} (the long side shrunk to {fits} px first)")
    if iterations is not None:
        advice.append(f"iterations={iterations}")
    if options.ensemble:
        advice.append("ensemble=false")
    message += ": send it with " + " or ".join(advice) if advice else ": send a smaller image"
    raise Refused(
        413,
        message,
        limit="job cost",
        setting=setting,
        cost=round(estimate.units, 1),
        max_cost=budget,
        max_side=fits if fits is not None and fits < max(width, height) else None,
        iterations=iterations,
    )


async def check_queues(
    bus: EventBus, settings: GatewaySettings, restorer: registry.Restorer
) -> None:
    """503 when the jobs waiting for this task (preprocess + its model queue) reach the limit."""
    limit = settings.max_queue_depth
    if limit <= 0:
        return
    model_queue = topology.queue_for_task(restorer.task, restorer.name)
    depths = await asyncio.gather(_depth(bus, topology.PREPROCESS), _depth(bus, model_queue))
    waiting = sum(d for d in depths if d is not None)
    if waiting >= limit:
        raise _busy(waiting, limit, restorer.task, slow=restorer.slow)


def retry_after(waiting: int, limit: int, slow: bool) -> int:
    """Seconds until the queue is likely back under the limit: the jobs beyond it, each taking
    about FAST_JOB_S (SLOW_JOB_S for a restorer fitted per image)."""
    beyond = waiting - limit + 1
    per_job = SLOW_JOB_S if slow else FAST_JOB_S
    return min(MAX_RETRY_AFTER_S, max(1, math.ceil(beyond * per_job)))


def _busy(waiting: int, limit: int, task: str, slow: bool) -> Refused:
    seconds = retry_after(waiting, limit, slow)
    which = f"{task} jobs" if task else "jobs"
    return Refused(
        503,
        f"Restora is busy: {waiting} {which} are waiting (the limit is {limit}); "
        f"try again in {seconds} s",
        retry_after_s=seconds,
        limit="queue depth",
        waiting=waiting,
        max_waiting=limit,
    )


async def _depth(bus: EventBus, queue: topology.QueueSpec) -> int | None:
    try:
        async with asyncio.timeout(DEPTH_TIMEOUT_S):
            return await bus.queue_depth(queue)
    except Exception:  # the job goes in; publishing it fails on its own if the broker is gone
        log.warning("queue_depth_unavailable", queue=queue.name, exc_info=True)
        return None
