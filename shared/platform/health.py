"""`/healthz` and `/readyz` on a service's own port, for compose and Kubernetes probes."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from aiohttp import web

from shared.platform import metrics

Check = Callable[[], Awaitable[bool]]


def health_app(checks: dict[str, Check]) -> web.Application:
    async def healthz(_: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def readyz(_: web.Request) -> web.Response:
        # At once: each check is bounded (a store probe ~1.5 s), so /readyz answers in time.
        answers = await asyncio.gather(*(check() for check in checks.values()))
        results = dict(zip(checks, answers, strict=True))
        ok = all(results.values())
        return web.json_response({"ready": ok, **results}, status=200 if ok else 503)

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics.prometheus_handler)
    return app


async def serve_health(checks: dict[str, Check], port: int, host: str = "0.0.0.0") -> web.AppRunner:
    runner = web.AppRunner(health_app(checks), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    return runner
