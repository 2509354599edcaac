"""Load: N clients × M jobs against the distributed stack, every service its own process.

`python -m benchmarks.load [--clients 8] [--jobs 20] [--tasks denoise,artifacts,superres,inpaint]
[--models denoise=mwcnn,...|classic] [--size 64-96] [--job-deadline 120] [--markdown]
[--json PATH] [--env RESTORA_NAME=VALUE ...]`

The stack, all on loopback and gone at the end (Ctrl-C and errors included): a throw-away
RabbitMQ and S3 server (`weed mini`), started as the integration tests start them
(`tests/servers.py`: like the tests, this runs from a checkout with the dev extra and Debian's
rabbitmq-server), then the gateway, preprocess, denoise, superres and inpaint services, each
`python -m services.<name>` in its own process, on a fresh bucket with an admin token and one
torch thread per model service. Push-back that would measure its limits rather than throughput
is off (RESTORA_MAX_QUEUE_DEPTH=0, and RESTORA_MAX_UNFINISHED_PER_OWNER=0 since every client is
127.0.0.1, one owner); `--env` sets any RESTORA_* setting of every service, those included.

Each client submits its jobs one after another (a closed loop: at most N jobs in flight), the
tasks in turn, on images generated from the seed (a mask for inpaint). A 429 or 503 is counted
by its code and retried after its Retry-After; any other refusal is counted and ends that job.
An accepted job is polled (GET with its owner token) until it is final or its deadline passes.

Per task: jobs, accepted, rejected responses by code, done, failed (or cancelled), lost,
duplicated, p50/p95/p99 latency from the start of the accepted POST to the job's `done` time,
and throughput: done jobs per second from the first submission to the last `done`.
- lost: an accepted job not final by its deadline (or gone: 404);
- duplicated: a job with more than one record (GET /api/v1/records, the admin token) or more
  than one `done` event in its event log in S3, or one that ran to `done` though no client was
  given its id. A finished job without its record is reported too (`unrecorded`).
The last line is `lost=L duplicated=D`; the exit code is 1 when either is above 0.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import json
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

import aiohttp
import numpy as np
from PIL import Image

from shared.ml import accel, registry
from shared.platform.blobstore import BlobNotFound, S3BlobStore
from shared.platform.config import CommonSettings
from shared.platform.messages import FINAL_STATES
from tests.servers import RabbitMQServer, S3Endpoint, SeaweedS3Server, free_ports

REPO = Path(__file__).resolve().parents[1]
SERVICES = ("gateway", "preprocess", "denoise", "superres", "inpaint")
#: Small networks on small images: seconds of CPU per job at most (superres: the shipped
#: RRDBNet, not the 11× costlier x4plus).
DEFAULT_MODELS = {"denoise": "mwcnn", "artifacts": "mwcnn", "superres": "esrgan",
                  "inpaint": "deepfill"}
#: Settings of every service process; `--env` overrides them.
DEFAULT_ENV = {
    "RESTORA_MAX_QUEUE_DEPTH": "0",
    "RESTORA_MAX_UNFINISHED_PER_OWNER": "0",
    "RESTORA_THREADS": "1",
    "RESTORA_LOG_LEVEL": "warning",
}
START_TIMEOUT_S = 240.0  # five Python processes importing torch on two busy cores
STOP_TIMEOUT_S = 30.0
RECORDS_WAIT_S = 20.0  # records are written as final statuses pass the gateway
RETRYABLE = (429, 503)


# ------------------------------------------------------------------------------ the plan
@dataclass(frozen=True)
class JobPlan:
    client: int
    index: int
    task: str
    model: str
    seed: int
    size: tuple[int, int]  # height, width


def plan_jobs(
    clients: int, jobs: int, tasks: Sequence[str], models: dict[str, str],
    sizes: tuple[int, int], seed: int,
) -> list[list[JobPlan]]:
    """Per client, its jobs: the tasks in turn over all jobs, sizes drawn from the seed."""
    rng = np.random.default_rng(seed)
    plans = []
    for client in range(clients):
        mine = []
        for index in range(jobs):
            task = tasks[(client * jobs + index) % len(tasks)]
            height, width = (int(v) for v in rng.integers(sizes[0], sizes[1] + 1, 2))
            job_seed = int(rng.integers(2**31))
            mine.append(JobPlan(client, index, task, models[task], job_seed, (height, width)))
        plans.append(mine)
    return plans


def _encode(array: np.ndarray, fmt: str, **options: Any) -> bytes:
    out = io.BytesIO()
    Image.fromarray(array).save(out, format=fmt, **options)
    return out.getvalue()


def synthetic_image(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A smooth colour gradient with a few flat rectangles: edges and flat areas to restore."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    base = np.stack(
        [128 + 100 * np.sin(rng.uniform(0.02, 0.1) * x + rng.uniform(0.02, 0.1) * y
                            + rng.uniform(0, 6.3)) for _ in range(3)],
        axis=-1,
    )
    for _ in range(4):
        top, left = rng.integers(0, height - 8), rng.integers(0, width - 8)
        bottom, right = top + rng.integers(4, height // 2), left + rng.integers(4, width // 2)
        base[top:bottom, left:right] = rng.uniform(20, 235, 3)
    return np.clip(base, 0, 255).astype(np.uint8)


def upload_for(job: JobPlan) -> dict[str, tuple[bytes, str]]:
    """The form's files for `job`: field → (bytes, content type)."""
    rng = np.random.default_rng(job.seed)
    height, width = job.size
    image = synthetic_image(rng, height, width)
    if job.task == "denoise":
        noisy = np.clip(image + rng.normal(0, 20, image.shape), 0, 255).astype(np.uint8)
        return {"image": (_encode(noisy, "PNG"), "image/png")}
    if job.task == "artifacts":
        return {"image": (_encode(image, "JPEG", quality=20), "image/jpeg")}
    files = {"image": (_encode(image, "PNG"), "image/png")}
    if job.task == "inpaint":
        mask = np.zeros((height, width), np.uint8)
        mask[height // 4 : height // 2, width // 3 : 2 * width // 3] = 255
        files["mask"] = (_encode(mask, "PNG"), "image/png")
    return files


# ------------------------------------------------------------------------------ the stack
@dataclass
class Service:
    name: str
    port: int  # the gateway's API port; the health port of the others
    log: Path
    process: subprocess.Popen[bytes]


class Stack:
    """RabbitMQ, S3 and the service processes; `stop()` (or leaving the `with`) ends them all.

    `services` are started and awaited by `start()`; `launch()` starts one more later (or again,
    after `stop_service()`), as a deployment adds or restarts a worker. `defaults` are the
    settings of every service before `env_overrides`; `label` names the bucket and the messages.
    """

    def __init__(
        self,
        env_overrides: Mapping[str, str],
        logs: Path,
        services: Sequence[str] = SERVICES,
        defaults: Mapping[str, str] = DEFAULT_ENV,
        label: str = "load",
    ) -> None:
        self.env_overrides = dict(env_overrides)
        self.logs = logs
        self.names = tuple(services)
        self.defaults = dict(defaults)
        self.label = label
        self.admin_token = secrets.token_urlsafe(24)
        self.bucket = f"restora-{label}-{secrets.token_hex(4)}"
        self.rabbitmq: RabbitMQServer | None = None
        self.s3: SeaweedS3Server | None = None
        self.services: list[Service] = []
        self.exit_codes: dict[str, int | None] = {}
        self._env: dict[str, str] = {}
        self._launches: Counter[str] = Counter()

    @property
    def gateway_url(self) -> str:
        return f"http://127.0.0.1:{self.service('gateway').port}"

    @property
    def env(self) -> dict[str, str]:
        """The environment every service is started with (after `start()`)."""
        return dict(self._env)

    @property
    def endpoint(self) -> S3Endpoint:
        assert self.s3 is not None
        return self.s3.endpoint

    def service(self, name: str) -> Service:
        """The running process of service `name` (the latest, where it was launched again)."""
        for service in reversed(self.services):
            if service.name == name:
                return service
        raise KeyError(f"{name} is not running")

    def start(self) -> Stack:
        started = time.monotonic()
        self.rabbitmq = RabbitMQServer().start()
        self.s3 = SeaweedS3Server().start()
        _say(f"RabbitMQ and S3 up in {time.monotonic() - started:.1f} s", self.label)
        base = {k: v for k, v in os.environ.items() if not k.startswith("RESTORA_")}
        base.update(self.defaults)
        base.update(self.env_overrides)
        base.update(self.endpoint.env())
        base.update(
            RESTORA_BROKER_URL=self.rabbitmq.url,
            RESTORA_S3_BUCKET=self.bucket,
            RESTORA_ADMIN_TOKEN=self.admin_token,
            RESTORA_DATA_DIR=str(self.logs / "data"),
            RESTORA_HOST="127.0.0.1",
        )
        self._env = base
        # All ports at once: a service not yet listening must not have its port handed out again.
        for name, port in zip(self.names, free_ports(len(self.names)), strict=True):
            self.launch(name, port)
        self._wait_ready(started)
        return self

    def launch(self, name: str, port: int | None = None) -> Service:
        """Start `python -m services.<name>` on `port` (a free one by default); not awaited."""
        if not self._env:
            raise RuntimeError("launch() needs the servers: start() the stack first")
        port = port or free_ports(1)[0]
        port_setting = "RESTORA_PORT" if name == "gateway" else "RESTORA_HEALTH_PORT"
        env = {**self._env, port_setting: str(port)}
        self._launches[name] += 1
        # A service launched again logs to a file of its own: the first one's log stays.
        count = self._launches[name]
        log = self.logs / (f"{name}.log" if count == 1 else f"{name}-{count}.log")
        with log.open("wb") as out:
            process = subprocess.Popen(
                [sys.executable, "-m", f"services.{name}"],
                cwd=REPO, env=env, stdin=subprocess.DEVNULL, stdout=out,
                stderr=subprocess.STDOUT,
            )
        service = Service(name, port, log, process)
        self.services.append(service)
        return service

    def check_alive(self, service: Service, when: str) -> None:
        """Raise, with the end of its log, when `service` has exited."""
        if service.process.poll() is not None:
            raise RuntimeError(
                f"{service.name} exited with code {service.process.returncode} {when}:\n"
                f"{_tail(service.log)}"
            )

    def _wait_ready(self, started: float) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        waiting = list(self.services)
        while waiting:
            for service in list(waiting):
                self.check_alive(service, "while starting")
                if ready(service.port):
                    waiting.remove(service)
            if waiting and time.monotonic() > deadline:
                names = ", ".join(s.name for s in waiting)
                raise RuntimeError(f"not ready within {START_TIMEOUT_S:.0f} s: {names}")
            time.sleep(0.5)
        _say(f"{len(self.services)} services ready {time.monotonic() - started:.1f} s after start",
             self.label)

    async def watch(self) -> None:
        """Return never; raise as soon as a service process has exited."""
        while True:
            for service in self.services:
                self.check_alive(service, "during the run")
            await asyncio.sleep(0.5)

    def stop_service(self, service: Service) -> int | None:
        """SIGTERM one service (a clean stop) and wait for it; its exit code."""
        if service.process.poll() is None:
            service.process.terminate()
        return self._reap(service, time.monotonic() + STOP_TIMEOUT_S)

    def _reap(self, service: Service, deadline: float) -> int | None:
        """Wait for a terminated service until `deadline`, SIGKILL it after; its exit code."""
        try:
            code = service.process.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            service.process.kill()
            code = service.process.wait(timeout=10)
            _say(f"{service.name} did not stop within {STOP_TIMEOUT_S:.0f} s: killed", self.label)
        self.exit_codes[service.name] = code
        self.services.remove(service)
        return code

    def stop(self) -> None:
        """SIGTERM every service (a clean stop), SIGKILL what hangs, then the servers."""
        for service in self.services:
            if service.process.poll() is None:
                service.process.terminate()
        # All were told at once, so they stop side by side within one shared deadline.
        deadline = time.monotonic() + STOP_TIMEOUT_S
        for service in list(self.services):
            self._reap(service, deadline)
        for server in (self.s3, self.rabbitmq):
            if server is not None:
                server.stop()
        self.s3 = self.rabbitmq = None

    def __enter__(self) -> Stack:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc: object) -> None:
        self.stop()


