"""The gateway's housekeeping: fail stalled jobs, record missed ends, delete expired jobs.

Every replica may run it: every action is idempotent (a final state never changes, a
record is written only where none exists, and deleting a deleted object is a no-op). It is
the only place a stalled job is failed: reading a job never writes anything.
"""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict

from shared.platform.blobstore import BlobStore
from shared.platform.jobs import JobKeys, JobLog, JobView, StatusReporter
from shared.platform.logging import get_logger
from shared.platform.records import RECORDED_OUTCOMES, RecordWriter

log = get_logger(__name__)
# A job that ended this long ago and has no record: its final status went by while no
# records writer listened (every gateway down). Younger ones are the live writer's.
RECORD_GRACE_S = 60.0
# How long a job's objects may go without its spec before they are an orphan's. The gateway
# writes a submission's spec and upload side by side, so for a moment an accepted job's
# upload can be there before its spec; a deleted job's leftovers just wait one sweep longer.
ORPHAN_GRACE_S = 300.0


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
    store: BlobStore,
    reporter: StatusReporter,
    retention_s: float,
    deadline_s: float,
    writer: RecordWriter | None = None,
    orphan_grace_s: float = ORPHAN_GRACE_S,
) -> dict[str, int]:
    """One pass over every job: expire old ones, fail stalled ones, record ended ones whose
    record is missing, drop orphans and submissions never announced."""
    jobs_log, now = JobLog(store), time.time()
    counts = {"expired": 0, "stalled": 0, "recorded": 0, "orphans": 0, "unannounced": 0}
    modified = await store.list_modified("jobs/")
    for job_id, keys in group_by_job(list(modified)).items():
        spec_key = JobKeys(job_id).spec
        if spec_key not in keys:
            # The spec is deleted first: without it the job was deleted and these are late
            # writes from a worker that had not noticed yet, once none is recent (a
            # submission's upload may land a moment before its spec).
            if now - max(modified[key] for key in keys) > orphan_grace_s:
                await store.delete_prefix(JobKeys(job_id).prefix)
                counts["orphans"] += 1
            continue
        view = await jobs_log.view(job_id)
        if view is None:
            continue
        if now - view.spec.created_at > retention_s:
            await delete_job_objects(store, job_id)
            counts["expired"] += 1
        elif not view.events and now - view.spec.created_at > deadline_s:
            # Stored, never queued: a submission answered 503 whose rollback failed too, or
            # a gateway that died mid-submission. No client has its id: delete, not fail.
            await delete_job_objects(store, job_id)
            counts["unannounced"] += 1
        elif await fail_if_stalled(view, reporter, deadline_s, now):
            counts["stalled"] += 1  # the records writer hears the `failed` on the bus
        elif writer is not None and await _record_missed_end(writer, view, now):
            counts["recorded"] += 1
    return counts


async def _record_missed_end(writer: RecordWriter, view: JobView, now: float) -> bool:
    if view.state not in RECORDED_OUTCOMES or now - view.last_event_at < RECORD_GRACE_S:
        return False
    try:
        return await writer.record(view.spec.job_id) is not None
    except Exception:
        log.warning("record_not_written", job_id=view.spec.job_id, exc_info=True)
        return False


async def delete_job_objects(store: BlobStore, job_id: str) -> None:
    """The spec first: the job is gone for every reader at once (404, never a half-deleted
    view), and whatever a half-done delete leaves is an orphan the sweeper removes (after
    ORPHAN_GRACE_S)."""
    keys = JobKeys(job_id)
    await store.delete_prefix(keys.spec)
    await store.delete_prefix(keys.prefix)


async def run_periodically(
    store: BlobStore,
    reporter: StatusReporter,
    retention_s: float,
    deadline_s: float,
    interval_s: float,
    writer: RecordWriter | None = None,
) -> None:
    while True:
        try:
            counts = await sweep(store, reporter, retention_s, deadline_s, writer)
        except Exception:
            log.warning("maintenance_sweep_failed", exc_info=True)
        else:
            if any(counts.values()):
                log.info("maintenance_sweep", **counts)
        await asyncio.sleep(interval_s)
