"""Who may do what at the gateway: a job's owner, API keys, the operator.

- Every job belongs to whoever created it. The `202` answer carries a random owner token
  (`owner_token`); the job spec keeps only its sha256 (`JobSpec.owner_token_sha256`). A job
  submitted with an API key also records that key's sha256, so the key reads it too.
- Reading, deleting and following a job needs `Authorization: Bearer <owner token | API key
  | admin token>`. Anyone else gets the same `404` as for a job that does not exist: the
  job id is unguessable, but it is never the only key.
- Job progress streams are read by the browser's EventSource, which cannot send headers:
  the job document (and the `202`) carry `events_url` with a short-lived `access` token,
  an HMAC over the job id and an expiry, valid for that one job's events and nothing else.
- The records, the dashboard and /metrics are the operator's: `RESTORA_ADMIN_TOKEN` as a
  Bearer credential (the dashboard page alone also takes it as `?token=`, the link `make
  run` prints). Unset, those routes answer `401` to everyone.
- API keys are configured as sha256 hex digests (`RESTORA_API_KEYS`), never as keys. A
  Bearer credential that is none of the above is taken for an owner token; on a submission,
  where no owner token makes sense, it is refused as an unknown API key.

Every comparison of credentials is between sha256 digests, in constant time.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import time
from dataclasses import dataclass
from typing import Literal

from aiohttp import web
from aiohttp.typedefs import Handler

from services.gateway import security
from shared.platform.config import GatewaySettings
from shared.platform.jobs import JobSpec
from shared.platform.logging import get_logger

log = get_logger(__name__)

# Routes (canonical paths) only the operator may call.
ADMIN_ROUTES = frozenset({"/api/v1/records", "/api/v1/records/summary", "/dashboard", "/metrics"})
DASHBOARD_ROUTE = "/dashboard"
SUBMIT_ROUTE = "/api/v1/jobs"
EVENTS_ROUTE = "/api/v1/jobs/{id}/events"
# Long enough to open the stream and ride out a reconnect; the page falls back to polling
# (with its Bearer token) when a reconnect comes later than this.
EVENTS_TOKEN_TTL_S = 600
_SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")

Kind = Literal["anonymous", "bearer", "api_key", "admin"]


def sha256_hex(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def new_owner_token() -> str:
    """256 random bits, URL-safe: what the `202` answer hands to the job's creator."""
    return secrets.token_urlsafe(32)


def same(a: str, b: str) -> bool:
    return bool(a) and bool(b) and hmac.compare_digest(a.encode(), b.encode())


@dataclass(frozen=True)
class Principal:
    """Who sent a request: nobody, a Bearer credential we do not know yet (an owner token,
    perhaps), an API key, or the operator; `credential_sha256` is that credential's digest."""

    kind: Kind = "anonymous"
    credential_sha256: str = ""

    @property
    def is_admin(self) -> bool:
        return self.kind == "admin"


class Credentials:
    """The configured credentials: the admin token's digest and the API keys' digests."""

    def __init__(self, admin_token: str, api_keys: str) -> None:
        self.admin_sha256 = sha256_hex(admin_token) if admin_token else ""
        self.api_key_sha256s = parse_api_keys(api_keys)

    def identify(self, credential: str | None) -> Principal:
        if not credential:
            return Principal()
        digest = sha256_hex(credential)
        if same(digest, self.admin_sha256):
            return Principal("admin", digest)
        # Every key is compared (constant time each): no early exit tells which one matched.
        matches = [same(digest, key) for key in self.api_key_sha256s]
        if any(matches):
            return Principal("api_key", digest)
        return Principal("bearer", digest)


def parse_api_keys(raw: str) -> tuple[str, ...]:
    """`RESTORA_API_KEYS`: sha256 hex digests separated by commas or whitespace."""
    keys = tuple(k.lower() for k in re.split(r"[\s,]+", raw.strip()) if k)
    bad = [k for k in keys if not _SHA256_HEX.match(k)]
    if bad:
        raise ValueError(
            "RESTORA_API_KEYS holds sha256 hex digests of the keys (64 hex digits each), "
            "e.g. printf %s KEY | sha256sum"
        )
    return keys


def bearer(request: web.Request) -> str | None:
    scheme, _, value = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer":
        return None
    return value.strip() or None


def principal(request: web.Request) -> Principal:
    """Who sent `request`, from its Authorization header (two digests: cheap to redo)."""
    return request.app[GUARD].credentials.identify(bearer(request))


# ------------------------------------------------------------------------------ jobs
@dataclass(frozen=True)
class Ownership:
    """A new job's owner token (handed out once) and the digests its spec keeps."""

    token: str
    token_sha256: str
    key_sha256: str = ""


def new_ownership(request: web.Request) -> Ownership:
    token = new_owner_token()
    who = principal(request)
    key = who.credential_sha256 if who.kind == "api_key" else ""
    return Ownership(token, sha256_hex(token), key)