def ready(port: int) -> bool:
    """True once the service on `port` answers /readyz with 200 (its networks are loaded)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _say(message: str, label: str = "load") -> None:
    print(f"[{label}] {message}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------ the clients
@dataclass
class JobResult:
    plan: JobPlan
    outcome: str = "refused"  # done | failed | cancelled | lost | refused (never accepted)
    job_id: str | None = None
    owner_token: str = ""
    rejected: Counter[str] = field(default_factory=Counter)  # responses by status code
    submitted_at: float | None = None  # start of the accepted POST (epoch seconds)
    done_at: float | None = None
    error: str | None = None

    @property
    def latency_s(self) -> float | None:
        if self.done_at is None or self.submitted_at is None:
            return None
        return max(0.0, self.done_at - self.submitted_at)


def _retry_after(headers: Any) -> float:
    try:
        return max(0.1, float(headers.get("Retry-After", "1")))
    except ValueError:
        return 1.0


async def _submit(
    session: aiohttp.ClientSession, url: str, job: JobPlan, result: JobResult, deadline: float
) -> None:
    files = upload_for(job)
    while True:
        form = aiohttp.FormData()
        for name, (data, content_type) in files.items():
            form.add_field(name, data, filename=name, content_type=content_type)
        form.add_field("task", job.task)
        form.add_field("model", job.model)
        started = time.time()
        try:
            async with session.post(f"{url}/api/v1/jobs", data=form) as response:
                body = await response.json(content_type=None)
                status, wait = response.status, _retry_after(response.headers)
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            status, wait, body = 0, 1.0, {"error": repr(exc)}
        if status == 202:
            result.job_id, result.owner_token = body["id"], body["owner_token"]
            result.submitted_at = started
            return
        result.rejected[str(status) if status else "connection"] += 1
        result.error = str(body.get("error", body)) if isinstance(body, dict) else str(body)
        if status and status not in RETRYABLE:
            return
        if time.monotonic() + wait > deadline:
            return
        await asyncio.sleep(wait)


async def _follow(
    session: aiohttp.ClientSession, url: str, result: JobResult, deadline: float, poll_s: float
) -> None:
    headers = {"Authorization": f"Bearer {result.owner_token}"}
    while True:
        try:
            async with session.get(f"{url}/api/v1/jobs/{result.job_id}", headers=headers) as r:
                status, doc = r.status, await r.json(content_type=None)
        except (aiohttp.ClientError, TimeoutError, ValueError):
            status, doc = 0, {}
        if status == 404:
            result.outcome, result.error = "lost", "the job is gone (404)"
            return
        if status == 200 and doc.get("state") in FINAL_STATES:
            result.outcome = doc["state"]
            if result.outcome == "done":
                result.done_at = float((doc.get("stages") or {}).get("done") or time.time())
            else:
                result.error = doc.get("error")
            return
        if time.monotonic() > deadline:
            result.outcome = "lost"
            result.error = f"not final after the deadline (last seen: {doc.get('state')})"
            return
        await asyncio.sleep(poll_s)


async def run_client(
    url: str, jobs: list[JobPlan], deadline_s: float, poll_s: float
) -> list[JobResult]:
    """One client: each job submitted, then followed to its end, before the next."""
    results = []
    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        for job in jobs:
            result = JobResult(job)
            deadline = time.monotonic() + deadline_s
            await _submit(session, url, job, result, deadline)
            if result.job_id is not None:
                await _follow(session, url, result, deadline, poll_s)
            results.append(result)
    return results


# ------------------------------------------------------------------------------ the checks
@dataclass
class Checks:
    records: Counter[str]  # job id → records
    done_events: Counter[str]  # job id → `done` events in its log
    phantom_tasks: dict[str, str]  # job id → task: ran to `done`, no client knew it

    def duplicated(self, job_id: str) -> bool:
        return self.records[job_id] > 1 or self.done_events[job_id] > 1


async def fetch_records(url: str, admin_token: str) -> list[dict[str, Any]]:
    headers = {"Authorization": f"Bearer {admin_token}"}
    async with aiohttp.ClientSession() as session, session.get(
        f"{url}/api/v1/records", params={"limit": "10000"}, headers=headers
    ) as response:
        response.raise_for_status()
        return list((await response.json())["records"])


async def check(stack: Stack, results: list[JobResult]) -> Checks:
    """Records through the API (waiting a little for the last ones), event logs from S3."""
    finished = {r.job_id for r in results if r.outcome in ("done", "failed")}
    deadline = time.monotonic() + RECORDS_WAIT_S
    while True:
        records = await fetch_records(stack.gateway_url, stack.admin_token)
        recorded = Counter(str(r["job_id"]) for r in records)
        recorded_done = {str(r["job_id"]) for r in records if r["outcome"] == "done"}
        if finished <= set(recorded) or time.monotonic() > deadline:
            break
        await asyncio.sleep(1.0)
    endpoint = stack.endpoint
    store = S3BlobStore(CommonSettings(
        s3_endpoint=endpoint.endpoint, s3_access_key=endpoint.access_key,
        s3_secret_key=endpoint.secret_key, s3_bucket=stack.bucket, s3_region=endpoint.region,
    ))
    done_events: Counter[str] = Counter()
    for key in await store.list("jobs/"):
        # jobs/<id>/events/<time>-<rank>-<state>-<rand>.json
        parts = key.split("/")
        if len(parts) == 4 and parts[2] == "events" and parts[3].split("-")[2:3] == ["done"]:
            done_events[parts[1]] += 1
    accepted = {r.job_id for r in results if r.job_id}
    phantoms = {}
    for job_id in (set(done_events) | recorded_done) - accepted:
        try:
            phantoms[job_id] = str(json.loads(await store.get(f"jobs/{job_id}/job.json"))["task"])
        except (BlobNotFound, ValueError, KeyError):
            phantoms[job_id] = "?"
    return Checks(recorded, done_events, phantoms)


# ------------------------------------------------------------------------------ the report
def _percentile(values: list[float], q: float) -> float | None:
    return float(np.percentile(values, q)) if values else None


def _row(mine: list[JobResult], checks: Checks, phantoms: int, span_s: float) -> dict[str, Any]:
    """The counts and times of `mine` (one task's jobs, or all of them)."""
    latencies = [r.latency_s for r in mine if r.latency_s is not None]
    outcomes = Counter(r.outcome for r in mine)
    rejected: Counter[str] = Counter()
    for r in mine:
        rejected.update(r.rejected)
    finished = [r.job_id for r in mine if r.job_id and r.outcome in ("done", "failed")]
    return {
        "model": models.pop() if len(models := {r.plan.model for r in mine}) == 1 else "-",
        "jobs": len(mine),
        "accepted": sum(1 for r in mine if r.job_id),
        "refused": outcomes["refused"],  # never accepted: jobs = accepted + refused
        "rejected": dict(sorted(rejected.items())),
        "done": outcomes["done"],
        "failed": outcomes["failed"] + outcomes["cancelled"],
        "lost": outcomes["lost"],  # accepted = done + failed + lost
        "duplicated": sum(1 for r in mine if r.job_id and checks.duplicated(r.job_id)) + phantoms,
        "unrecorded": sum(1 for job_id in finished if not checks.records[job_id]),
        "p50_s": _percentile(latencies, 50),
        "p95_s": _percentile(latencies, 95),
        "p99_s": _percentile(latencies, 99),
        "done_per_s": outcomes["done"] / span_s if span_s else 0.0,
    }


def summarize(results: list[JobResult], checks: Checks, tasks: Sequence[str]) -> dict[str, Any]:
    submitted = [r.submitted_at for r in results if r.submitted_at is not None]
    done_at = [r.done_at for r in results if r.done_at is not None]
    span_s = max(done_at) - min(submitted) if done_at and submitted else 0.0
    phantoms = Counter(checks.phantom_tasks.values())
    rows = {
        task: _row([r for r in results if r.plan.task == task], checks, phantoms[task], span_s)
        for task in tasks
    }
    total = _row(results, checks, len(checks.phantom_tasks), span_s)
    total["span_s"] = span_s
    not_done = [
        {"task": r.plan.task, "client": r.plan.client, "index": r.plan.index, "job_id": r.job_id,
         "outcome": r.outcome, "error": r.error}
        for r in results if r.outcome != "done"
    ]
    return {"tasks": rows, "total": total, "phantoms": checks.phantom_tasks, "not_done": not_done}


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _codes(rejected: dict[str, int]) -> str:
    return " ".join(f"{code}×{n}" for code, n in rejected.items()) or "0"


def render_table(summary: dict[str, Any], markdown: bool) -> str:
    headers = ["task", "model", "jobs", "accepted", "rejected", "done", "failed", "lost",
               "dup", "p50 s", "p95 s", "p99 s", "done/s"]
    rows = []
    for task, row in [*summary["tasks"].items(), ("all", summary["total"])]:
        rows.append([
            task, row["model"], row["jobs"], row["accepted"], _codes(row["rejected"]),
            row["done"], row["failed"], row["lost"], row["duplicated"], _seconds(row["p50_s"]),
            _seconds(row["p95_s"]), _seconds(row["p99_s"]), f"{row['done_per_s']:.2f}",
        ])
    cells = [[str(c) for c in headers], *[[str(c) for c in row] for row in rows]]
    if markdown:
        lines = ["| " + " | ".join(row) + " |" for row in cells]
        lines.insert(1, "|" + "---|" * len(headers))
        return "\n".join(lines)
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    aligned = [[c.ljust(widths[i]) if i < 2 else c.rjust(widths[i]) for i, c in enumerate(row)]
               for row in cells]
    lines = ["  ".join(row) for row in aligned]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


# ------------------------------------------------------------------------------ main

def env_settings(parser: argparse.ArgumentParser, items: list[str],
                 base: dict[str, str] | None = None) -> dict[str, str]:
    """`--env RESTORA_NAME=VALUE` items as settings for the services (over `base`)."""
    env = dict(base or {})
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name.startswith("RESTORA_"):
            parser.error(f"--env {item!r}: RESTORA_NAME=VALUE")
        env[name] = value
    return env

def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.load", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--clients", type=int, default=8, help="concurrent clients (8)")
    parser.add_argument("--jobs", type=int, default=20, help="jobs per client, one at a time (20)")
    parser.add_argument("--tasks", default=",".join(registry.TASKS),
                        help="comma-separated, taken in turn (all four)")
    parser.add_argument(
        "--models", default="",
        help="TASK=MODEL,... over the defaults (" + ",".join(
            f"{t}={m}" for t, m in DEFAULT_MODELS.items()) + "), or one MODEL for every task",
    )
    parser.add_argument("--size", default="64-96", help="image sides in px, MIN-MAX (64-96)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--job-deadline", type=float, default=120.0,
                        help="seconds from a job's first submission to its final state (120)")
    parser.add_argument("--poll", type=float, default=0.5, help="seconds between GETs (0.5)")
    parser.add_argument("--env", action="append", default=[], metavar="RESTORA_NAME=VALUE",
                        help="a setting for every service (repeatable)")
    parser.add_argument("--markdown", action="store_true", help="the table in Markdown")
    parser.add_argument("--json", type=Path, help="write every number here")
    parser.add_argument("--logs", type=Path, help="keep the services' logs in this directory")
    args = parser.parse_args(argv)
    if args.clients < 1 or args.jobs < 1:
        parser.error("--clients and --jobs must be at least 1")
    if args.clients * args.jobs > 10_000:
        parser.error("at most 10000 jobs in all: the records check reads that many")
    args.tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    if not args.tasks or any(t not in registry.TASKS for t in args.tasks):
        parser.error(f"--tasks: a comma-separated choice of {', '.join(registry.TASKS)}")
    try:
        low, _, high = args.size.partition("-")
        args.sizes = (int(low), int(high or low))
    except ValueError:
        parser.error("--size is MIN-MAX in pixels, e.g. 64-96")
    if not 16 <= args.sizes[0] <= args.sizes[1]:
        parser.error("--size: 16 <= MIN <= MAX")
    env = args.env = env_settings(parser, args.env)
    weights_dir = Path(env.get("RESTORA_WEIGHTS_DIR", registry.SHIPPED_WEIGHTS_DIR))
    args.models = _models(parser, args.models, args.tasks, weights_dir)
    return args


