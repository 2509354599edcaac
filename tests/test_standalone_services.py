"""Each service runs alone as its own process (`python -m services.<name>`), as in compose/k8s."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import numpy as np
import pytest

from tests.pipeline_helpers import png_bytes
from tests.servers import S3Endpoint
from tests.stack import ADMIN, follow_events, free_port, running_stack, s3_settings, submit

pytestmark = pytest.mark.servers
REPO = Path(__file__).resolve().parent.parent


def service_env(rabbitmq_url: str, bucket_settings: dict[str, str], health_port: int) -> dict:
    return {
        **os.environ,
        **bucket_settings,
        "RESTORA_BROKER_URL": rabbitmq_url,
        "RESTORA_HEALTH_PORT": str(health_port),
        "RESTORA_THREADS": "1",
    }


@pytest.fixture
def s3_env(s3_server: S3Endpoint) -> dict[str, str]:
    settings = s3_settings(s3_server)
    return {
        "RESTORA_S3_ENDPOINT": settings.s3_endpoint,
        "RESTORA_S3_ACCESS_KEY": settings.s3_access_key,
        "RESTORA_S3_SECRET_KEY": settings.s3_secret_key,
        "RESTORA_S3_BUCKET": settings.s3_bucket,
    }


@pytest.fixture
def standalone(rabbitmq_url: str, s3_env: dict[str, str]) -> Iterator[dict[str, int]]:
    ports = {"preprocess": free_port(), "inpaint": free_port()}
    processes = [
        subprocess.Popen(
            [sys.executable, "-m", f"services.{name}"],
            cwd=REPO,
            env=service_env(rabbitmq_url, s3_env, port),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        for name, port in ports.items()
    ]
    try:
        yield ports
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            # SIGTERM is a clean shutdown: exit code 0, not a crash.
            assert process.wait(timeout=20) == 0, process.stderr.read().decode()[-2000:]


async def wait_ready(session: aiohttp.ClientSession, port: int, timeout: float = 60) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        try:
            async with session.get(f"http://127.0.0.1:{port}/readyz") as response:
                if response.status == 200:
                    return await response.json()
        except aiohttp.ClientError:
            pass
        assert time.monotonic() < deadline, f"service on port {port} never became ready"
        await asyncio.sleep(0.3)


async def test_standalone_processes_serve_health_and_jobs(
    standalone: dict[str, int],
    tmp_path: Path,
    rabbitmq_url: str,
    s3_server: S3Endpoint,
    s3_env: dict[str, str],
) -> None:
    async with aiohttp.ClientSession(headers=ADMIN) as session:  # the operator reads any job
        for port in standalone.values():
            assert await wait_ready(session, port) == {"ready": True, "broker": True, "store": True}
            async with session.get(f"http://127.0.0.1:{port}/healthz") as response:
                assert response.status == 200
        async with running_stack(
            tmp_path,
            rabbitmq_url,
            s3_server,
            workers=False,
        ) as stack:
            # Same bucket as the standalone processes.
            stack.store.bucket = s3_env["RESTORA_S3_BUCKET"]  # type: ignore[attr-defined]
            image = np.full((40, 40, 3), 90, np.uint8)
            mask = np.zeros((40, 40), np.uint8)
            mask[10:20, 10:20] = 255
            status, body = await submit(
                session, stack.url, png_bytes(image), "inpaint", png_bytes(mask)
            )
            assert status == 202, body
            events = await follow_events(session, stack.url, body["id"])
            assert events[-1]["state"] == "done", events
