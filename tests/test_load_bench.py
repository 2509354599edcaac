"""The load benchmark (`benchmarks/load.py`): its counting, and a tiny run of the real thing.

The tiny run goes through `main()` as `make bench-load` does: RabbitMQ, S3 and the five service
processes started by the benchmark itself, 2 clients × 2 jobs with the classic methods.
"""

from __future__ import annotations

import json
import socket
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from benchmarks import load

REGISTRY_TASKS = ("denoise", "artifacts", "superres", "inpaint")


def _result(task: str, outcome: str, job_id: str | None, **fields: Any) -> load.JobResult:
    plan = load.JobPlan(0, 0, task, "classic", 0, (64, 64))
    return load.JobResult(plan, outcome, job_id, **fields)


def test_plan_takes_the_tasks_in_turn_from_the_seed() -> None:
    models = dict.fromkeys(REGISTRY_TASKS, "classic")
    plans = load.plan_jobs(8, 5, REGISTRY_TASKS, models, (64, 96), seed=0)
    jobs = [job for client in plans for job in client]
    assert Counter(job.task for job in jobs) == dict.fromkeys(REGISTRY_TASKS, 10)
    assert all(64 <= side <= 96 for job in jobs for side in job.size)
    assert plans == load.plan_jobs(8, 5, REGISTRY_TASKS, models, (64, 96), seed=0)
    inpaint = next(job for job in jobs if job.task == "inpaint")
    assert set(load.upload_for(inpaint)) == {"image", "mask"}
    artifacts = next(job for job in jobs if job.task == "artifacts")
    assert load.upload_for(artifacts)["image"][1] == "image/jpeg"


def test_duplicates_lost_and_refusals_are_counted() -> None:
    results = [
        _result("denoise", "done", "a", submitted_at=10.0, done_at=11.0),
        _result("denoise", "done", "b", submitted_at=10.0, done_at=13.0),  # two done events
        _result("denoise", "lost", "c", submitted_at=10.0),
        _result("inpaint", "done", "d", submitted_at=10.0, done_at=12.0),  # two records
        _result("inpaint", "refused", None, rejected=Counter({"503": 2, "413": 1})),
        _result("inpaint", "failed", "e", submitted_at=10.0),  # finished, but no record
    ]
    checks = load.Checks(
        records=Counter({"a": 1, "b": 1, "d": 2}),
        done_events=Counter({"a": 1, "b": 2, "d": 1, "x": 1}),
        phantom_tasks={"x": "denoise"},  # ran to done; no client was given its id
    )
    summary = load.summarize(results, checks, ["denoise", "inpaint"])
    denoise, inpaint = summary["tasks"]["denoise"], summary["tasks"]["inpaint"]
    total = summary["total"]
    assert (denoise["jobs"], denoise["accepted"], denoise["done"], denoise["lost"]) == (3, 3, 2, 1)
    assert denoise["duplicated"] == 2  # b and the phantom
    assert (inpaint["accepted"], inpaint["refused"], inpaint["failed"]) == (2, 1, 1)
    assert inpaint["rejected"] == {"413": 1, "503": 2}
    assert (inpaint["duplicated"], inpaint["unrecorded"]) == (1, 1)
    assert (total["lost"], total["duplicated"], total["span_s"]) == (1, 3, 3.0)
    assert total["done_per_s"] == pytest.approx(1.0)
    assert denoise["p50_s"] == pytest.approx(2.0)
    table = load.render_table(summary, markdown=True).splitlines()
    assert table[0].startswith("| task | model | jobs |") and table[1].startswith("|---|")
    assert table[-1].startswith("| all | classic | 6 | 5 | 413×1 503×2 | 3 | 1 | 1 | 3 |")


@pytest.mark.servers
@pytest.mark.usefixtures("server_programs")
def test_tiny_load_run_loses_and_duplicates_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "load.json"
    argv = ["--clients", "2", "--jobs", "2", "--models", "classic", "--job-deadline", "90",
            "--json", str(out)]
    code = load.main(argv)
    lines = capsys.readouterr().out.strip().splitlines()
    report = json.loads(out.read_text())
    assert lines[-1] == "lost=0 duplicated=0", "\n".join(lines)
    assert code == 0
    total = report["total"]
    assert total["jobs"] == 4 and total["done"] == 4, report["not_done"]
    for row in [*report["tasks"].values(), total]:
        assert row["accepted"] + row["refused"] == row["jobs"]
        assert row["done"] + row["failed"] + row["lost"] == row["accepted"]
        assert row["unrecorded"] == 0
    # The checks saw the real records and event logs: one of each per job.
    assert report["checks"] == {"records": 4, "done_events": 4}
    assert set(report["tasks"]) == set(REGISTRY_TASKS)
    assert all(report["latencies_s"][task] for task in REGISTRY_TASKS)
    # Every service stopped cleanly (SIGTERM, exit 0) and the gateway's port is closed.
    assert report["service_exit_codes"] == dict.fromkeys(load.SERVICES, 0)
    port = int(report["gateway"].rsplit(":", 1)[1])
    with pytest.raises(OSError), socket.create_connection(("127.0.0.1", port), timeout=2):
        pass
