"""The gateway's housekeeping: fail stalled jobs, delete expired ones.

Every replica may run it: both actions are idempotent (a final state never changes, and
deleting a deleted object is a no-op).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import defaultdict

from shared.platform.blobstore import BlobStore
from shared.platform.jobs import JobKeys, JobLog, JobView, StatusReporter
from shared.platform.logging import get_logger

log = get_logger(__name__)


def stalled_reason(view: JobView, deadline_s: float, now: float) -> str | None:
    """Why a job counts as stalled (no event for longer than the deadline), or None."""
    if view.is_final or now - view.last_event_at <= deadline_s:
        return None
    waited = int(now - view.last_event_at)
    return f"no progress for {waited} s while {view.state} (deadline {int(deadline_s)} s)"


async def fail_if_stalled(
    view: JobView, reporter: StatusReporter, deadline_s: float, now: float | None = None
) -> bool:
    reason = stalled_reason(view, deadline_s, time.time() if now is None else now)
    if reason is None:
        return False
    await reporter.report(view.spec.job_id, "failed", error=reason)
    return True


def group_by_job(keys: list[str]) -> dict[str, list[str]]:
    jobs: dict[str, list[str]] = defaultdict(list)
    for key in keys:
        parts = key.split("/", 2)
        if len(parts) == 3 and parts[0] == "jobs":
            jobs[parts[1]].append(key)
    return jobs


async def sweep(
    store: BlobStore, reporter: StatusReporter, retention_s: float, deadline_s: float
) -> dict[str, int]:
    """One pass over every job: expire old ones, fail stalled ones, drop orphans."""
    jobs_log, now = JobLog(store), time.time()
    counts = {"expired": 0, "stalled": 0, "orphans": 0}
    for job_id, keys in group_by_job(await store.list("jobs/")).items():
        spec_key = JobKeys(job_id).spec
        if spec_key not in keys:
            # The spec is written first and deleted last: without it the job was deleted
            # and these are late writes from a worker that had not noticed yet.
            await store.delete_prefix(JobKeys(job_id).prefix)
            counts["orphans"] += 1
            continue
        view = await jobs_log.view(job_id)
        if view is None:
            continue
        if now - view.spec.created_at > retention_s:
            await delete_job_objects(store, job_id)
            counts["expired"] += 1
        elif await fail_if_stalled(view, reporter, deadline_s, now):
            counts["stalled"] += 1
    return counts


async def delete_job_objects(store: BlobStore, job_id: str) -> None:
    """The spec first: the job is gone for every reader at once (404, never a half-deleted
    view), and whatever a half-done delete leaves is an orphan the sweeper removes."""
    keys = JobKeys(job_id)
    await store.delete_prefix(keys.spec)
    await store.delete_prefix(keys.prefix)


async def run_periodically(
    store: BlobStore,
    reporter: StatusReporter,
    retention_s: float,
    deadline_s: float,
    interval_s: float,
) -> None:
    while True:
        with contextlib.suppress(Exception):
            counts = await sweep(store, reporter, retention_s, deadline_s)
            if any(counts.values()):
                log.info("maintenance_sweep", **counts)
        await asyncio.sleep(interval_s)
