"""Batches: several of one owner's jobs read, followed and downloaded as one.

- `POST /api/v1/batches` with `{"jobs": [{"id": …, "token": …, "name": …}, …]}` makes a
  batch of jobs the caller proves it owns, each one: its owner token in `token`, or, with no
  `token`, the caller's Bearer API key that submitted it (or the admin token). A job not
  proven is refused as absent (`404`, naming its place in the list), so a batch never
  reveals whether someone else's job exists. At most `MAX_JOBS` jobs (`400`); one listed
  twice is in the zip twice.
  `name` (optional) is the photo's file name; only its stem, cleaned, names the zip entry.
- The `201` carries the batch `id` and a `batch_token`, handed out once: send it as
  `Authorization: Bearer …` to read the batch. The API key that made a batch reads it too,
  and the operator. Anyone else gets the `404` of a batch that does not exist.
- The batch is the object `batches/<id>.json`: job ids, names, and sha256 digests of the
  batch token (and of the API key), never a token.
- `GET /api/v1/batches/{id}/zip` streams the results as one zip, entries stored (images are
  compressed already): `<index>-<stem or job id>.<ext>`, then `manifest.json` (each job's
  state, its file or its error). While a job is queued or running it answers `409` with the
  counts; once every job has finished it streams what is done and the manifest says what is
  not. Results are read one at a time and written to the response in chunks. A browser link
  cannot send a header, so the batch document carries `zip_url` with a short-lived `access`
  token for that batch's zip only.
"""

from __future__ import annotations

import hmac
import json
import re
import secrets
import time
import zipfile
from collections import Counter
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from services.gateway import auth
from shared.platform.blobstore import BlobNotFound, BlobStore, LinkOptions
from shared.platform.config import GatewaySettings
from shared.platform.jobs import JobKeys, JobLog, JobView, is_valid_job_id
from shared.platform.messages import FINAL_STATES

MAX_JOBS = 100
MAX_BODY_BYTES = 64 * 1024
ZIP_TOKEN_TTL_S = 600
CHUNK = 256 * 1024
_NAME_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
_BATCH_ID = re.compile(r"^[0-9a-f]{32}$")
# A job that is no more (deleted, or swept after the retention period).
GONE = "gone"


def batch_key(batch_id: str) -> str:
    return f"batches/{batch_id}.json"


@dataclass(frozen=True)
class Batch:
    batch_id: str
    job_ids: list[str]
    names: list[str]
    token_sha256: str
    key_sha256: str
    created_at: float

    def to_json(self) -> bytes:
        return json.dumps({
            "id": self.batch_id, "jobs": self.job_ids, "names": self.names,
            "token_sha256": self.token_sha256, "key_sha256": self.key_sha256,
            "created_at": self.created_at,
        }).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> Batch:
        doc = json.loads(raw)
        return cls(doc["id"], list(doc["jobs"]), list(doc["names"]), doc["token_sha256"],
                   doc.get("key_sha256", ""), float(doc["created_at"]))


