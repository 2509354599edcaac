"""The gateway's connections: a cap on how many are open, and no slow client keeps one.

aiohttp closes a kept-alive connection left idle (its `keepalive_timeout`, which also bounds a
later request that arrives on it too slowly), and the upload reader answers a stalled or
trickling body with 408 (`uploads.BodyPace`). What aiohttp lacks is a timeout for a new
connection's first request line and headers, and a cap on open connections: `GuardedSite`
serves the app through aiohttp's own protocol with both around it. A connection over the cap
is answered 503 with Retry-After and closed before anything of it is read.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from shared.platform.config import GatewaySettings
from shared.platform.logging import get_logger

log = get_logger(__name__)

_BUSY_BODY = b'{"error": "the gateway has too many connections open; try again shortly"}'
_BUSY = (
    b"HTTP/1.1 503 Service Unavailable\r\n"
    b"Content-Type: application/json\r\n"
    b"Retry-After: 1\r\n"
    b"Connection: close\r\n"
    b"Content-Length: " + str(len(_BUSY_BODY)).encode() + b"\r\n\r\n" + _BUSY_BODY
)


@dataclass(frozen=True)
class ConnectionLimits:
    """0 turns a limit off."""

    header_timeout_s: float = 0.0
    idle_timeout_s: float = 0.0
    max_connections: int = 0

    @classmethod
    def from_settings(cls, settings: GatewaySettings) -> ConnectionLimits:
        return cls(settings.header_timeout_s, settings.idle_timeout_s, settings.max_connections)

    def handler_args(self) -> dict[str, Any]:
        """aiohttp's own knobs (web.AppRunner passes them to each connection's protocol)."""
        return {"keepalive_timeout": self.idle_timeout_s} if self.idle_timeout_s > 0 else {}


class ConnectionGuard:
    """Counts the open connections; closes one whose first request is not in by the deadline."""

    def __init__(self, limits: ConnectionLimits) -> None:
        self.limits = limits
        self.open = 0
        self.refused = 0
        self.timed_out = 0
        self._awaiting_headers: dict[web.RequestHandler, _Guarded] = {}

    def protocol(self, server: web.Server) -> asyncio.Protocol:
        """The protocol for a new connection (the factory `loop.create_server` calls)."""
        cap = self.limits.max_connections
        if cap and self.open >= cap:
            self.refused += 1
            return _Refused()
        self.open += 1
        return _Guarded(server(), self)

    def request_started(self, handler: Any) -> None:
        """A request's headers are in (the middleware says so): no header deadline any more."""
        guarded = self._awaiting_headers.pop(handler, None)
        if guarded is not None:
            guarded.cancel_header_timer()


class _Guarded(asyncio.Protocol):
    """aiohttp's protocol for one connection, with the header deadline and the count."""

    def __init__(self, inner: web.RequestHandler, guard: ConnectionGuard) -> None:
        self._inner = inner
        self._guard = guard
        self._timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        timeout = self._guard.limits.header_timeout_s
        if timeout > 0:
            self._guard._awaiting_headers[self._inner] = self
            self._timer = asyncio.get_running_loop().call_later(timeout, self._headers_too_slow)
        self._inner.connection_made(transport)

    def cancel_header_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _headers_too_slow(self) -> None:
        self._timer = None
        self._guard._awaiting_headers.pop(self._inner, None)
        self._guard.timed_out += 1
        log.info("connection_timed_out", reason="no complete request headers in time",
                 timeout_s=self._guard.limits.header_timeout_s)
        self._inner.force_close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.cancel_header_timer()
        self._guard._awaiting_headers.pop(self._inner, None)
        self._guard.open -= 1
        self._inner.connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        self._inner.data_received(data)

    def eof_received(self) -> None:
        self._inner.eof_received()  # aiohttp's returns None: the transport closes on EOF

    def pause_writing(self) -> None:
        self._inner.pause_writing()

    def resume_writing(self) -> None:
        self._inner.resume_writing()


class _Refused(asyncio.Protocol):
    """Over the cap: 503 at once, then close (the client's request is never read)."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.WriteTransport)
        transport.write(_BUSY)
        transport.close()


GUARD = web.AppKey("connection_guard", ConnectionGuard)


def install(app: web.Application, limits: ConnectionLimits) -> None:
    """Give `app` a guard, and the middleware that tells it when a request's headers are in."""
    app[GUARD] = ConnectionGuard(limits)
    app.middlewares.append(_request_started)


@web.middleware
async def _request_started(request: web.Request, handler: Any) -> web.StreamResponse:
    request.app[GUARD].request_started(request.protocol)
    response: web.StreamResponse = await handler(request)
    if response.status == 408:
        # A body too slow to arrive: answer, then close, rather than let aiohttp linger for
        # the rest of it as it does after other early answers.
        await response.prepare(request)
        await response.write_eof()
        request.protocol.force_close()
    return response


class GuardedSite(web.BaseSite):
    """A TCP site whose connections go through `guard`."""

    def __init__(
        self, runner: web.BaseRunner, host: str, port: int, guard: ConnectionGuard,
        *, backlog: int = 128,
    ) -> None:
        super().__init__(runner, backlog=backlog)
        self._host, self._port, self._guard = host, port, guard

    @property
    def name(self) -> str:
        return f"http://{self._host}:{self._port}"

    async def start(self) -> None:
        await super().start()
        server = self._runner.server
        assert isinstance(server, web.Server)
        guard = self._guard
        self._server = await asyncio.get_running_loop().create_server(
            lambda: guard.protocol(server), self._host, self._port, backlog=self._backlog
        )


def runner_args(app: web.Application) -> dict[str, Any]:
    """What `web.AppRunner` needs for the app's limits (none for an app without a guard)."""
    return app[GUARD].limits.handler_args() if GUARD in app else {}
