"""The OpenAPI document, built from the same registry and ranges the gateway enforces."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from services.gateway import batches
from services.gateway.records_api import MAX_BUCKETS, MAX_LIMIT
from shared.ml import chains, registry
from shared.platform.messages import OUTPUT_FORMATS, TASKS
from shared.platform.records import RECORDED_OUTCOMES


def openapi_document(weights_dir: Path) -> dict[str, Any]:
    models = sorted({m.name for m in registry.RESTORERS})
    def auto_or(low: float, high: float) -> dict[str, Any]:
        number = {"type": "number", "minimum": low, "maximum": high}
        return {"oneOf": [{"type": "string", "enum": ["auto"]}, number]}

    job_form = {
        "type": "object",
        "required": ["image", "task"],
        "properties": {
            "image": {"type": "string", "format": "binary", "description": "the photo"},
            "task": {
                "type": "string",
                "pattern": "^(auto|(" + "|".join(TASKS) + ")(,(" + "|".join(TASKS) + "))*)$",
                "x-tasks": list(TASKS),
                "x-max-steps": chains.MAX_STEPS,
                "description": "one fix, or a chain of them run in order, separated by commas "
                "(e.g. artifacts,denoise,superres): at most "
                f"{chains.MAX_STEPS} steps, none repeated, inpaint first (with a mask), "
                "artifacts before denoise, superres last; each rule broken is a 400 naming it. "
                "The options apply to the steps that read them (sigma: denoise, quality: "
                "artifacts, scale/strength: superres). auto: the chain is chosen from the photo "
                "(JPEG quality, noise level, size; the job's `auto` says which and why), "
                "possibly none",
            },
            "mask": {
                "type": "string",
                "format": "binary",
                "description": "inpaint only: same size as the image, white = fill",
            },
            "model": {
                "type": "string",
                "x-models": models,
                "description": "default: the task's best available model. A chain: one name, "
                "used by every step that has a model of that name (the others take their "
                "default), or step:model pairs separated by commas "
                "(artifacts:mwcnn,denoise:classic), unnamed steps taking their default",
            },
            "sigma": {
                **auto_or(*registry.SIGMA_RANGE),
                "description": "noise level (0–255 scale) or auto",
                "x-range": list(registry.SIGMA_RANGE),
            },
            "quality": {
                **auto_or(*registry.JPEG_QUALITY_RANGE),
                "description": "JPEG quality the image was saved at, or auto",
                "x-range": list(registry.JPEG_QUALITY_RANGE),
            },
            "scale": {"type": "integer", "enum": list(registry.SCALES)},
            "max_side": {
                "type": "integer",
                "minimum": registry.MAX_SIDE_RANGE[0],
                "maximum": registry.MAX_SIDE_RANGE[1],
                "description": "shrink so the long side is at most this many pixels first",
            },
            "format": {"type": "string", "enum": list(OUTPUT_FORMATS), "default": "png"},
            "strength": {
                "type": "number",
                "minimum": 0,
                "maximum": 1,
                "default": 0,
                "description": "superres with GAN weights shipped (GET /api/v1/models says): "
                "0 = PSNR-oriented weights, 1 = GAN weights, between = network interpolation",
            },
            "ensemble": {
                "type": "string",
                "enum": ["true", "false", "1", "0", "yes", "no", "on", "off"],
                "default": "false",
                "description": "denoise/artifacts (mwcnn), superres (esrgan), inpaint "
                "(deepfill): average the network over 8 flips/rotations; a few hundredths "
                "to ~0.1 dB better, 8× slower",
            },
            "iterations": {
                "type": "integer",
                "minimum": registry.DIP_ITERATIONS_RANGE[0],
                "maximum": registry.DIP_ITERATIONS_RANGE[1],
                "description": "model=dip only: optimisation steps (early stop may end sooner)",
            },
        },
    }
    error = {"type": "object", "properties": {"error": {"type": "string"}}}
    retry_after = {"Retry-After": {"description": "seconds to wait before trying again",
                                   "schema": {"type": "integer", "minimum": 1}}}
    refusal = {"type": "object", "properties": {
        "error": {"type": "string"},
        "limit": {"type": "string", "description": "which limit: queue depth, job cost, ..."},
        "retry_after_s": {"type": "integer"},
    }}
    too_costly = {"type": "object", "properties": {
        "error": {"type": "string"},
        "limit": {"type": "string", "description": "job cost: the fields below come with it"},
        "setting": {"type": "string", "description": "the setting that holds the limit"},
        "cost": {"type": "number", "description": "the job's estimate, in work units"},
        "max_cost": {"type": "number"},
        "max_side": {"type": ["integer", "null"], "description": "the largest that fits"},
        "iterations": {"type": ["integer", "null"], "description": "dip: the most that fit"},
    }}
    job_id = {"name": "id", "in": "path", "required": True,
              "schema": {"type": "string", "pattern": "^[0-9a-f]{32}$"}}
    batch_id = {"name": "id", "in": "path", "required": True,
                "schema": {"type": "string", "pattern": "^[0-9a-f]{32}$"}}
    no_such_batch = {"404": {"description": "no such batch, or another owner's",
                             "content": _json(error)}}
    batch_made = {"type": "object", "required": ["id", "batch_token"], "properties": {
        "id": {"type": "string"}, "jobs": {"type": "integer"},
        "status_url": {"type": "string"},
        "batch_token": {"type": "string", "description": "send as Authorization: Bearer to "
                        "read the batch and its zip; shown only here"}}}
    no_such_job = {"404": {"description": "no such job, or another owner's",
                           "content": _json(error)}}
    limited = {"429": {"description": "rate limit exceeded; see Retry-After",
                       "content": _json(error)}}
    unauthorized = {"401": {"description": "needs the admin token", "content": _json(error)}}
    ok = {"200": {"description": "OK"}}
    ok_or_bad_filter = {**ok, "400": {"description": "bad filter", "content": _json(error)},
                        **unauthorized, **limited}
    # The job's owner token, the API key that submitted it, or the admin token.
    owner: list[dict[str, list[str]]] = [{"bearer": []}]
    admin: list[dict[str, list[str]]] = [{"bearer": []}]
    accepted = {"type": "object", "required": ["id", "state", "status_url", "owner_token"],
                "properties": {"id": {"type": "string"}, "state": {"type": "string"},
                               "status_url": {"type": "string"},
                               "events_url": {"type": "string"},
                               "owner_token": {"type": "string", "description":
                                               "send as Authorization: Bearer to read, "
                                               "follow or delete the job"}}}
    iso_time = {"type": "string", "description": "ISO 8601 date or date-time (UTC)"}
    record_filters = [_query("from", iso_time), _query("to", iso_time),
                      _query("task", {"enum": list(TASKS)}), _query("model", {"type": "string"}),
                      _query("outcome", {"enum": sorted(RECORDED_OUTCOMES)})]
    return {
        "openapi": "3.1.0",
        "info": {"title": "Restora", "version": "1"},
        "paths": {
            "/api/v1/jobs": {
                "post": {
                    "summary": "Submit an image to restore (anonymously, or with an API key)",
                    "security": [{}, {"bearer": []}],
                    "requestBody": {"content": {"multipart/form-data": {"schema": job_form}}},
                    "responses": {
                        "202": {"description": "accepted", "content": _json(accepted),
                                "links": {"MakeBatch": {
                                    "operationId": "makeBatch",
                                    "requestBody": {"jobs": [{
                                        "id": "$response.body#/id",
                                        "token": "$response.body#/owner_token"}]}}}},
                        "400": {"description": "bad field", "content": _json(error)},
                        "401": {"description": "unknown API key", "content": _json(error)},
                        "403": {"description": "cross-origin request from an origin not "
                                "allowed", "content": _json(error)},
                        "408": {"description": "the body stalled or came too slowly",
                                "content": _json(error)},
                        "413": {"description": "the upload, a text field or the number of "
                                "fields is over its limit, or the job would cost more work "
                                "than a job may (then `max_side` says what fits)",
                                "content": _json(too_costly)},
                        "415": {"description": "not an image", "content": _json(error)},
                        "429": {"description": "rate limit exceeded, or too many unfinished "
                                "jobs of this owner; see Retry-After",
                                "headers": retry_after, "content": _json(refusal)},
                        "503": {"description": "busy (too many jobs waiting for the task, or "
                                "too many connections), or the broker or store is unavailable "
                                "(nothing was kept); retry after the Retry-After seconds",
                                "headers": retry_after, "content": _json(refusal)},
                    },
                }
            },
            "/api/v1/jobs/{id}": {
                "parameters": [job_id],
                "get": {"summary": "The job document, with fresh presigned links; `worker` "
                        "and `message` (\"waiting for a worker\") tell whether a worker is "
                        "on an unfinished job",
                        "security": owner,
                        "responses": {"200": {"description": "the job"}, **no_such_job,
                                      **limited}},
                "delete": {"summary": "Cancel the job and delete its objects",
                           "security": owner,
                           "responses": {"200": {"description": "cancelled"}, **no_such_job,
                                         **limited}},
            },
            "/api/v1/jobs/{id}/events": {
                "parameters": [job_id],
                "get": {"summary": "Server-sent events of the job (Last-Event-ID honoured); "
                                   "the done event carries result_url, result_view_url, "
                                   "thumbnail_url and preview_url",
                        "security": [*owner, {"eventsToken": []}],
                        "responses": {"200": {"description": "text/event-stream"},
                                      **no_such_job, **limited}},
            },
            "/api/v1/batches": {
                "post": {
                    "operationId": "makeBatch",
                    "summary": "Make a batch of jobs you own (each job's owner token, or no "
                    "token and the API key that submitted them): read together, one zip",
                    "security": [{}, {"bearer": []}],
                    "requestBody": {"required": True,
                                    "content": _json(batch_request(batches.MAX_JOBS))},
                    "responses": {
                        "201": {"description": "made", "content": _json(batch_made),
                                "links": {op: {"operationId": op,
                                               "parameters": {"id": "$response.body#/id"}}
                                          for op in ("getBatch", "getBatchZip")}},
                        "400": {"description": "not JSON, no jobs, or more than "
                                f"{batches.MAX_JOBS} jobs", "content": _json(error)},
                        "404": {"description": "a job that does not exist or is not proven "
                                "yours (the error names its place: jobs[i])",
                                "content": _json(error)},
                        "413": {"description": "the body is over "
                                f"{batches.MAX_BODY_BYTES} bytes", "content": _json(error)},
                        **limited,
                    },
                }
            },
            "/api/v1/batches/{id}": {
                "parameters": [batch_id],
                "get": {"operationId": "getBatch",
                        "summary": "Each job's state and progress, counts per state, "
                        "`finished`, and `zip_url` (a short-lived link to the zip)",
                        "security": owner,
                        "responses": {"200": {"description": "the batch"}, **no_such_batch,
                                      **limited}},
            },
            "/api/v1/batches/{id}/zip": {
                "parameters": [batch_id],
                "get": {"operationId": "getBatchZip",
                        "summary": "The results as one zip (stored, streamed): "
                        "<index>-<name or job id>.<ext> and manifest.json; 409 while a job "
                        "is queued or running",
                        "security": [*owner, {"zipToken": []}],
                        "responses": {"200": {"description": "application/zip"},
                                      "409": {"description": "jobs not finished yet",
                                              "content": _json(error)},
                                      **no_such_batch, **limited}},
            },
            "/api/v1/models": {"get": {"summary": "Models and option ranges per task",
                                       "responses": ok}},
            "/api/v1/records": {
                "get": {"summary": "Performance records of finished jobs (JSON or CSV)",
                        "security": admin,
                        "parameters": [*record_filters, _query("limit", count(MAX_LIMIT)),
                                       _query("format", {"enum": ["json", "csv"]})],
                        "responses": ok_or_bad_filter},
            },
            "/api/v1/records/summary": {
                "get": {"summary": "Latency percentiles, failure rate and throughput",
                        "security": admin,
                        "parameters": [*record_filters, _query("buckets", count(MAX_BUCKETS))],
                        "responses": ok_or_bad_filter},
            },
            "/dashboard": {"get": {"summary": "Charts of the performance records (HTML); "
                                   "the admin token also as ?token=",
                                   "security": [*admin, {"dashboardToken": []}],
                                   "responses": {**ok, **unauthorized}}},
            "/metrics": {"get": {"summary": "Prometheus text (OpenTelemetry metrics)",
                                 "security": admin,
                                 "responses": {**ok, **unauthorized}}},
            "/healthz": {"get": {"summary": "Liveness", "responses": ok}},
            "/readyz": {"get": {"summary": "Broker and store reachable",
                                "responses": {**ok, "503": {"description": "not ready"}}}},
        },
        "components": {"securitySchemes": {
            "bearer": {"type": "http", "scheme": "bearer", "description":
                       "a job's owner_token (from the 202 answer), an API key, or the "
                       "admin token (RESTORA_ADMIN_TOKEN)"},
            "eventsToken": {"type": "apiKey", "in": "query", "name": "access", "description":
                            "short-lived token in the job's events_url (EventSource cannot "
                            "send headers)"},
            "zipToken": {"type": "apiKey", "in": "query", "name": "access", "description":
                         "short-lived token in the batch's zip_url (a link sends no header)"},
            "dashboardToken": {"type": "apiKey", "in": "query", "name": "token",
                               "description": "the admin token, for the dashboard page only"},
        }},
        "x-models": {task: registry.models_for(task, weights_dir) for task in TASKS},
    }


def batch_request(max_jobs: int) -> dict[str, Any]:
    entry = {"type": "object", "required": ["id"], "properties": {
        "id": {"type": "string", "pattern": "^[0-9a-f]{32}$"},
        "token": {"type": "string", "description": "the job's owner_token; leave out when "
                  "the Bearer API key submitted the job"},
        "name": {"type": "string", "description": "the photo's file name: its stem names "
                 "the zip entry"}}}
    return {"type": "object", "required": ["jobs"], "properties": {
        "jobs": {"type": "array", "items": entry, "minItems": 1, "maxItems": max_jobs}}}


def _json(schema: dict[str, Any]) -> dict[str, Any]:
    return {"application/json": {"schema": schema}}


def _query(name: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "schema": schema}


def count(high: int) -> dict[str, Any]:
    return {"type": "integer", "minimum": 1, "maximum": high}
