"""How many unfinished jobs one owner may have: a 429 with Retry-After beyond the limit.

An owner here is who can be told apart across submissions: an API key, or else the client's
address (an anonymous client gets a fresh owner token per job, so its tokens cannot be
counted). The operator is never limited. Each gateway replica counts the jobs it accepted,
forgetting one when its final status passes by (every replica sees every status) or when it
is older than the job deadline, so a lost status can never hold an owner back for good.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from aiohttp import web

from services.gateway import auth, limits, security
from shared.platform.messages import FINAL_STATES, JobStatus

# An owner over the limit waits about this long for one of its jobs to finish.
RETRY_AFTER_S = 10


@dataclass
class UnfinishedJobs:
    """Per owner, the jobs accepted here that have not finished yet (job id → accepted at)."""

    limit: int
    max_age_s: float
    jobs: dict[str, dict[str, float]] = field(default_factory=dict)
    owner_of: dict[str, str] = field(default_factory=dict)

    def count(self, owner: str, now: float | None = None) -> int:
        self._forget_old(owner, time.time() if now is None else now)
        return len(self.jobs.get(owner, {}))

    def add(self, owner: str, job_id: str, now: float | None = None) -> None:
        self.jobs.setdefault(owner, {})[job_id] = time.time() if now is None else now
        self.owner_of[job_id] = owner

    def finish(self, job_id: str) -> None:
        owner = self.owner_of.pop(job_id, None)
        if owner is not None:
            self.jobs.get(owner, {}).pop(job_id, None)
            if not self.jobs.get(owner):
                self.jobs.pop(owner, None)

    async def on_status(self, status: JobStatus) -> None:
        if status.state in FINAL_STATES:
            self.finish(status.job_id)

    def _forget_old(self, owner: str, now: float) -> None:
        for job_id, accepted_at in list(self.jobs.get(owner, {}).items()):
            if now - accepted_at > self.max_age_s:
                self.finish(job_id)


UNFINISHED: web.AppKey[UnfinishedJobs] = web.AppKey("unfinished_jobs", UnfinishedJobs)


def owner_of(request: web.Request) -> str | None:
    """Who a submission counts against; None for the operator (never limited)."""
    guard = request.app[auth.GUARD]
    who = guard.credentials.identify(auth.bearer(request))
    if who.is_admin:
        return None
    if who.kind == "api_key":
        return f"key:{who.credential_sha256}"
    return f"ip:{security.client_ip(request, guard.proxy_hops)}"


def install(app: web.Application, limit: int, max_age_s: float) -> UnfinishedJobs:
    """Count owners' unfinished jobs and refuse beyond `limit` (0 = no limit)."""
    tally = app[UNFINISHED] = UnfinishedJobs(limit, max_age_s)
    if limit > 0:
        app[limits.OWNER_CHECK] = _check
    return tally


async def _check(request: web.Request) -> limits.Refused | None:
    tally, owner = request.app[UNFINISHED], owner_of(request)
    if owner is None:
        return None
    unfinished = tally.count(owner)
    if unfinished < tally.limit:
        return None
    return limits.too_many_unfinished(unfinished, tally.limit, RETRY_AFTER_S)


def accepted(request: web.Request, job_id: str) -> None:
    """Count a job the gateway has just accepted against its owner."""
    owner = owner_of(request)
    if owner is not None:
        request.app[UNFINISHED].add(owner, job_id)
