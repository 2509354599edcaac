"""Pipeline overhead: one denoise end to end through the deployed stack, against the pure function.

`python -m benchmarks.overhead [--runs 20] [--size 512] [--sigma 25] [--seed 0] [--threads 1]
[--limit 1.10] [--env RESTORA_NAME=VALUE ...] [--json PATH] [--logs DIR]`

What it checks: the p50 of `--runs` end-to-end runs of a colour denoise (mwcnn, σ `--sigma`,
`--size`² pixels) through gateway, broker, store and service is at most `--limit` × the p50 of
as many runs of the pure function on the same image; and the first request's cost (loading the
weights, warming up) is paid when a worker starts, not by the first user.

The stack, all on loopback and gone at the end (Ctrl-C and errors included): RabbitMQ and S3
(`weed mini`) started as the integration tests start them (`tests/servers.py`: this runs from a
checkout with the dev extra and Debian's rabbitmq-server), then the gateway and the preprocess
service, each `python -m services.<name>` in its own process (`benchmarks.load.Stack`), on a fresh
bucket, with the shipped weights and the product's settings except RESTORA_THREADS=`--threads`
and a fresh RESTORA_CACHE_DIR; `--env` sets any other. The denoise service comes after them:

1. Worker start. It is started with a job already waiting for it; reported: start → ready
   (/readyz answers once its networks are loaded and warmed up) and start → that job's result.
   It is then stopped (SIGTERM) and started again, and once ready, its first job is timed end to
   end: warm-up paid at start means that costs what a warm job does (≤ `--limit` × the p50).
2. Timed runs, a pipeline run and a pure-function run in turn (which goes first alternates), so
   both see the same machine:
   - pipeline: POST /api/v1/jobs (task=denoise, model=mwcnn, sigma), the job's event stream (SSE,
     as the page follows a job) until it is final, then the result through the presigned link
     the done event carries: timed from the POST to the result's last byte (each job is read
     for its stage timings once every run is over, not between runs);
   - pure function: `registry.restore(runtime, "denoise", "mwcnn", RestoreJob(pixels, sigma))`
     in this process, on the runtime `build_runtime` makes from the very settings the services
     were given (same threads, device and RESTORA_BACKEND; the same cache directory, so `auto`
     reads the service's decision and runs the same backend), its networks preloaded as the
     service's warm-up does. Its first call after that is reported apart.
3. Every pipeline result is compared with the pure function's output: identical pixels, or at
   least 50 dB PSNR, else the two did not do the same work.

The image is photo-like (`benchmarks.load.synthetic_image`) with seeded Gaussian noise, sent as
PNG. Printed: both paths' p50 and p90, the ratio of the p50s against the limit, the worker-start
times, the services' own stage timings (p50); `--json PATH` keeps every number. Exit code 0 when
the ratio and the first job after ready meet the limit and every output matches, 1 when one does
not, 2 when the stack does not start or a job fails, 130 when interrupted.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import numpy as np
import torch
from PIL import Image

from benchmarks import load, metrics
from shared.ml import accel, registry
from shared.ml.restorers.common import RestoreJob
from shared.ml.runtime import ModelRuntime
from shared.platform import topology
from shared.platform.bootstrap import build_runtime
from shared.platform.config import ModelServiceSettings, load_settings
from shared.platform.messages import FINAL_STATES

T = TypeVar("T")

TASK, MODEL = "denoise", "mwcnn"
WORKER = "denoise"  # the service that runs TASK: started last, timed, restarted
FRONT = ("gateway", "preprocess")  # started (and awaited) with the servers
DEFAULT_LIMIT = 1.10
MIN_PSNR_DB = 50.0  # below this the pipeline's output is not the pure function's work
JOB_TIMEOUT_S = 300.0  # one warm job: seconds on any machine; this only catches a hang
READY_POLL_S = 0.05  # fine enough to time a start of seconds


# ------------------------------------------------------------------------------ the numbers
@dataclass(frozen=True)
class Spread:
    runs: int
    p50_s: float
    p90_s: float


def spread(seconds: Sequence[float]) -> Spread:
    if not seconds:
        raise ValueError("no runs to summarise")
    values = np.asarray(seconds, dtype=np.float64)
    return Spread(len(seconds), float(np.percentile(values, 50)), float(np.percentile(values, 90)))


@dataclass(frozen=True)
class Summary:
    pipeline: Spread
    pure: Spread
    limit: float

    @property
    def ratio(self) -> float:
        """The pipeline's p50 over the pure function's: what the limit is about."""
        return self.pipeline.p50_s / self.pure.p50_s

    @property
    def meets(self) -> bool:
        return self.ratio <= self.limit


def summarize(pipeline_s: Sequence[float], pure_s: Sequence[float], limit: float) -> Summary:
    return Summary(spread(pipeline_s), spread(pure_s), limit)


@dataclass(frozen=True)
class WorkerStart:
    """Seconds, all measured from the moment the service's process was started."""

    fresh_ready_s: float  # a fresh start (empty cache) → /readyz answers
    fresh_result_s: float  # → the result of a job that was waiting at its start, downloaded
    restart_ready_s: float  # started again (the backend cache now filled) → ready
    first_job_s: float  # the restarted worker's first job, end to end, submitted once ready
    pure_load_s: float  # the pure function's runtime: build_runtime + preload
    pure_first_s: float  # its first call after the preload

    def first_job_meets(self, summary: Summary) -> bool:
        """Warm-up paid at start: the first user waits no longer than the limit allows."""
        return self.first_job_s <= summary.limit * summary.pipeline.p50_s


