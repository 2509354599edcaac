"""HTTP hygiene of the gateway: CORS, security headers, rate limits, the client's address.

- CORS: no other origin may call the API unless it is in `RESTORA_CORS_ORIGINS`. A POST or
  DELETE whose `Origin` is another site not in that list is refused with `403` (forms and
  scripts of other sites cannot submit or delete on a visitor's behalf); a listed origin
  gets the CORS headers, anything else gets none. Credentials are Bearer headers, never
  cookies, so no `Access-Control-Allow-Credentials`.
- Every response carries nosniff, `X-Frame-Options: DENY`, `Referrer-Policy: no-referrer`
  (a dashboard URL with `?token=` never leaves in a Referer) and a Content-Security-Policy:
  the pages load only their own scripts and styles, images from here, `data:`/`blob:` (the
  icon, the local preview of a chosen photo) and the object store's public host (presigned
  links); the API's answers (JSON, files) get `default-src 'none'` in a sandbox.
- Rate limits: a token bucket per client IP and per API key, refilled at the configured
  requests per minute, holding at most a minute's worth. The buckets live in each gateway
  replica; an exceeded limit answers `429` with `Retry-After`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from urllib.parse import urlsplit

from aiohttp import web
from aiohttp.typedefs import Handler

from shared.platform.blobstore import LOCAL_FILES_ROUTE
from shared.platform.config import GatewaySettings

API_PREFIX = "/api/v1/"
STATE_CHANGING = frozenset({"POST", "PUT", "PATCH", "DELETE"})
PREFLIGHT_MAX_AGE_S = 600
# Above this many buckets, full ones (clients idle for a minute or more) are dropped.
MAX_IDLE_BUCKETS = 10_000

CORS_ORIGINS: web.AppKey[frozenset[str]] = web.AppKey("cors_origins", frozenset)
PAGE_CSP: web.AppKey[str] = web.AppKey("page_csp", str)
OTHER_CSP = "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'; sandbox"


def install(app: web.Application, settings: GatewaySettings) -> None:
    """CORS and the security headers; the rate limits are applied by `auth.guard`."""
    app[CORS_ORIGINS] = parse_origins(settings.cors_origins)
    app[PAGE_CSP] = page_csp(settings)
    app.middlewares.append(cors)
    app.on_response_prepare.append(add_headers)


# ------------------------------------------------------------------------------ CORS
def parse_origins(raw: str) -> frozenset[str]:
    origins = set()
    for item in raw.replace(",", " ").split():
        parts = urlsplit(item)
        if parts.scheme not in ("http", "https") or not parts.netloc or parts.path.strip("/"):
            raise ValueError(f"RESTORA_CORS_ORIGINS: {item!r} is not an origin (https://host[:port])")
        origins.add(f"{parts.scheme}://{parts.netloc}".lower())
    return frozenset(origins)


def is_same_origin(origin: str, request: web.Request) -> bool:
    """The page's own origin: the host the request was sent to (a TLS-terminating proxy
    in front means the schemes may differ; the host is what identifies the site here)."""
    return urlsplit(origin).netloc.lower() == request.host.lower()


def _foreign_origin(request: web.Request) -> str | None:
    origin = request.headers.get("Origin")
    if origin is None or is_same_origin(origin, request):
        return None
    return origin.lower()


@web.middleware
async def cors(request: web.Request, handler: Handler) -> web.StreamResponse:
    origin = _foreign_origin(request)
    if origin is None:
        return await handler(request)
    allowed = origin in request.app[CORS_ORIGINS]
    if request.method == "OPTIONS" and "Access-Control-Request-Method" in request.headers:
        if not allowed:
            return web.json_response({"error": f"origin {origin} is not allowed"}, status=403)
        return web.Response(
            status=204,
            headers={
                "Access-Control-Allow-Methods": "GET, POST, DELETE",
                "Access-Control-Allow-Headers": "Authorization, Content-Type, Last-Event-ID",
                "Access-Control-Max-Age": str(PREFLIGHT_MAX_AGE_S),
            },
        )
    if request.method in STATE_CHANGING and not allowed:
        return web.json_response(
            {"error": f"cross-origin request from {origin} refused"}, status=403
        )
    return await handler(request)


# ------------------------------------------------------------------------------ headers
def page_csp(settings: GatewaySettings) -> str:
    images = ["'self'", "data:", "blob:"]
    if settings.s3_endpoint:  # presigned links point at the store's public host
        host = settings.s3_public_endpoint or settings.s3_endpoint
        secure = settings.s3_public_secure if settings.s3_public_endpoint else settings.s3_secure
        images.append(f"{'https' if secure else 'http'}://{host}")
    return (
        f"default-src 'self'; img-src {' '.join(images)}; object-src 'none'; "
        "base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
    )


async def add_headers(request: web.Request, response: web.StreamResponse) -> None:
    headers = response.headers
    headers.setdefault("X-Content-Type-Options", "nosniff")
    headers.setdefault("X-Frame-Options", "DENY")
    headers.setdefault("Referrer-Policy", "no-referrer")
    # By path, not by content type: a 304 has none, and a browser applies its headers to the
    # page it revalidated.
    api = request.path.startswith(API_PREFIX)
    headers.setdefault("Content-Security-Policy", OTHER_CSP if api else request.app[PAGE_CSP])
    if api and not request.path.startswith(LOCAL_FILES_ROUTE):
        # Job documents carry fresh links: no shared cache keeps them.
        headers.setdefault("Cache-Control", "no-store")
    origins = request.app[CORS_ORIGINS]
    if origins:
        headers.add("Vary", "Origin")
        origin = _foreign_origin(request)
        if origin is not None and origin in origins:
            headers["Access-Control-Allow-Origin"] = origin
            headers["Access-Control-Expose-Headers"] = "Location, Retry-After"


# ------------------------------------------------------------------------------ rate limits
def is_limited(path: str) -> bool:
    """API calls count; the page, its assets and signed file links do not."""
    return path.startswith(API_PREFIX) and not path.startswith(LOCAL_FILES_ROUTE)


def client_ip(request: web.Request, proxy_hops: int) -> str:
    """The peer, or with `proxy_hops` trusted proxies in front, the address the farthest of
    them saw (counted from the right of X-Forwarded-For: entries further left are whatever
    the client claimed)."""
    if proxy_hops > 0:
        chain = [
            part.strip()
            for header in request.headers.getall("X-Forwarded-For", [])
            for part in header.split(",")
            if part.strip()
        ]
        if chain:
            return chain[-min(proxy_hops, len(chain))]
    return request.remote or ""


class RateLimiter:
    """Token buckets per key: `per_minute` requests a minute, bursts of up to that many."""

    def __init__(self, per_minute: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.capacity = float(per_minute)
        self.rate = per_minute / 60.0
        self.clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}  # key -> (tokens, at)

    def take(self, key: str) -> float:
        """0 when the request may go ahead (one token taken), else the seconds to wait."""
        if self.capacity <= 0:
            return 0.0
        now = self.clock()
        tokens, at = self._buckets.get(key, (self.capacity, now))
        tokens = min(self.capacity, tokens + (now - at) * self.rate)
        if tokens >= 1.0:
            self._buckets[key] = (tokens - 1.0, now)
            self._forget_idle(now)
            return 0.0
        self._buckets[key] = (tokens, now)
        return (1.0 - tokens) / self.rate

    def _forget_idle(self, now: float) -> None:
        if len(self._buckets) <= MAX_IDLE_BUCKETS:
            return
        refill_s = math.ceil(self.capacity / self.rate)
        for key, (_, at) in list(self._buckets.items()):
            if now - at >= refill_s:
                del self._buckets[key]
