"""Privacy at the gateway: jobs belong to their owner, operator routes to the operator.

A job is read, followed and deleted with its owner token (from the 202 answer), the API key
that submitted it, or the admin token; anyone else gets the 404 of a missing job. Records,
the dashboard and /metrics need the admin token. Then rate limits, CORS and the security
headers, and the deployment: no operator route on the public Ingress.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import pytest
import yaml
from aiohttp.test_utils import make_mocked_request

from services.gateway import auth, security
from services.gateway.openapi import openapi_document
from shared.ml.registry import SHIPPED_WEIGHTS_DIR
from shared.platform.config import GatewaySettings
from shared.platform.jobs import JobKeys, JobSpec, fold
from shared.platform.messages import JobOptions, JobStatus
from shared.platform.records import build_record
from tests.pipeline_helpers import png_bytes
from tests.stack import ADMIN, ADMIN_TOKEN, Stack, running_stack

ROOT = Path(__file__).resolve().parent.parent
IMAGE = png_bytes(np.random.default_rng(5).integers(0, 255, (32, 48), dtype=np.uint8))
OPERATOR_PATHS = ("/api/v1/records", "/api/v1/records/summary", "/dashboard", "/metrics")
EVIL = "https://evil.example"


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _form(**fields: str) -> aiohttp.FormData:
    form = aiohttp.FormData()
    form.add_field("image", IMAGE, filename="photo.png", content_type="image/png")
    form.add_field("task", fields.pop("task", "denoise"))
    form.add_field("model", fields.pop("model", "classic"))
    for name, value in fields.items():
        form.add_field(name, value)
    return form


async def post_job(
    session: aiohttp.ClientSession, url: str, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, Any], Any]:
    async with session.post(f"{url}/api/v1/jobs", data=_form(), headers=headers) as response:
        return response.status, await response.json(), response.headers


async def status_of(
    session: aiohttp.ClientSession, method: str, url: str, headers: dict[str, str] | None = None
) -> int:
    async with session.request(method, url, headers=headers) as response:
        if response.content_type != "text/event-stream":  # an open stream is just closed
            await response.read()
        return response.status


@pytest.fixture
async def stack(tmp_path: Path) -> AsyncIterator[Stack]:
    async with running_stack(tmp_path, workers=False) as running:
        yield running


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as client:
        yield client


async def _first_event(session: aiohttp.ClientSession, url: str, **kw: Any) -> dict[str, Any]:
    async with session.get(url, **kw) as response:
        assert response.status == 200, await response.text()
        async for raw in response.content:
            line = raw.decode().strip()
            if line.startswith("data: "):
                return dict(json.loads(line[6:]))
    raise AssertionError("no event")


# ---------------------------------------------------------------------------- owners
async def test_the_owner_token_reads_follows_and_deletes_its_job(
    tmp_path: Path, session: aiohttp.ClientSession
) -> None:
    async with running_stack(tmp_path) as stack:
        status, body, headers = await post_job(session, stack.url)
        assert status == 202 and headers["Location"] == body["status_url"]
        token, job_id = body["owner_token"], body["id"]
        assert len(token) >= 40 and token not in (job_id, body["events_url"])
        # The page's way: EventSource on events_url, no header; it runs to the end.
        events = []
        async with session.get(stack.url + body["events_url"]) as response:
            assert response.status == 200
            async for raw in response.content:
                if raw.startswith(b"data: "):
                    events.append(json.loads(raw[6:]))
        assert events[-1]["state"] == "done"
        # An API client's way: the token as a Bearer header, everywhere.
        event = await _first_event(session, f"{stack.url}/api/v1/jobs/{job_id}/events",
                                   headers=bearer(token))
        assert event["state"] == "done"
        async with session.get(stack.url + body["status_url"], headers=bearer(token)) as r:
            assert r.status == 200
            doc = await r.json()
        assert doc["state"] == "done" and doc["result_url"] and "access=" in doc["events_url"]
        async with session.get(stack.url + doc["result_url"]) as r:  # a signed link
            assert r.status == 200
        async with session.delete(stack.url + body["status_url"], headers=bearer(token)) as r:
            assert r.status == 200 and (await r.json())["deleted"]


async def test_another_owner_gets_404_for_get_delete_and_events(
    stack: Stack, session: aiohttp.ClientSession
) -> None:
    _, mine, _ = await post_job(session, stack.url)
    _, theirs, _ = await post_job(session, stack.url)
    job = f"{stack.url}/api/v1/jobs/{mine['id']}"
    basic = {"Authorization": "Basic x"}
    strangers = [None, bearer(theirs["owner_token"]), bearer("x" * 43), basic]
    for headers in strangers:
        assert await status_of(session, "GET", job, headers) == 404, headers
        assert await status_of(session, "GET", job + "/events", headers) == 404, headers
        assert await status_of(session, "DELETE", job, headers) == 404, headers
    # Indistinguishable from a job that does not exist, and the job is untouched.
    async with session.get(job) as r1, session.get(f"{stack.url}/api/v1/jobs/{'0' * 32}") as r2:
        assert (r1.status, await r1.json()) == (r2.status, await r2.json())
    async with session.get(job, headers=bearer(mine["owner_token"])) as response:
        assert response.status == 200 and (await response.json())["state"] == "queued"


async def test_an_events_token_opens_only_its_own_jobs_events(
    stack: Stack, session: aiohttp.ClientSession
) -> None:
    _, mine, _ = await post_job(session, stack.url)
    _, theirs, _ = await post_job(session, stack.url)
    access = mine["events_url"].split("?", 1)[1]
    assert (await _first_event(session, stack.url + mine["events_url"]))["state"] == "queued"
    for url in (
        f"{stack.url}/api/v1/jobs/{theirs['id']}/events?{access}",  # another job
        f"{stack.url}/api/v1/jobs/{mine['id']}?{access}",  # not the job document
        f"{stack.url}/api/v1/jobs/{mine['id']}/events?access=1.{'0' * 64}",  # forged
    ):
        assert await status_of(session, "GET", url) == 404, url
    assert await status_of(session, "DELETE", f"{stack.url}/api/v1/jobs/{mine['id']}?{access}") \
        == 404


def test_events_tokens_expire() -> None:
    spec = JobSpec("a" * 32, "denoise", JobOptions("classic"), 0.0, 1, owner_token_sha256="f" * 64)
    token = auth.events_token(b"k", spec, now=1000.0)
    assert auth.verify_events_token(b"k", spec, token, now=1000.0)
    assert not auth.verify_events_token(b"k", spec, token, now=1000.0 + 601)
    assert not auth.verify_events_token(b"other", spec, token, now=1000.0)
    legacy = JobSpec("a" * 32, "denoise", JobOptions("classic"), 0.0, 1)  # no owner recorded
    assert not auth.verify_events_token(b"k", legacy, auth.events_token(b"k", legacy, 1000.0),
                                        now=1000.0)


async def test_the_store_keeps_only_a_hash_of_the_owner_token(
    stack: Stack, session: aiohttp.ClientSession
) -> None:
    _, body, _ = await post_job(session, stack.url)
    raw = (await stack.store.get(JobKeys(body["id"]).spec)).decode()
    assert body["owner_token"] not in raw
    digest = hashlib.sha256(body["owner_token"].encode()).hexdigest()
    assert json.loads(raw)["owner_token_sha256"] == digest
    for key in await stack.store.list(""):
        assert body["owner_token"].encode() not in await stack.store.get(key), key


async def test_the_admin_reads_and_deletes_every_job(
    stack: Stack, session: aiohttp.ClientSession
) -> None:
    _, body, _ = await post_job(session, stack.url)
    job = f"{stack.url}/api/v1/jobs/{body['id']}"
    assert await status_of(session, "GET", job, ADMIN) == 200
    assert (await _first_event(session, job + "/events", headers=ADMIN))["state"] == "queued"
    assert await status_of(session, "DELETE", job, ADMIN) == 200


async def test_a_job_submitted_with_an_api_key_belongs_to_that_key(
    tmp_path: Path, session: aiohttp.ClientSession
) -> None:
    keys = ["key-of-alice", "key-of-bob"]
    hashes = ",".join(hashlib.sha256(k.encode()).hexdigest() for k in keys)
    async with running_stack(tmp_path, workers=False, api_keys=hashes) as stack:
        status, body, _ = await post_job(session, stack.url, bearer("key-of-alice"))
        assert status == 202
        job = f"{stack.url}{body['status_url']}"
        assert await status_of(session, "GET", job, bearer("key-of-alice")) == 200
        assert await status_of(session, "GET", job, bearer(body["owner_token"])) == 200
        assert await status_of(session, "GET", job, bearer("key-of-bob")) == 404
        assert await status_of(session, "DELETE", job, bearer("key-of-bob")) == 404
        # An unknown key is refused rather than silently made anonymous.
        status, body, headers = await post_job(session, stack.url, bearer("key-of-mallory"))
        assert status == 401 and headers["WWW-Authenticate"].startswith("Bearer")
        assert "id" not in body


def test_api_keys_are_configured_as_hashes() -> None:
    digest = hashlib.sha256(b"k").hexdigest()
    assert auth.parse_api_keys(f" {digest.upper()}, {digest}\n") == (digest, digest)
    with pytest.raises(ValueError, match="sha256"):
        auth.parse_api_keys("plain-text-key")


# ---------------------------------------------------------------------------- operator
async def test_operator_routes_need_the_admin_token(
    stack: Stack, session: aiohttp.ClientSession
) -> None:
    _, body, _ = await post_job(session, stack.url)
    for path in OPERATOR_PATHS:
        url = stack.url + path
        for headers in (None, bearer("wrong"), bearer(body["owner_token"])):
            async with session.get(url, headers=headers) as response:
                assert response.status == 401, (path, headers)
                assert response.headers["WWW-Authenticate"].startswith("Bearer")
                assert body["id"] not in await response.text()
        assert await status_of(session, "GET", url, ADMIN) == 200, path
    # ?token= opens the dashboard page only, never the data behind it.
    assert await status_of(session, "GET", f"{stack.url}/dashboard?token={ADMIN_TOKEN}") == 200
    for path in ("/api/v1/records", "/api/v1/records/summary", "/metrics"):
        assert await status_of(session, "GET", f"{stack.url}{path}?token={ADMIN_TOKEN}") == 401


async def test_without_an_admin_token_the_operator_routes_stay_closed(
    tmp_path: Path, session: aiohttp.ClientSession
) -> None:
    async with running_stack(tmp_path, workers=False, admin_token="") as stack:
        for path in OPERATOR_PATHS:
            for headers in (None, {"Authorization": "Bearer "}, ADMIN):
                assert await status_of(session, "GET", stack.url + path, headers) == 401


def test_a_record_holds_nothing_that_leads_to_the_files() -> None:
    token = auth.new_owner_token()
    spec = JobSpec("b" * 32, "denoise", JobOptions("classic"), 100.0, 10,
                   owner_token_sha256=auth.sha256_hex(token), owner_key_sha256="e" * 64)
    events = [JobStatus(spec.job_id, "queued", "gateway", at=100.5),
              JobStatus(spec.job_id, "done", "denoise", at=101.0,
                        result_key=JobKeys(spec.job_id).result("png"))]
    record = build_record(fold(spec, events), "test")
    assert record is not None
    text = json.dumps(record)
    for secret in (token, spec.owner_token_sha256, spec.owner_key_sha256, "result/", "http",
                   "signature"):
        assert secret not in text, secret


# ---------------------------------------------------------------------------- rate limits
async def test_an_exceeded_rate_limit_answers_429_with_retry_after(
    tmp_path: Path, session: aiohttp.ClientSession
) -> None:
    key = "key-of-carol"
    async with running_stack(
        tmp_path, workers=False, rate_limit_per_minute=2, api_key_rate_limit_per_minute=3,
        api_keys=hashlib.sha256(key.encode()).hexdigest(),
    ) as stack:
        url = stack.url + "/api/v1/models"
        assert [await status_of(session, "GET", url) for _ in range(2)] == [200, 200]
        async with session.get(url) as response:
            assert response.status == 429
            assert 1 <= int(response.headers["Retry-After"]) <= 30
        status, _, headers = await post_job(session, stack.url)
        assert status == 429 and int(headers["Retry-After"]) >= 1
        # A key has its own bucket; the operator is never limited; the page itself is not.
        assert [await status_of(session, "GET", url, bearer(key)) for _ in range(4)] == [
            200, 200, 200, 429]
        assert {await status_of(session, "GET", url, ADMIN) for _ in range(5)} == {200}
        assert await status_of(session, "GET", stack.url + "/") == 200


async def test_no_rate_limit_by_default(stack: Stack, session: aiohttp.ClientSession) -> None:
    assert GatewaySettings().rate_limit_per_minute == 0
    url = stack.url + "/api/v1/models"
    assert {await status_of(session, "GET", url) for _ in range(30)} == {200}


def test_a_token_bucket_refills_at_the_configured_rate() -> None:
    now = [0.0]
    limiter = security.RateLimiter(60, clock=lambda: now[0])  # one a second, bursts of 60
    assert all(limiter.take("ip") == 0 for _ in range(60))
    assert limiter.take("ip") == pytest.approx(1.0)
    assert limiter.take("other") == 0
    now[0] += 2.5
    assert limiter.take("ip") == 0 and limiter.take("ip") == 0
    assert limiter.take("ip") == pytest.approx(0.5)


def test_the_client_ip_behind_trusted_proxies() -> None:
    request = make_mocked_request("GET", "/", headers={"X-Forwarded-For": "6.6.6.6, 1.2.3.4"})
    assert security.client_ip(request, 1) == "1.2.3.4"  # what the Ingress saw
    assert security.client_ip(request, 2) == "6.6.6.6"
    assert security.client_ip(request, 0) == (request.remote or "")  # a claim, not trusted


# ---------------------------------------------------------------------------- CORS
async def test_a_foreign_origin_may_not_submit_or_delete(
    stack: Stack, session: aiohttp.ClientSession
) -> None:
    status, body, _ = await post_job(session, stack.url, {"Origin": EVIL})
    assert status == 403 and "origin" in body["error"]
    _, mine, _ = await post_job(session, stack.url, {"Origin": stack.url})  # the page itself
    job = f"{stack.url}/api/v1/jobs/{mine['id']}"
    owner = bearer(mine["owner_token"])
    assert await status_of(session, "DELETE", job, {**owner, "Origin": EVIL}) == 403
    async with session.get(job, headers={**owner, "Origin": EVIL}) as response:
        assert response.status == 200  # the browser withholds it: no CORS headers
        assert not [h for h in response.headers if h.lower().startswith("access-control")]
    async with session.options(f"{stack.url}/api/v1/jobs", headers={
        "Origin": EVIL, "Access-Control-Request-Method": "POST"}) as response:
        assert response.status == 403
        assert "Access-Control-Allow-Origin" not in response.headers


async def test_an_allowed_origin_gets_the_cors_headers(
    tmp_path: Path, session: aiohttp.ClientSession
) -> None:
    app_origin = "https://app.example"
    async with running_stack(tmp_path, workers=False, cors_origins=app_origin) as stack:
        async with session.options(f"{stack.url}/api/v1/jobs", headers={
            "Origin": app_origin, "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization"}) as response:
            assert response.status == 204
            assert response.headers["Access-Control-Allow-Origin"] == app_origin
            assert "Authorization" in response.headers["Access-Control-Allow-Headers"]
            assert "DELETE" in response.headers["Access-Control-Allow-Methods"]
        status, _, headers = await post_job(session, stack.url, {"Origin": app_origin})
        assert status == 202 and headers["Access-Control-Allow-Origin"] == app_origin
        assert "Location" in headers["Access-Control-Expose-Headers"]
        assert "Origin" in headers["Vary"]
        status, _, headers = await post_job(session, stack.url, {"Origin": EVIL})
        assert status == 403 and "Access-Control-Allow-Origin" not in headers
    with pytest.raises(ValueError, match="not an origin"):
        security.parse_origins("app.example/path")


# ---------------------------------------------------------------------------- headers
async def test_pages_and_api_answers_carry_the_security_headers(
    stack: Stack, session: aiohttp.ClientSession
) -> None:
    for path in ("/", f"/dashboard?token={ADMIN_TOKEN}", "/api/v1/models", "/static/app.js",
                 f"/api/v1/jobs/{'0' * 32}", "/no-such-page"):
        async with session.get(stack.url + path) as response:
            headers = response.headers
            assert headers["X-Content-Type-Options"] == "nosniff", path
            assert headers["X-Frame-Options"] == "DENY", path
            assert headers["Referrer-Policy"] in ("no-referrer", "same-origin"), path
            assert "frame-ancestors 'none'" in headers["Content-Security-Policy"], path
    async with session.get(stack.url + "/") as response:
        csp = response.headers["Content-Security-Policy"]
    assert "default-src 'self'" in csp and "object-src 'none'" in csp
    assert "unsafe-inline" not in csp and "unsafe-eval" not in csp
    # What the pages load fits that policy: no inline scripts, styles or handlers.
    for name in ("index.html", "dashboard.html"):
        html = (ROOT / "services/gateway/static" / name).read_text()
        assert not re.search(r"<script(?![^>]*\bsrc=)", html), name
        assert not re.search(r"<style|\sstyle=|\son[a-z]+=", html), name
    async with session.get(f"{stack.url}/api/v1/jobs/{'0' * 32}") as response:
        assert response.headers["Content-Security-Policy"].startswith("default-src 'none'")
    # A revalidated page keeps the page's policy (a browser applies a 304's headers to it).
    async with session.get(stack.url + "/", headers={
            "If-Modified-Since": "Sun, 01 Jan 2090 00:00:00 GMT"}) as response:
        assert response.status == 304
        assert response.headers["Content-Security-Policy"] == csp


def test_the_page_policy_allows_the_stores_public_host() -> None:
    settings = GatewaySettings(s3_endpoint="minio:9000", s3_public_endpoint="s3.example.com",
                               s3_public_secure=True)
    assert "img-src 'self' data: blob: https://s3.example.com;" in security.page_csp(settings)
    assert "minio" not in security.page_csp(settings)


# ---------------------------------------------------------------------------- interface
def test_the_openapi_document_declares_the_bearer_scheme() -> None:
    doc = openapi_document(SHIPPED_WEIGHTS_DIR)
    schemes = doc["components"]["securitySchemes"]
    assert schemes["bearer"] == {**schemes["bearer"], "type": "http", "scheme": "bearer"}
    job = doc["paths"]["/api/v1/jobs/{id}"]
    assert job["get"]["security"] == job["delete"]["security"] == [{"bearer": []}]
    assert {"bearer": []} in doc["paths"]["/api/v1/records"]["get"]["security"]
    accepted = doc["paths"]["/api/v1/jobs"]["post"]["responses"]["202"]
    assert "owner_token" in accepted["content"]["application/json"]["schema"]["required"]


def _routed(paths: list[dict[str, Any]], path: str) -> bool:
    for rule in paths:
        prefix = rule["path"]
        if rule["pathType"] == "Exact" and path == prefix:
            return True
        if rule["pathType"] == "Prefix" and (
            path == prefix or path.startswith(prefix.rstrip("/") + "/")
        ):
            return True
    return False


def test_the_public_ingress_routes_no_operator_path() -> None:
    ingress = yaml.safe_load((ROOT / "k8s/base/ingress.yaml").read_text())
    (rule,) = ingress["spec"]["rules"]
    paths = rule["http"]["paths"]
    for path in (*OPERATOR_PATHS, "/api/v1/records/x", "/metrics/", "/dashboard/"):
        assert not _routed(paths, path), path
    for path in ("/", "/static/app.js", "/api/v1/jobs", "/api/v1/jobs/abc/events",
                 "/api/v1/models", "/api/v1/openapi.json"):
        assert _routed(paths, path), path


def test_the_admin_token_and_api_keys_live_in_the_secret() -> None:
    secret = next(d for d in yaml.safe_load_all((ROOT / "k8s/secret.template.yaml").read_text())
                  if d["metadata"]["name"] == "restora-app")
    assert {"RESTORA_ADMIN_TOKEN", "RESTORA_API_KEYS"} <= set(secret["stringData"])
    configmap = (ROOT / "k8s/base/restora.env").read_text()
    assert "RESTORA_ADMIN_TOKEN" not in configmap and "RESTORA_API_KEYS" not in configmap