@dataclass(frozen=True)
class OutputCheck:
    compared: int
    identical: int
    min_psnr_db: float  # inf when every output is identical

    @property
    def same_work(self) -> bool:
        return self.compared > 0 and self.min_psnr_db >= MIN_PSNR_DB


def check_outputs(reference: np.ndarray, results: Sequence[np.ndarray]) -> OutputCheck:
    """Each pipeline result against the pure function's output (a shape mismatch is -inf)."""
    scores = [
        metrics.psnr(reference, out) if out.shape == reference.shape else -np.inf
        for out in results
    ]
    identical = sum(1 for out in results if np.array_equal(out, reference))
    return OutputCheck(len(results), identical, float(min(scores, default=-np.inf)))


def stage_p50s(timings: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    """The services' own timings of each job ({service: {stage: s}}, and the client's), p50
    per service.stage."""
    values: dict[str, list[float]] = {}
    for job in timings:
        for service, stages in job.items():
            for stage, seconds in (stages or {}).items():
                if isinstance(seconds, int | float):
                    values.setdefault(f"{service}.{stage}", []).append(float(seconds))
    return {name: statistics.median(v) for name, v in values.items()}


# ------------------------------------------------------------------------------ the report
def _aligned(rows: Sequence[Sequence[str]]) -> list[str]:
    """Columns padded to their widest cell: the first left-aligned, the others right."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return ["  ".join(c.ljust(widths[i]) if i == 0 else c.rjust(widths[i])
                      for i, c in enumerate(row)).rstrip() for row in rows]


def render_summary(summary: Summary) -> str:
    rows = [
        ["", "runs", "p50 s", "p90 s"],
        ["pure function", str(summary.pure.runs), f"{summary.pure.p50_s:.3f}",
         f"{summary.pure.p90_s:.3f}"],
        ["pipeline, end to end", str(summary.pipeline.runs), f"{summary.pipeline.p50_s:.3f}",
         f"{summary.pipeline.p90_s:.3f}"],
    ]
    verdict = "meets" if summary.meets else "does NOT meet"
    return "\n".join([
        *_aligned(rows),
        f"pipeline / pure, p50: {summary.ratio:.3f}× — {verdict} ≤ {summary.limit:.2f}×",
    ])


def render_start(start: WorkerStart, summary: Summary) -> str:
    first_ratio = start.first_job_s / summary.pipeline.p50_s
    verdict = "yes" if start.first_job_meets(summary) else "NO"
    rows = [
        ["worker start (denoise service)", "s"],
        ["fresh start → ready (networks loaded, warmed up)", f"{start.fresh_ready_s:.2f}"],
        ["fresh start → result of a job waiting at start", f"{start.fresh_result_s:.2f}"],
        ["restart → ready", f"{start.restart_ready_s:.2f}"],
        ["first job after ready, end to end", f"{start.first_job_s:.3f}"],
        ["pure function: runtime built, networks preloaded", f"{start.pure_load_s:.2f}"],
        ["pure function: first call after preload", f"{start.pure_first_s:.3f}"],
    ]
    return "\n".join([
        *_aligned(rows),
        f"first job after ready / pipeline p50: {first_ratio:.3f}× — warm-up paid at worker "
        f"start: {verdict} (≤ {summary.limit:.2f}×)",
    ])


def render_stages(stages: Mapping[str, float]) -> str:
    cells = ", ".join(f"{name} {seconds:.3f}" for name, seconds in sorted(stages.items()))
    return f"stages, p50 s: {cells or '(none reported)'}"


def render_outputs(check: OutputCheck) -> str:
    verdict = "same work" if check.same_work else f"NOT the same work (< {MIN_PSNR_DB:.0f} dB)"
    return (f"outputs: {check.identical}/{check.compared} pipeline results identical to the pure "
            f"function's, min PSNR {check.min_psnr_db:.1f} dB — {verdict}")


# ------------------------------------------------------------------------------ the input
@dataclass(frozen=True)
class Upload:
    pixels: np.ndarray  # what the pure function gets
    png: bytes  # what the pipeline gets: the same pixels
    sigma: float


def make_upload(size: int, sigma: float, seed: int) -> Upload:
    rng = np.random.default_rng(seed)
    clean = load.synthetic_image(rng, size, size)
    noisy = np.clip(clean + rng.normal(0, sigma, clean.shape), 0, 255).astype(np.uint8)
    out = io.BytesIO()
    Image.fromarray(noisy).save(out, format="PNG")
    return Upload(noisy, out.getvalue(), sigma)


def decode(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as image:
        return np.asarray(image.convert("RGB"))


# ------------------------------------------------------------------------------ the pipeline
@dataclass
class PipelineRun:
    seconds: float  # POST → result downloaded
    result: bytes
    timings: dict[str, Any] = field(default_factory=dict)  # the services' own, per stage
    job_url: str = ""
    auth: dict[str, str] = field(default_factory=dict)
    wall_started: float = 0.0  # time.time() at the POST


async def run_pipeline(session: aiohttp.ClientSession, url: str, upload: Upload) -> PipelineRun:
    """One job as a client does it: submit, follow its events, download the result from the
    link in the done event.

    Its timings carry the client's view ("client": when the 202 came, when each state was
    first seen on the event stream, the download); :func:`read_timings` adds the services'."""
    started, wall_started = time.perf_counter(), time.time()
    client: dict[str, float] = {}

    def mark(name: str) -> None:
        client.setdefault(name, time.perf_counter() - started)

    job_id, token = await _submit(session, url, upload)
    mark("accepted_at_s")
    auth = {"Authorization": f"Bearer {token}"}
    final = await _final_event(session, f"{url}/api/v1/jobs/{job_id}/events", auth, mark)
    if final["state"] != "done":
        raise RuntimeError(f"job {job_id} ended {final['state']}: {final.get('error')}")
    # The done event carries the presigned link, fetched without credentials as a browser does.
    t0 = time.perf_counter()
    async with session.get(final["result_url"]) as response:
        response.raise_for_status()
        result = await response.read()
    client["download_s"] = time.perf_counter() - t0
    seconds = time.perf_counter() - started
    return PipelineRun(seconds, result, {"client": client}, f"{url}/api/v1/jobs/{job_id}", auth,
                       wall_started)