def may_access(request: web.Request, spec: JobSpec) -> bool:
    """The operator, the owner token's holder, the submitting API key; for the events
    route also a valid `access` token."""
    who = principal(request)
    if who.is_admin:
        return True
    if who.credential_sha256 and (
        same(who.credential_sha256, spec.owner_token_sha256)
        or same(who.credential_sha256, spec.owner_key_sha256)
    ):
        return True
    if _route(request) == EVENTS_ROUTE and "access" in request.query:
        return verify_events_token(request.app[GUARD].events_key, spec, request.query["access"])
    return False


def access_token(key: bytes, scope: str, holder_sha256: str, ttl_s: float,
                 now: float | None = None) -> str:
    """A link credential that opens one thing (`scope`, e.g. a job's events) until it expires.

    Keyed by the gateway's secret and the holder's credential digest: any replica configured
    alike checks it, and it stops working when the holder's credential is not the one it was.
    """
    expires = int((time.time() if now is None else now) + ttl_s)
    return f"{expires}.{_access_mac(key, scope, holder_sha256, expires)}"


def verify_access_token(key: bytes, scope: str, holder_sha256: str, token: str,
                        now: float | None = None) -> bool:
    expires, _, mac = token.partition(".")
    if not expires.isdigit() or not holder_sha256:
        return False
    if int(expires) < (time.time() if now is None else now):
        return False
    return same(mac, _access_mac(key, scope, holder_sha256, int(expires)))


def _access_mac(key: bytes, scope: str, holder_sha256: str, expires: int) -> str:
    message = f"{scope}:{expires}".encode()
    return hmac.new(key + holder_sha256.encode(), message, hashlib.sha256).hexdigest()


def events_token(key: bytes, spec: JobSpec, now: float | None = None) -> str:
    return access_token(key, f"events:{spec.job_id}", spec.owner_token_sha256,
                        EVENTS_TOKEN_TTL_S, now)


def verify_events_token(key: bytes, spec: JobSpec, token: str, now: float | None = None) -> bool:
    return verify_access_token(key, f"events:{spec.job_id}", spec.owner_token_sha256, token, now)


def events_url(request: web.Request, spec: JobSpec) -> str:
    url = f"/api/v1/jobs/{spec.job_id}/events"
    if not spec.owner_token_sha256:
        return url
    return f"{url}?access={events_token(request.app[GUARD].events_key, spec)}"


# ------------------------------------------------------------------------------ the guard
@dataclass
class Guard:
    credentials: Credentials
    events_key: bytes
    per_ip: security.RateLimiter
    per_key: security.RateLimiter
    proxy_hops: int


GUARD: web.AppKey[Guard] = web.AppKey("guard", Guard)


def install(app: web.Application, settings: GatewaySettings) -> None:
    app[GUARD] = Guard(
        credentials=Credentials(settings.admin_token, settings.api_keys),
        events_key=settings.link_secret.encode(),
        per_ip=security.RateLimiter(settings.rate_limit_per_minute),
        per_key=security.RateLimiter(settings.api_key_rate_limit_per_minute),
        proxy_hops=settings.trusted_proxy_hops,
    )
    if not settings.admin_token:
        log.warning("no_admin_token", detail="set RESTORA_ADMIN_TOKEN to open the records, "
                    "the dashboard and /metrics; until then they answer 401")
    app.middlewares.append(guard)


def _route(request: web.Request) -> str:
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else ""


def _refuse(status: int, message: str, **headers: str) -> web.Response:
    return web.json_response({"error": message}, status=status, headers=headers)


@web.middleware
async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Identify the caller, apply the rate limit, keep the operator's routes to the operator."""
    state, route = request.app[GUARD], _route(request)
    credential = bearer(request)
    if credential is None and route == DASHBOARD_ROUTE:
        credential = request.query.get("token")  # the dashboard page only: a link to open
    who = state.credentials.identify(credential)
    if not who.is_admin and security.is_limited(request.path):
        if who.kind == "api_key":
            wait = state.per_key.take(who.credential_sha256)
        else:
            wait = state.per_ip.take(security.client_ip(request, state.proxy_hops))
        if wait:
            return _refuse(429, "too many requests; try again later",
                           **{"Retry-After": str(max(1, int(wait + 0.999)))})
    if route in ADMIN_ROUTES and not who.is_admin:
        return _admin_only(route)
    if route == SUBMIT_ROUTE and request.method == "POST" and who.kind == "bearer":
        return _refuse(401, "unknown API key", **{"WWW-Authenticate": 'Bearer realm="restora"'})
    return await handler(request)


def _admin_only(route: str) -> web.Response:
    challenge = {"WWW-Authenticate": 'Bearer realm="restora"'}
    if route == DASHBOARD_ROUTE:
        return web.Response(
            status=401,
            content_type="text/html",
            headers=challenge,
            text="<!doctype html><title>Restora · operators only</title><p>The dashboard is "
            "for operators: open <code>/dashboard?token=…</code> with the admin token "
            "(<code>RESTORA_ADMIN_TOKEN</code>; <code>make run</code> prints the link).</p>",
        )
    return _refuse(401, "this route needs the admin token (Authorization: Bearer …)", **challenge)
