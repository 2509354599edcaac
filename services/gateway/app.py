"""The aiohttp gateway: accepts uploads, answers job state, streams events, serves links."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Awaitable
from pathlib import Path
from typing import Any

from aiohttp import web

from services.gateway import (
    auth,
    batches,
    connections,
    faults,
    limits,
    maintenance,
    openapi,
    owner_limits,
    records_api,
    routing,
    security,
)
from services.gateway.events import StatusBroadcaster, event_id, follow_statuses
from services.gateway.uploads import (
    BodyPace,
    UploadedFile,
    UploadForm,
    check_mask_matches,
    read_upload,
    sniff_image,
)
from services.gateway.validation import InvalidRequest, parse_options
from shared.ml import chains, imaging, registry
from shared.platform import messages, metrics, telemetry, topology
from shared.platform.blobstore import (
    LOCAL_FILES_ROUTE,
    BlobStore,
    LinkOptions,
    LocalDirBlobStore,
    StoreUnavailable,
)
from shared.platform.config import GatewaySettings
from shared.platform.eventbus import DeadLetterHandler, EventBus, Reject
from shared.platform.jobs import (
    WAITING_FOR_A_WORKER,
    Heartbeat,
    JobKeys,
    JobLog,
    JobSpec,
    JobView,
    StatusReporter,
    is_valid_job_id,
    new_job_id,
    worker_status,
)
from shared.platform.logging import get_logger
from shared.platform.messages import JobStatus, JobSubmitted

log = get_logger(__name__)
STATIC_DIR = Path(__file__).parent / "static"
KEEPALIVE_S = 15.0

BUS: web.AppKey[EventBus] = web.AppKey("bus", EventBus)
STORE: web.AppKey[BlobStore] = web.AppKey("store", BlobStore)
SETTINGS = web.AppKey("settings", GatewaySettings)
BROADCASTER = web.AppKey("broadcaster", StatusBroadcaster)


def create_app(bus: EventBus, store: BlobStore, settings: GatewaySettings) -> web.Application:
    # The upload is streamed part by part, so aiohttp's whole-body cap only guards
    # non-multipart bodies; the real cap is settings.max_upload_bytes, enforced while reading.
    app = web.Application(client_max_size=settings.max_upload_bytes + (1 << 20))
    app[BUS], app[STORE], app[SETTINGS] = bus, store, settings
    app[BROADCASTER] = StatusBroadcaster()
    app.middlewares.append(faults.unavailable_middleware)  # broker or store down: 503
    app.router.add_post("/api/v1/jobs", submit_job)
    app.router.add_get("/api/v1/jobs/{id}", get_job)
    app.router.add_delete("/api/v1/jobs/{id}", delete_job)
    app.router.add_get("/api/v1/jobs/{id}/events", job_events)
    app.router.add_post("/api/v1/batches", create_batch)
    app.router.add_get("/api/v1/batches/{id}", get_batch)
    app.router.add_get("/api/v1/batches/{id}/zip", batch_zip)
    app.router.add_get("/api/v1/models", list_models)
    app.router.add_get("/api/v1/openapi.json", openapi_json)
    app.router.add_get(LOCAL_FILES_ROUTE + "{key:.+}", local_file)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/", index)
    app.router.add_static("/static/", STATIC_DIR)
    records_api.add_routes(app, store, bus)  # /api/v1/records*, /dashboard, /metrics
    connections.install(app, connections.ConnectionLimits.from_settings(settings))
    security.install(app, settings)  # CORS, security headers
    auth.install(app, settings)  # job owners, API keys, the operator, rate limits
    owner_limits.install(app, settings.max_unfinished_per_owner, settings.job_deadline_s)
    app.on_startup.append(_subscribe)
    app.on_startup.append(_start_maintenance)
    app.on_cleanup.append(_stop_maintenance)
    return app


MAINTENANCE = web.AppKey("maintenance", asyncio.Task)


def _reporter(app: web.Application) -> StatusReporter:
    return StatusReporter(JobLog(app[STORE]), app[BUS], stage="gateway")


async def _start_maintenance(app: web.Application) -> None:
    settings = app[SETTINGS]
    app[MAINTENANCE] = asyncio.create_task(
        maintenance.run_periodically(
            app[STORE],
            _reporter(app),
            settings.retention_s,
            settings.job_deadline_s,
            settings.maintenance_interval_s,
            app[records_api.RECORD_WRITER],
        )
    )


async def _stop_maintenance(app: web.Application) -> None:
    app[MAINTENANCE].cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await app[MAINTENANCE]


async def _subscribe(app: web.Application) -> None:
    bus = app[BUS]
    # Records are written beside the SSE streams, and read only once written: a client that
    # sees a job end on this replica can read its record.
    await follow_statuses(
        bus,
        app[records_api.PENDING_RECORDS].on_status,
        app[BROADCASTER].on_status,
        app[owner_limits.UNFINISHED].on_status,
    )
    jobs = JobLog(app[STORE])
    reporter = StatusReporter(jobs, bus, stage="gateway")
    for queue in topology.WORK_QUEUES:
        await bus.consume_dead_letters(queue, _dead_letter_handler(jobs, reporter))


def _dead_letter_handler(jobs: JobLog, reporter: StatusReporter) -> DeadLetterHandler:
    """A message a stage gave up on fails its job, saying which stage and why."""

    async def handle(queue: topology.QueueSpec, body: bytes, headers: dict[str, Any]) -> None:
        try:
            job_id = getattr(messages.decode(body), "job_id", None)
        except messages.MessageError as exc:
            # Its job can never run: fail it now, not at the deadline; the bus parks the
            # message in restora.parked for inspection.
            job_id = messages.job_id_of(body)
            view = await jobs.view(job_id) if job_id and is_valid_job_id(job_id) else None
            if view is not None and not view.is_final:
                reason = f"{queue.service} could not read the job's message: {exc}"
                await reporter.report(view.spec.job_id, "failed", error=reason)
            raise Reject(str(exc)) from exc
        if not job_id:
            return
        view = await jobs.view(job_id)
        if view is None or view.is_final:
            return
        attempts = int(headers.get("x-delivery-count") or topology.DELIVERY_LIMIT)
        last = f": {view.error}" if view.error else ""
        reason = f"{queue.service} gave up after {attempts} attempts{last}"
        await reporter.report(job_id, "failed", error=reason)

    return handle


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


# ---------------------------------------------------------------------------- submit
async def submit_job(request: web.Request) -> web.Response:
    settings, store, bus = request.app[SETTINGS], request.app[STORE], request.app[BUS]
    with telemetry.tracer().start_as_current_span("gateway submit") as span:
        received = time.time()
        try:
            await limits.check_before_upload(bus, settings)
            pace = BodyPace(settings.body_timeout_s, settings.min_body_rate)
            form = await read_upload(request, settings.max_upload_bytes, pace)
        except limits.Refused as exc:
            return exc.response()
        except InvalidRequest as exc:
            return _error(exc.status, str(exc))
        try:
            options, task = _validate(form, settings.weights_dir)
            image_size = form.files["image"].dimensions
            await limits.check_job(request, bus, settings, task, options, image_size)
            job_id = new_job_id()
            span.set_attribute("restora.job_id", job_id)
            span.set_attribute("restora.task", task)
            keys = JobKeys(job_id)
            owner = auth.new_ownership(request)
            spec = JobSpec(
                job_id=job_id,
                task=task,
                options=options,
                created_at=time.time(),
                upload_bytes=form.files["image"].size,
                upload_content_type=form.files["image"].format,
                owner_token_sha256=owner.token_sha256,
                owner_key_sha256=owner.key_sha256,
            )
            # The spec and the uploads side by side: one round trip, not two. Objects without
            # a spec become an orphan's only when none is recent (maintenance.ORPHAN_GRACE_S).
            mask_key = keys.upload_mask if "mask" in form.files else None
            await _all_stored(
                JobLog(store).create(spec),
                store.put(keys.upload, form.files["image"].data, form.files["image"].content_type),
                *([store.put(mask_key, form.files["mask"].data, "application/octet-stream")]
                  if mask_key else []),
            )
        except limits.Refused as exc:
            return exc.response()
        except InvalidRequest as exc:
            return _error(exc.status, str(exc))
        except StoreUnavailable as exc:
            log.warning("store_unavailable", job_id=job_id, error=str(exc))
            faults.roll_back(store, job_id)
            return faults.unavailable("the object store is unavailable; try again shortly")
        finally:
            form.close()
        stored_at = time.time()
        upload_s = stored_at - received  # receiving and storing the upload
        metrics.observe_stage("upload", upload_s, task=task)
        queue, message, queued_details = _first_hop(
            job_id, task, options, form.files["image"], keys.upload, mask_key, spec.created_at,
            settings,
        )
        # Publish first, announce after: until the broker confirms the message there is no
        # event and no client knows the id, and if publishing fails what was stored is rolled
        # back and the answer is 503. So no job can say "queued" without its message. What a
        # failed rollback or a crash here leaves has no event: the sweeper deletes it. A
        # message confirmed after we gave up finds its job gone, and every stage skips it.
        try:
            await bus.publish(queue, message)
        except Exception as exc:
            log.warning("publish_failed", job_id=job_id, error=repr(exc))
            faults.roll_back(store, job_id)
            return faults.unavailable("the job queue is unavailable; try again shortly")
        try:
            details = {"timings": {"gateway": {"upload_s": upload_s}}, **queued_details}
            await _reporter(request.app).report(job_id, "queued", at=stored_at, details=details)
        except Exception as exc:  # queued all the same: the stages announce its progress
            log.warning("queued_not_announced", job_id=job_id, error=repr(exc))
    owner_limits.accepted(request, job_id)
    log.info("job_accepted", job_id=job_id, task=task, model=options.model)
    status_url = f"/api/v1/jobs/{job_id}"
    return web.json_response(
        {
            "id": job_id,
            "state": "queued",
            "status_url": status_url,
            "events_url": auth.events_url(request, spec),
            # Send it as `Authorization: Bearer …` to read, follow or delete the job.
            "owner_token": owner.token,
        },
        status=202,
        headers={"Location": status_url},
    )


def _first_hop(
    job_id: str, task: str, options: messages.JobOptions, image: UploadedFile, upload_key: str,
    mask_key: str | None, submitted_at: float, settings: GatewaySettings,
) -> tuple[topology.QueueSpec, JobSubmitted | messages.RestoreRequested, dict[str, Any]]:
    """Where the job's message goes, the message, and what "queued" tells beside it: a PNG
    that needs no normalising goes to its first model with its input's facts (`routing`),
    anything else to preprocess."""
    straight = routing.straight_to_model(job_id, task, options, image, upload_key,
                                         submitted_at, settings)
    if straight is None:
        submitted = JobSubmitted(job_id, task, options, upload_key, mask_key, submitted_at)
        return topology.PREPROCESS, submitted, {}
    first = straight.request.task
    queue = topology.queue_for_task(first, options.for_step(first).model)
    return queue, straight.request, {"input": straight.input_facts}


async def _all_stored(*writes: Awaitable[None]) -> None:
    """Every write ended (none left running to land after a rollback), then the first error."""
    results = await asyncio.gather(*writes, return_exceptions=True)
    for result in results:
        if isinstance(result, BaseException):
            raise result


def _validate(form: UploadForm, weights_dir: Path) -> tuple[messages.JobOptions, str]:
    if "image" not in form.files:
        raise InvalidRequest("the form has no file field 'image'")
    task = form.fields.get("task", "")
    options = parse_options(task, form.fields, weights_dir, has_mask="mask" in form.files)
    task = chains.SEPARATOR.join(chains.steps_of(task))  # as stored: no spaces
    sniff_image(form.files["image"], "image")
    if "inpaint" in chains.steps_of(task):
        sniff_image(form.files["mask"], "mask")
        check_mask_matches(form.files["image"], form.files["mask"])
    return options, task


# ---------------------------------------------------------------------------- read
async def _load_view(request: web.Request) -> JobView:
    job_id = request.match_info["id"]
    if not is_valid_job_id(job_id):
        raise web.HTTPNotFound(
            text=json.dumps({"error": "no such job"}), content_type="application/json"
        )
    view = await JobLog(request.app[STORE]).view(job_id)
    # Another owner's job is as absent as a job that never was.
    if view is None or not auth.may_access(request, view.spec):
        raise web.HTTPNotFound(
            text=json.dumps({"error": "no such job"}), content_type="application/json"
        )
    return view


async def get_job(request: web.Request) -> web.Response:
    """Reads only: a stalled job is failed by the maintenance sweeper, not by a GET."""
    view = await _load_view(request)
    store = request.app[STORE]
    heartbeat = None if view.is_final else await JobLog(store).heartbeat(view.spec.job_id)
    doc = job_document(view, store, request.app[SETTINGS], heartbeat)
    doc["events_url"] = auth.events_url(request, view.spec)
    return web.json_response(doc)


async def delete_job(request: web.Request) -> web.Response:
    """Cancel a queued or running job (its service notices and stops) and delete its objects."""
    view = await _load_view(request)
    job_id = view.spec.job_id
    state = view.state
    if not view.is_final:
        await _reporter(request.app).report(job_id, "cancelled", error="cancelled by the user")
        state = "cancelled"
    await maintenance.delete_job_objects(request.app[STORE], job_id)
    log.info("job_deleted", job_id=job_id, state=state)
    return web.json_response({"id": job_id, "state": state, "deleted": True})


def job_document(
    view: JobView,
    store: BlobStore,
    settings: GatewaySettings,
    heartbeat: Heartbeat | None = None,
) -> dict[str, Any]:
    spec = view.spec
    worker = worker_status(view, heartbeat, settings.worker_stale_s, time.time())
    choice = view.details.get("auto")
    if spec.task == chains.AUTO:  # the chain preprocess chose (None until it has)
        steps = list(choice["chain"]) if isinstance(choice, dict) else None
    else:
        steps = list(chains.steps_of(spec.task))
    models = {**spec.options.models, **view.details.get("models", {})}
    doc: dict[str, Any] = {
        "id": spec.job_id,
        "task": spec.task,
        "steps": steps,  # the fixes, in order (one, or a chain)
        # task=auto: {"chain": [...], "reasons": ["JPEG quality 35 → artifacts", ...]}
        "auto": choice,
        "model": view.details.get("model", spec.options.model),
        # A chain's model per step (what ran, else what was asked); None for a single task.
        "models": ({s: models[s] for s in steps or () if s in models}
                   if spec.options.models else None),
        "options": {
            "sigma": spec.options.sigma if spec.options.sigma is not None else "auto",
            "quality": spec.options.quality if spec.options.quality is not None else "auto",
            "scale": spec.options.scale,
            "max_side": spec.options.max_side,
            "format": spec.options.format,
            "strength": spec.options.strength,
            "iterations": spec.options.iterations,
            "ensemble": spec.options.ensemble,
        },
        "state": view.state,
        "stages": view.stages,
        "progress": view.progress,
        "error": view.error if view.state == "failed" else None,
        # Not heard from (heartbeat or status) lately: its worker died or none has taken it.
        "worker": worker,
        "message": WAITING_FOR_A_WORKER if worker and not worker["alive"] else None,
        "created_at": spec.created_at,
        "updated_at": view.last_event_at,
        "input": view.details.get("input"),
        "output": view.details.get("output"),
        "timings": view.details.get("timings"),
    }
    doc["original_url"] = store.link(
        JobKeys(spec.job_id).upload, LinkOptions(settings.link_expiry_s)
    )
    if view.state == "done" and view.result_key:
        doc.update(result_links(store, settings, spec, view.result_key, doc["output"]))
    return doc


def result_links(
    store: BlobStore, settings: GatewaySettings, spec: JobSpec, result_key: str, output: Any
) -> dict[str, str]:
    """A done job's presigned links: the result (as a download and to view), its thumbnail
    and its preview (the result itself where it is small enough to be its own)."""
    expiry = settings.link_expiry_s
    filename = f"restora-{spec.job_id[:8]}-{spec.task}.{result_key.rsplit('.', 1)[-1]}"
    keys = JobKeys(spec.job_id)
    view_url = store.link(result_key, LinkOptions(expiry, filename, True))
    return {
        "result_url": store.link(result_key, LinkOptions(expiry, filename)),
        "result_view_url": view_url,
        "thumbnail_url": store.link(keys.thumbnail, LinkOptions(expiry)),
        "preview_url": (
            store.link(keys.preview, LinkOptions(expiry)) if _has_preview(output) else view_url
        ),
    }


def _has_preview(output: Any) -> bool:
    """Whether the result has a preview of its own; a job that did not say its size (from
    before results this small went without one) has."""
    try:
        return imaging.has_preview(int(output["width"]), int(output["height"]))
    except (TypeError, KeyError, ValueError):
        return True


async def job_events(request: web.Request) -> web.StreamResponse:
    """SSE: the current state first (or what was missed after Last-Event-ID), then live."""
    job_id = request.match_info["id"]
    broadcaster = request.app[BROADCASTER]
    queue = broadcaster.listen(job_id)  # before reading the log, so nothing slips between
    try:
        view = await _load_view(request)
        response = web.StreamResponse(
            headers={
                "Content-Type": "text/event-stream",
                "Cache-Control": "no-cache",
                "X-Accel-Buffering": "no",
            }
        )
        await response.prepare(request)
        last_sent = _last_event_id(request)

        async def send(status: JobStatus) -> int:
            # The done event carries the result's links: a client downloads without a read.
            links = (
                result_links(
                    request.app[STORE], request.app[SETTINGS], view.spec, status.result_key,
                    status.details.get("output"),
                )
                if status.state == "done" and status.result_key
                else None
            )
            return await _send(response, status, links)

        for status in _catch_up(view, last_sent):
            last_sent = await send(status)
        final = view.is_final
        while not final:
            try:
                status = await asyncio.wait_for(queue.get(), KEEPALIVE_S)
            except TimeoutError:
                await response.write(b": keep-alive\n\n")
                continue
            if int(event_id(status)) <= last_sent:
                continue
            last_sent = await send(status)
            final = status.is_final
        return response
    finally:
        broadcaster.stop_listening(job_id, queue)


def _last_event_id(request: web.Request) -> int:
    raw = request.headers.get("Last-Event-ID") or request.query.get("last_event_id") or "0"
    return int(raw) if raw.isdigit() else 0


def _catch_up(view: JobView, last_sent: int) -> list[JobStatus]:
    if last_sent:
        return [e for e in view.events if int(event_id(e)) > last_sent]
    # A new connection: the current state, as one event.
    latest = view.events[-1] if view.events else None
    at = latest.at if latest else view.spec.created_at
    return [
        JobStatus(
            job_id=view.spec.job_id,
            state=view.state,
            stage=latest.stage if latest else "gateway",
            at=at,
            progress=view.progress,
            error=view.error if view.state == "failed" else None,
            result_key=view.result_key if view.state == "done" else None,
            details={"output": view.details.get("output")},
        )
    ]


async def _send(
    response: web.StreamResponse, status: JobStatus, links: dict[str, str] | None = None
) -> int:
    ident = event_id(status)
    data: dict[str, Any] = {
        "state": status.state,
        "stage": status.stage,
        "progress": status.progress,
        "error": status.error,
        "at": status.at,
    }
    if isinstance(step := status.details.get("step"), dict):
        data["step"] = step  # a chain's: {"index", "name", "of"}
    if links:
        data.update(links)
    payload = f"id: {ident}\nevent: status\ndata: {json.dumps(data)}\n\n"
    await response.write(payload.encode())
    return int(ident)


# ---------------------------------------------------------------------------- batches
async def create_batch(request: web.Request) -> web.Response:
    return await batches.create_batch(request, request.app[STORE])


async def get_batch(request: web.Request) -> web.Response:
    return await batches.batch_document(request, request.app[STORE], request.app[SETTINGS])


async def batch_zip(request: web.Request) -> web.StreamResponse:
    return await batches.batch_zip(request, request.app[STORE])


# ---------------------------------------------------------------------------- misc
async def list_models(request: web.Request) -> web.Response:
    """What this installation offers: the registry's restorers whose weights are present, and
    for the others, why not."""
    weights_dir = request.app[SETTINGS].weights_dir
    tasks = {}
    for task in registry.TASKS:
        # Each restorer's availability is checked once (x4plus reads its provenance to answer).
        reasons = {m.name: m.unavailable_reason(weights_dir) for m in registry.restorers(task)}
        offered = [m for m in registry.restorers(task) if reasons[m.name] is None]
        tasks[task] = {
            "default": offered[0].name,
            "models": [
                {
                    "name": m.name,
                    "description": m.description,
                    "ensemble": m.ensemble,
                    "strength": m.offers_strength(weights_dir),
                }
                for m in offered
            ],
            "unavailable": [
                {"name": name, "reason": reason} for name, reason in reasons.items() if reason
            ],
        }
    return web.json_response(
        {
            "tasks": tasks,
            "sigma_range": list(registry.SIGMA_RANGE),
            "quality_range": list(registry.JPEG_QUALITY_RANGE),
            "scales": list(registry.SCALES),
            "formats": list(messages.OUTPUT_FORMATS),
            "dip_iterations_range": list(registry.DIP_ITERATIONS_RANGE),
        }
    )


async def openapi_json(request: web.Request) -> web.Response:
    return web.json_response(openapi.openapi_document(request.app[SETTINGS].weights_dir))


async def local_file(request: web.Request) -> web.StreamResponse:
    """Downloads from the local-disk store, through HMAC-signed expiring links."""
    store = request.app[STORE]
    if not isinstance(store, LocalDirBlobStore):
        raise web.HTTPNotFound()
    key = request.match_info["key"]
    if not store.verify_link(key, dict(request.query)):
        return _error(403, "this link has expired or is not valid")
    path = store.local_path(key)
    if not path.is_file():
        return _error(404, "the file is gone (expired or deleted)")
    headers = {}
    if disposition := request.query.get("disposition"):
        headers["Content-Disposition"] = disposition
    return web.FileResponse(path, headers=headers)


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    # Both at once, each bounded: not ready while the broker reconnects or the store is silent.
    broker, store = await asyncio.gather(request.app[BUS].ping(), request.app[STORE].ping())
    checks = {"broker": broker, "store": store}
    return web.json_response(
        {"ready": all(checks.values()), **checks}, status=200 if all(checks.values()) else 503
    )


async def index(request: web.Request) -> web.FileResponse:
    return web.FileResponse(STATIC_DIR / "index.html")


@contextlib.asynccontextmanager
async def running_gateway(
    app: web.Application, host: str, port: int
) -> AsyncIterator[web.AppRunner]:
    """Serve `app` until the block exits (tests and the embedded launcher use it)."""
    runner = web.AppRunner(app, access_log=None, **connections.runner_args(app))
    await runner.setup()
    site: web.BaseSite = (
        connections.GuardedSite(runner, host, port, app[connections.GUARD])
        if connections.GUARD in app
        else web.TCPSite(runner, host, port)
    )
    await site.start()
    try:
        yield runner
    finally:
        await runner.cleanup()