async def read_timings(session: aiohttp.ClientSession, run: PipelineRun) -> None:
    """Add the services' stage timings of `run` and when each state was written (on the
    services' clocks, this machine's: loopback), to place the time between stages. Read once
    every run is over: a read right after a run would load the store as the next run starts."""
    async with session.get(run.job_url, headers=run.auth) as response:
        response.raise_for_status()
        doc = await response.json()
    written = {f"{state}_written_at_s": at - run.wall_started
               for state, at in (doc.get("stages") or {}).items()}
    run.timings = {**(doc.get("timings") or {}), **run.timings, "log": written}


async def _submit(session: aiohttp.ClientSession, url: str, upload: Upload) -> tuple[str, str]:
    form = aiohttp.FormData()
    form.add_field("image", upload.png, filename="noisy.png", content_type="image/png")
    form.add_field("task", TASK)
    form.add_field("model", MODEL)
    form.add_field("sigma", f"{upload.sigma:g}")
    async with session.post(f"{url}/api/v1/jobs", data=form) as response:
        body = await response.json(content_type=None)
        if response.status != 202:
            raise RuntimeError(f"the gateway refused the job ({response.status}): {body}")
    return str(body["id"]), str(body["owner_token"])


async def _final_event(
    session: aiohttp.ClientSession, events_url: str, auth: Mapping[str, str],
    seen: Callable[[str], None] = lambda _: None,
) -> dict[str, Any]:
    """Read the job's SSE stream until a final state (the stream ends after one) and return
    that event's data; `seen` is called with "<state>_seen_at_s" as each event arrives."""
    async with session.get(events_url, headers=auth) as response:
        response.raise_for_status()
        async for raw in response.content:
            line = raw.decode().strip()
            if line.startswith("data: "):
                data = json.loads(line[6:])
                seen(f"{data['state']}_seen_at_s")
                if data["state"] in FINAL_STATES:
                    return dict(data)
    raise RuntimeError(f"{events_url} ended before a final state")