class BatchRefused(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status

    def response(self) -> web.Response:
        return web.json_response({"error": str(self)}, status=self.status)


def clean_stem(name: object) -> str:
    """The file name's stem, kept to letters, digits, dot, dash and underscore."""
    if not isinstance(name, str):
        return ""
    stem = name.replace("\\", "/").rsplit("/", 1)[-1].rsplit(".", 1)[0]
    return _NAME_UNSAFE.sub("_", stem).strip("._")[:60]


def parse_request(raw: bytes) -> list[dict[str, Any]]:
    try:
        body = json.loads(raw)
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
        raise BatchRefused(400, "the body is not JSON") from exc
    entries = body.get("jobs") if isinstance(body, dict) else None
    if not isinstance(entries, list) or not entries:
        raise BatchRefused(400, 'the body needs "jobs": a list of {"id", "token"}')
    if len(entries) > MAX_JOBS:
        raise BatchRefused(400, f"a batch holds at most {MAX_JOBS} jobs (got {len(entries)})")
    for index, entry in enumerate(entries):
        if not isinstance(entry, dict) or not isinstance(entry.get("id"), str):
            raise BatchRefused(400, f'jobs[{index}] needs an "id" (a string)')
        token = entry.get("token")
        if token is not None and not isinstance(token, str):
            raise BatchRefused(400, f'jobs[{index}]: "token" must be a string')
    return entries


def _owns(request: web.Request, entry: dict[str, Any], view: JobView | None) -> bool:
    if view is None:
        return False
    token = entry.get("token")
    if token:
        digest = auth.sha256_hex(token)
        return bool(view.spec.owner_token_sha256) and hmac.compare_digest(
            digest.encode(), view.spec.owner_token_sha256.encode())
    who = auth.principal(request)  # no token: the API key that submitted it, or the operator
    return who.kind in ("api_key", "admin") and auth.may_access(request, view.spec)


async def _read_body(request: web.Request) -> bytes:
    if (request.content_length or 0) > MAX_BODY_BYTES:
        raise BatchRefused(413, f"the body is over {MAX_BODY_BYTES} bytes")
    raw = b""
    while chunk := await request.content.read(CHUNK):
        raw += chunk
        if len(raw) > MAX_BODY_BYTES:
            raise BatchRefused(413, f"the body is over {MAX_BODY_BYTES} bytes")
    return raw


async def create_batch(request: web.Request, store: BlobStore) -> web.Response:
    try:
        entries = parse_request(await _read_body(request))
        jobs = JobLog(store)
        for index, entry in enumerate(entries):
            view = await jobs.view(entry["id"]) if is_valid_job_id(entry["id"]) else None
            if not _owns(request, entry, view):
                raise BatchRefused(404, f"jobs[{index}]: no such job")
    except BatchRefused as exc:
        return exc.response()
    token = secrets.token_urlsafe(32)
    who = auth.principal(request)
    batch = Batch(
        batch_id=secrets.token_hex(16),
        job_ids=[e["id"] for e in entries],
        names=[clean_stem(e.get("name")) for e in entries],
        token_sha256=auth.sha256_hex(token),
        key_sha256=who.credential_sha256 if who.kind == "api_key" else "",
        created_at=time.time(),
    )
    await store.put(batch_key(batch.batch_id), batch.to_json(), "application/json")
    url = f"/api/v1/batches/{batch.batch_id}"
    return web.json_response(
        {"id": batch.batch_id, "jobs": len(batch.job_ids), "status_url": url,
         # Send it as `Authorization: Bearer …` to read the batch; it is shown only here.
         "batch_token": token},
        status=201, headers={"Location": url},
    )


# ------------------------------------------------------------------------------ access
def _may_read(request: web.Request, batch: Batch, zip_route: bool) -> bool:
    who = auth.principal(request)
    if who.is_admin:
        return True
    digest = who.credential_sha256
    if digest and (auth.same(digest, batch.token_sha256) or auth.same(digest, batch.key_sha256)):
        return True
    if zip_route and "access" in request.query:
        return verify_zip_token(request.app[auth.GUARD].events_key, batch, request.query["access"])
    return False


def zip_token(key: bytes, batch: Batch, now: float | None = None) -> str:
    return auth.access_token(key, f"batch-zip:{batch.batch_id}", batch.token_sha256,
                             ZIP_TOKEN_TTL_S, now)


def verify_zip_token(key: bytes, batch: Batch, token: str, now: float | None = None) -> bool:
    return auth.verify_access_token(key, f"batch-zip:{batch.batch_id}", batch.token_sha256,
                                    token, now)


async def load_batch(request: web.Request, store: BlobStore, zip_route: bool = False) -> Batch:
    batch_id = request.match_info["id"]
    missing = web.HTTPNotFound(text=json.dumps({"error": "no such batch"}),
                               content_type="application/json")
    if not _BATCH_ID.match(batch_id):
        raise missing
    try:
        batch = Batch.from_json(await store.get(batch_key(batch_id)))
    except BlobNotFound:
        raise missing from None
    if not _may_read(request, batch, zip_route):
        raise missing  # another owner's batch is as absent as one that never was
    return batch


# ------------------------------------------------------------------------------ reading
async def _views(store: BlobStore, batch: Batch) -> list[JobView | None]:
    jobs = JobLog(store)
    return [await jobs.view(job_id) for job_id in batch.job_ids]


def _state(view: JobView | None) -> str:
    return GONE if view is None else view.state


def entry_name(index: int, batch: Batch, view: JobView) -> str:
    ext = (view.result_key or "").rsplit(".", 1)[-1] or "png"
    return f"{index + 1:03d}-{batch.names[index] or batch.job_ids[index]}.{ext}"


async def batch_document(
    request: web.Request, store: BlobStore, settings: GatewaySettings
) -> web.Response:
    batch = await load_batch(request, store)
    views = await _views(store, batch)
    expiry = settings.link_expiry_s
    jobs = []
    for index, (job_id, view) in enumerate(zip(batch.job_ids, views, strict=True)):
        job: dict[str, Any] = {"index": index, "id": job_id, "name": batch.names[index],
                               "state": _state(view), "progress": None, "error": None}
        if view is not None:
            job |= {"task": view.spec.task, "progress": view.progress,
                    "error": view.error if view.state == "failed" else None}
            if view.state == "done" and view.result_key:
                name = entry_name(index, batch, view)
                job["result_url"] = store.link(view.result_key, LinkOptions(expiry, name))
                job["thumbnail_url"] = store.link(JobKeys(job_id).thumbnail, LinkOptions(expiry))
        jobs.append(job)
    counts = Counter(j["state"] for j in jobs)
    finished = all(j["state"] in FINAL_STATES or j["state"] == GONE for j in jobs)
    key = request.app[auth.GUARD].events_key
    return web.json_response({
        "id": batch.batch_id,
        "created_at": batch.created_at,
        "total": len(jobs),
        "counts": dict(counts),
        "finished": finished,
        "jobs": jobs,
        "zip_url": f"/api/v1/batches/{batch.batch_id}/zip?access={zip_token(key, batch)}",
    })


async def batch_zip(request: web.Request, store: BlobStore) -> web.StreamResponse:
    batch = await load_batch(request, store, zip_route=True)
    views = await _views(store, batch)
    states = [_state(v) for v in views]
    unfinished = [s for s in states if s not in FINAL_STATES and s != GONE]
    if unfinished:
        return web.json_response(
            {"error": f"{len(unfinished)} of {len(states)} jobs are not finished yet; the zip "
             "is ready when every job has finished", "counts": dict(Counter(states))},
            status=409)
    response = web.StreamResponse(headers={
        "Content-Type": "application/zip",
        "Content-Disposition": f'attachment; filename="restora-batch-{batch.batch_id[:8]}.zip"',
        "Cache-Control": "no-store",
    })
    await response.prepare(request)
    sink = _Sink()
    manifest = []
    with zipfile.ZipFile(sink, "w", compression=zipfile.ZIP_STORED) as archive:
        for index, view in enumerate(views):
            item: dict[str, Any] = {"index": index, "id": batch.job_ids[index],
                                    "state": states[index]}
            if view is not None and view.state == "done" and view.result_key:
                try:
                    data = await store.get(view.result_key)  # one result at a time
                except BlobNotFound:
                    data = None
                if data is not None:
                    name = entry_name(index, batch, view)
                    info = zipfile.ZipInfo(name, time.localtime()[:6])
                    info.file_size = len(data)
                    with archive.open(info, "w") as entry:
                        for start in range(0, len(data), CHUNK):
                            entry.write(data[start:start + CHUNK])
                            await response.write(sink.take())
                    item["file"] = name
                else:
                    item["state"] = GONE
            elif view is not None and view.error:
                item["error"] = view.error
            manifest.append(item)
            await response.write(sink.take())
        archive.writestr("manifest.json", json.dumps({"batch": batch.batch_id,
                                                      "jobs": manifest}, indent=2))
    await response.write(sink.take())
    await response.write_eof()
    return response


class _Sink:
    """A write-only, unseekable file for zipfile: what is written waits here until taken."""

    def __init__(self) -> None:
        self._parts: list[bytes] = []
        self._written = 0

    def write(self, data: bytes, /) -> int:
        self._parts.append(bytes(data))
        self._written += len(data)
        return len(data)

    def tell(self) -> int:
        return self._written

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass

    def take(self) -> bytes:
        data, self._parts = b"".join(self._parts), []
        return data
