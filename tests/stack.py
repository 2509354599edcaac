"""A whole Restora stack for tests: bus + store of either kind, workers, gateway on a port."""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import socket
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import aio_pika
import aiohttp
import torch

from services.embedded import start_workers
from services.gateway.app import create_app, running_gateway
from shared.ml.runtime import ModelRuntime
from shared.platform import topology
from shared.platform.blobstore import BlobStore, LocalDirBlobStore, S3BlobStore
from shared.platform.config import GatewaySettings, PreprocessSettings
from shared.platform.eventbus import EventBus, InProcessBus, RabbitBus, declare_topology
from tests.servers import S3Endpoint

# The operator's credential in test stacks; a session with ADMIN headers reads every job.
ADMIN_TOKEN = "test-admin-token"
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Stack:
    url: str
    bus: EventBus
    store: BlobStore
    settings: GatewaySettings


def s3_settings(endpoint: S3Endpoint, **overrides: Any) -> GatewaySettings:
    """Settings for `endpoint`, with a fresh bucket per call unless one is given."""
    overrides.setdefault("s3_bucket", f"restora-test-{secrets.token_hex(4)}")
    return GatewaySettings(
        s3_endpoint=endpoint.endpoint,
        s3_access_key=endpoint.access_key,
        s3_secret_key=endpoint.secret_key,
        s3_secure=endpoint.secure,
        s3_region=endpoint.region,
        **overrides,
    )


async def purge_queues(rabbitmq_url: str) -> None:
    """Tests share one broker: start each from empty queues."""
    connection = await aio_pika.connect_robust(rabbitmq_url)
    async with connection:
        channel = await connection.channel()
        await declare_topology(channel)
        names = [n for s in topology.WORK_QUEUES for n in (s.name, s.dead_letter_queue)]
        for name in (*names, topology.PARKED_QUEUE):
            queue = await channel.get_queue(name, ensure=True)
            await queue.purge()


@contextlib.asynccontextmanager
async def running_stack(
    tmp_path: Path,
    rabbitmq_url: str | None = None,
    s3: S3Endpoint | None = None,
    workers: bool = True,
    **settings_overrides: Any,
) -> AsyncIterator[Stack]:
    """Gateway (+ workers unless `workers=False`) on real servers where given, else embedded."""
    port = free_port()
    settings_overrides.setdefault("admin_token", ADMIN_TOKEN)
    if s3 is not None:
        settings = s3_settings(s3, port=port, **settings_overrides)
        store: BlobStore = S3BlobStore(settings)
        await store.ensure_bucket()
    else:
        settings = GatewaySettings(port=port, data_dir=tmp_path, **settings_overrides)
        store = LocalDirBlobStore(tmp_path / "objects", b"test-secret")
    if rabbitmq_url:
        await purge_queues(rabbitmq_url)
        settings = replace(settings, broker_url=rabbitmq_url)
        bus: EventBus = RabbitBus(rabbitmq_url)
    else:
        bus = InProcessBus()
    await bus.start()
    try:
        if workers:
            runtime = ModelRuntime(settings.weights_dir, torch.device("cpu"))
            await start_workers(bus, store, PreprocessSettings(), runtime)
        async with running_gateway(create_app(bus, store, settings), "127.0.0.1", port):
            yield Stack(f"http://127.0.0.1:{port}", bus, store, settings)
    finally:
        await bus.close()


async def submit(
    session: aiohttp.ClientSession,
    url: str,
    image: bytes,
    task: str,
    mask: bytes | None = None,
    **fields: str,
) -> tuple[int, dict[str, Any]]:
    form = aiohttp.FormData()
    form.add_field("image", image, filename="photo.png", content_type="image/png")
    form.add_field("task", task)
    if mask is not None:
        form.add_field("mask", mask, filename="mask.png", content_type="image/png")
    for name, value in fields.items():
        form.add_field(name, value)
    async with session.post(f"{url}/api/v1/jobs", data=form) as response:
        return response.status, await response.json()


async def follow_events(
    session: aiohttp.ClientSession, url: str, job_id: str, timeout: float = 60.0
) -> list[dict[str, Any]]:
    """Read the job's SSE stream until it ends (after a final state)."""
    events: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout
    async with session.get(f"{url}/api/v1/jobs/{job_id}/events") as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/event-stream")
        async for raw in response.content:
            line = raw.decode().strip()
            if line.startswith("data: "):
                events.append(json.loads(line[6:]))
            if time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id} did not finish: {events}")
    return events


async def wait_for_state(
    session: aiohttp.ClientSession, url: str, job_id: str, states: set[str], timeout: float = 60
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        async with session.get(f"{url}/api/v1/jobs/{job_id}") as response:
            doc = await response.json()
        if doc["state"] in states:
            return doc
        if time.monotonic() > deadline:
            raise TimeoutError(f"job {job_id} stuck in {doc['state']}")
        await asyncio.sleep(0.1)


async def download(session: aiohttp.ClientSession, base_url: str, link: str) -> bytes:
    """Fetch a presigned/signed link the way a browser would: without credentials (an S3
    server refuses a presigned request that also carries an Authorization header)."""
    target = link if link.startswith("http") else base_url + link
    async with aiohttp.ClientSession() as plain, plain.get(target) as response:
        assert response.status == 200, await response.text()
        return await response.read()