async def guarded(stack: load.Stack, work: Awaitable[T], timeout_s: float) -> T:
    """`work`, unless a service process exits first (its log then says why) or it hangs."""
    task = asyncio.ensure_future(work)
    watchdog = asyncio.create_task(stack.watch())
    try:
        done, _ = await asyncio.wait(
            [task, watchdog], timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED
        )
        if watchdog in done:
            watchdog.result()  # raises: a service died
        if task not in done:
            raise RuntimeError(f"no answer within {timeout_s:.0f} s")
        return task.result()
    finally:
        task.cancel()
        watchdog.cancel()
        await asyncio.gather(task, watchdog, return_exceptions=True)


async def wait_ready(stack: load.Stack, service: load.Service, started: float) -> float:
    """Seconds from `started` (perf_counter) until `service` answers /readyz."""
    while not await asyncio.to_thread(load.ready, service.port):
        stack.check_alive(service, "while starting")
        if time.perf_counter() - started > load.START_TIMEOUT_S:
            raise RuntimeError(f"{service.name} not ready within {load.START_TIMEOUT_S:.0f} s")
        await asyncio.sleep(READY_POLL_S)
    return time.perf_counter() - started


async def fresh_start(
    stack: load.Stack, session: aiohttp.ClientSession, upload: Upload
) -> tuple[float, float]:
    """Start the worker with a job submitted at once: (start → ready, start → its result)."""
    started = time.perf_counter()
    service = stack.launch(WORKER)
    ready = asyncio.create_task(wait_ready(stack, service, started))
    try:
        await guarded(stack, run_pipeline(session, stack.gateway_url, upload),
                      load.START_TIMEOUT_S + JOB_TIMEOUT_S)
        result_s = time.perf_counter() - started
        return await ready, result_s
    finally:
        ready.cancel()


async def restart(
    stack: load.Stack, session: aiohttp.ClientSession, upload: Upload
) -> tuple[float, PipelineRun]:
    """Stop the worker, start it again; (start → ready, its first job submitted once ready)."""
    code = await asyncio.to_thread(stack.stop_service, stack.service(WORKER))
    if code != 0:
        raise RuntimeError(f"the {WORKER} service stopped with exit code {code}, not 0")
    started = time.perf_counter()
    service = stack.launch(WORKER)
    ready_s = await wait_ready(stack, service, started)
    first = await guarded(stack, run_pipeline(session, stack.gateway_url, upload), JOB_TIMEOUT_S)
    return ready_s, first


# ------------------------------------------------------------------------------ the pure function
def pure_runtime(env: Mapping[str, str]) -> ModelRuntime:
    """The runtime a denoise worker builds from `env`, its networks loaded as its warm-up does."""
    settings = load_settings(ModelServiceSettings, env)
    runtime = build_runtime(settings, settings.weights_dir)
    registry.preload(runtime, topology.tasks_served_by(topology.DENOISE))
    return runtime