def _models(
    parser: argparse.ArgumentParser, spec: str, tasks: list[str], weights_dir: Path
) -> dict[str, str]:
    models = dict(DEFAULT_MODELS)
    for item in filter(None, (s.strip() for s in spec.split(","))):
        task, sep, model = item.rpartition("=")
        for name in [task] if sep else list(models):
            models[name] = model
    for task in tasks:
        installed = registry.models_for(task, weights_dir)
        if models.get(task) not in installed:
            parser.error(f"--models: {task} offers {', '.join(installed)} here, "
                         f"not {models.get(task)!r}")
        if registry.find(task, models[task]).slow:  # type: ignore[union-attr]
            parser.error(f"--models: {models[task]!r} is fitted per image (minutes a job)")
    return {t: models[t] for t in tasks}


@contextlib.contextmanager
def sigterm_interrupts() -> Iterator[None]:
    """SIGTERM (a `timeout`, a cancelled job) stops the stack like Ctrl-C does."""

    def interrupt(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    previous = signal.getsignal(signal.SIGTERM)
    if previous == signal.SIG_DFL:
        signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        if previous == signal.SIG_DFL:
            signal.signal(signal.SIGTERM, previous)


async def run_load(stack: Stack, args: argparse.Namespace) -> tuple[list[JobResult], Checks]:
    plans = plan_jobs(args.clients, args.jobs, args.tasks, args.models, args.sizes, args.seed)
    _say(f"{args.clients} clients × {args.jobs} jobs on {stack.gateway_url}")
    clients = asyncio.gather(
        *(run_client(stack.gateway_url, jobs, args.job_deadline, args.poll) for jobs in plans)
    )
    watchdog = asyncio.create_task(stack.watch())
    try:
        either: list[asyncio.Future[Any]] = [clients, watchdog]
        await asyncio.wait(either, return_when=asyncio.FIRST_COMPLETED)
        if watchdog.done():
            watchdog.result()  # a service died: its error, not numbers that only say so
        results = [r for client in clients.result() for r in client]
        return results, await check(stack, results)
    finally:
        clients.cancel()
        watchdog.cancel()
        await asyncio.gather(clients, watchdog, return_exceptions=True)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    load_before = os.getloadavg()[0]
    started = time.monotonic()
    with contextlib.ExitStack() as cleanup:
        cleanup.enter_context(sigterm_interrupts())
        logs = args.logs or Path(cleanup.enter_context(tempfile.TemporaryDirectory("-load")))
        logs.mkdir(parents=True, exist_ok=True)
        try:
            stack = cleanup.enter_context(Stack(args.env, logs))
            gateway = stack.gateway_url
            results, checks = asyncio.run(run_load(stack, args))
            stack.stop()
        except KeyboardInterrupt:
            _say("interrupted: stopping the services and servers")
            return 130
        except RuntimeError as exc:  # a server or service that would not start, and why
            _say(f"error: {exc}")
            return 2
    wall_s = time.monotonic() - started
    summary = summarize(results, checks, args.tasks)
    total = summary["total"]
    unclean = {k: v for k, v in stack.exit_codes.items() if v != 0}
    print(render_table(summary, args.markdown))
    print(
        f"{args.clients} clients × {args.jobs} jobs, {args.sizes[0]}–{args.sizes[1]} px, "
        f"{total['span_s']:.1f} s of load ({wall_s:.0f} s with start and stop); "
        f"{accel.cpu_model()}, {os.cpu_count()} cores, load average {load_before:.1f} before"
    )
    print(
        f"checks: {sum(checks.records.values())} records for "
        f"{total['done'] + total['failed']} finished jobs, unrecorded={total['unrecorded']}; "
        f"done events: {sum(checks.done_events.values())} for {total['done']} done jobs"
        + (f"; services that stopped uncleanly: {unclean}" if unclean else "")
    )
    for problem in summary["not_done"][:10]:
        print(f"not done: {problem}")
    if args.json:
        args.json.write_text(json.dumps({
            "config": {"clients": args.clients, "jobs": args.jobs, "tasks": args.tasks,
                       "models": args.models, "size": list(args.sizes), "seed": args.seed,
                       "job_deadline_s": args.job_deadline, "env": {**DEFAULT_ENV, **args.env}},
            "machine": {"cpu": accel.cpu_model(), "cores": os.cpu_count(),
                        "load_average_before": load_before},
            "gateway": gateway,
            "wall_s": wall_s,
            "service_exit_codes": stack.exit_codes,
            "checks": {"records": sum(checks.records.values()),
                       "done_events": sum(checks.done_events.values())},
            "latencies_s": {t: [r.latency_s for r in results
                                if r.plan.task == t and r.latency_s is not None]
                            for t in args.tasks},
            **summary,
        }, indent=1))
    print(f"lost={total['lost']} duplicated={total['duplicated']}")
    return 1 if total["lost"] or total["duplicated"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