def backends_of(runtime: ModelRuntime) -> list[str]:
    """Which backend runs each of the task's networks (already loaded: this only reads them)."""
    entry = registry.find(TASK, MODEL)
    assert entry is not None and entry.load is not None
    loaded = entry.load(runtime)
    return sorted({str(n.backend) for n in loaded}) if isinstance(loaded, list) else []


def run_pure(runtime: ModelRuntime, upload: Upload) -> tuple[float, np.ndarray]:
    job = RestoreJob(pixels=upload.pixels, sigma=upload.sigma)
    started = time.perf_counter()
    restored = registry.restore(runtime, TASK, MODEL, job)
    return time.perf_counter() - started, restored.pixels


# ------------------------------------------------------------------------------ the run
@dataclass
class Measured:
    start: WorkerStart
    pipeline: list[PipelineRun]
    pure_s: list[float]
    reference: np.ndarray  # the pure function's output
    backends: list[str]
    pure_threads: int  # torch's intra-op threads where the pure function ran


async def measure(stack: load.Stack, upload: Upload, runs: int) -> Measured:
    timeout = aiohttp.ClientTimeout(total=None, connect=10)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        _say("starting the denoise service with a job waiting for it")
        fresh_ready_s, fresh_result_s = await fresh_start(stack, session, upload)
        _say(f"ready after {fresh_ready_s:.1f} s, its first result after {fresh_result_s:.1f} s;"
             " restarting it")
        restart_ready_s, first = await restart(stack, session, upload)
        _say(f"ready again after {restart_ready_s:.1f} s; first job {first.seconds:.3f} s")
        # Built on this thread, which runs the calls too (torch's thread count is per thread
        # once it has run); the loop blocks meanwhile, but nothing else is in flight.
        started = time.perf_counter()
        runtime = pure_runtime(stack.env)
        pure_load_s = time.perf_counter() - started
        pure_first_s, reference = run_pure(runtime, upload)
        _say(f"pure function loaded in {pure_load_s:.1f} s; {runs} runs of each, in turn")
        pipeline, pure_s = await _interleaved(stack, session, upload, runtime, runs)
        for run in pipeline:
            await read_timings(session, run)
    start = WorkerStart(fresh_ready_s, fresh_result_s, restart_ready_s, first.seconds,
                        pure_load_s, pure_first_s)
    return Measured(start, pipeline, pure_s, reference, backends_of(runtime),
                    torch.get_num_threads())


async def _interleaved(
    stack: load.Stack, session: aiohttp.ClientSession, upload: Upload, runtime: ModelRuntime,
    runs: int,
) -> tuple[list[PipelineRun], list[float]]:
    """`runs` of each path in turn, so both see the same machine; (pipeline runs, pure seconds)."""
    pipeline: list[PipelineRun] = []
    pure_s: list[float] = []
    for index in range(runs):
        # Which goes first alternates: neither always runs right after the other.
        if index % 2:
            pipeline.append(await _timed_pipeline(stack, session, upload))
        pure_s.append(run_pure(runtime, upload)[0])
        if not index % 2:
            pipeline.append(await _timed_pipeline(stack, session, upload))
    return pipeline, pure_s


async def _timed_pipeline(
    stack: load.Stack, session: aiohttp.ClientSession, upload: Upload
) -> PipelineRun:
    return await guarded(stack, run_pipeline(session, stack.gateway_url, upload), JOB_TIMEOUT_S)


def _say(message: str) -> None:
    print(f"[overhead] {message}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------ main
def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.overhead", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--runs", type=int, default=20, help="timed runs of each path (20)")
    parser.add_argument("--size", type=int, default=512, help="the image's side in px (512)")
    parser.add_argument("--sigma", type=float, default=25.0, help="noise added and removed (25)")
    parser.add_argument("--seed", type=int, default=0, help="the image and its noise (0)")
    parser.add_argument("--threads", type=int, default=1,
                        help="RESTORA_THREADS of the services and the pure function (1)")
    parser.add_argument("--limit", type=float, default=DEFAULT_LIMIT,
                        help=f"the most pipeline p50 / pure p50 may be ({DEFAULT_LIMIT})")
    parser.add_argument("--env", action="append", default=[], metavar="RESTORA_NAME=VALUE",
                        help="a setting of the services and the pure function (repeatable)")
    parser.add_argument("--json", type=Path, help="write every number here")
    parser.add_argument("--logs", type=Path, help="keep the services' logs in this directory")
    args = parser.parse_args(argv)
    if args.runs < 1 or args.threads < 1:
        parser.error("--runs and --threads must be at least 1")
    if not 32 <= args.size <= 4096:
        parser.error("--size: 32 to 4096 px")
    env = args.env = load.env_settings(parser, args.env, {"RESTORA_THREADS": str(args.threads)})
    weights_dir = Path(env.get("RESTORA_WEIGHTS_DIR", registry.SHIPPED_WEIGHTS_DIR))
    if MODEL not in registry.models_for(TASK, weights_dir):
        parser.error(f"{TASK} model {MODEL!r} is not installed in {weights_dir}")
    return args


def _report(measured: Measured, args: argparse.Namespace, load_before: float) -> int:
    summary = summarize([r.seconds for r in measured.pipeline], measured.pure_s, args.limit)
    outputs = check_outputs(measured.reference, [decode(r.result) for r in measured.pipeline])
    stages = stage_p50s([r.timings for r in measured.pipeline])
    print(render_summary(summary))
    print()
    print(render_start(measured.start, summary))
    print()
    print(render_stages(stages))
    print(render_outputs(outputs))
    print(
        f"{TASK} {MODEL} σ{args.sigma:g}, {args.size}×{args.size} colour; RESTORA_THREADS="
        f"{args.env['RESTORA_THREADS']} (the pure function ran on {measured.pure_threads}), "
        f"backend {'/'.join(measured.backends) or '?'}; {accel.cpu_model()}, "
        f"{os.cpu_count()} cores, load average {load_before:.1f} before"
    )
    if args.json:
        args.json.write_text(json.dumps({
            "config": {"task": TASK, "model": MODEL, "runs": args.runs, "size": args.size,
                       "sigma": args.sigma, "seed": args.seed, "limit": args.limit,
                       "env": args.env},
            "machine": {"cpu": accel.cpu_model(), "cores": os.cpu_count(),
                        "load_average_before": load_before},
            "backends": measured.backends,
            "pure_threads": measured.pure_threads,
            "pipeline_s": [r.seconds for r in measured.pipeline],
            "pipeline_stages": [r.timings for r in measured.pipeline],  # each run's, in order
            "pure_s": measured.pure_s,
            "summary": {**asdict(summary), "ratio": summary.ratio, "meets": summary.meets},
            "worker_start": {**asdict(measured.start),
                             "first_job_meets": measured.start.first_job_meets(summary)},
            "stages_p50_s": stages,
            # JSON has no infinity: null when every output is identical.
            "outputs": {**asdict(outputs), "same_work": outputs.same_work,
                        "min_psnr_db": None if np.isinf(outputs.min_psnr_db)
                        else outputs.min_psnr_db},
        }, indent=1))
    ok = summary.meets and measured.start.first_job_meets(summary) and outputs.same_work
    return 0 if ok else 1


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    load_before = os.getloadavg()[0]
    upload = make_upload(args.size, args.sigma, args.seed)
    with contextlib.ExitStack() as cleanup:
        cleanup.enter_context(load.sigterm_interrupts())
        logs = args.logs or Path(cleanup.enter_context(tempfile.TemporaryDirectory("-overhead")))
        logs.mkdir(parents=True, exist_ok=True)
        # A cache of its own, empty: the first start pays what a first deployment does
        # (RESTORA_BACKEND=auto measures there), the restart what a restart does.
        cache = cleanup.enter_context(tempfile.TemporaryDirectory("-overhead-cache"))
        defaults = {"RESTORA_CACHE_DIR": cache}
        try:
            stack = cleanup.enter_context(
                load.Stack(args.env, logs, services=FRONT, defaults=defaults, label="overhead")
            )
            measured = asyncio.run(measure(stack, upload, args.runs))
        except KeyboardInterrupt:
            _say("interrupted: stopping the services and servers")
            return 130
        except (RuntimeError, aiohttp.ClientError) as exc:  # what would not start or run, and why
            _say(f"error: {exc}")
            return 2
    return _report(measured, args, load_before)


if __name__ == "__main__":
    raise SystemExit(main())
