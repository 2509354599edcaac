"""Fixtures for the browser tests: the embedded stack in a subprocess, and headless Chromium.

Chromium is Debian's (`/usr/bin/chromium`, or RESTORA_TEST_CHROMIUM), driven by the
`playwright` Python package; `playwright install` is never needed. Without Chromium or
Playwright the tests skip, except under CI, where that is an error.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import pytest

from shared.platform.blobstore import LocalDirBlobStore, make_blob_store
from shared.platform.config import CommonSettings, load_settings
from shared.platform.jobs import JobKeys
from tests.servers import free_ports, in_ci
from tests.stack import ADMIN, ADMIN_TOKEN

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "test-artifacts"
CHROMIUM = Path(os.environ.get("RESTORA_TEST_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
]
STARTUP_TIMEOUT_S = 120.0
DESKTOP = {"viewport": {"width": 1280, "height": 900}}
PHONE = {
    "viewport": {"width": 375, "height": 812},
    "device_scale_factor": 2,
    "has_touch": True,
    "is_mobile": True,
}


def _unavailable(reason: str) -> NoReturn:
    if in_ci():
        pytest.fail(f"{reason} (CI is set: a missing browser is an error, not a skip)")
    pytest.skip(reason)


@dataclass(frozen=True)
class Restora:
    url: str
    data_dir: Path
    admin_token: str = ADMIN_TOKEN

    def get_json(self, path: str) -> dict[str, Any]:
        """As the operator, who may read every job and the records."""
        request = urllib.request.Request(self.url + path, headers=ADMIN)
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.load(response)

    def get_bytes(self, path: str) -> bytes:
        with urllib.request.urlopen(self.url + path, timeout=10) as response:
            return response.read()

    def stored_mask(self, job_id: str) -> bytes:
        """The mask exactly as the gateway stored it (the local store is plain files)."""
        settings = load_settings(CommonSettings, {"RESTORA_DATA_DIR": str(self.data_dir)})
        store = make_blob_store(settings)
        assert isinstance(store, LocalDirBlobStore)
        return store.local_path(JobKeys(job_id).upload_mask).read_bytes()


def _wait_ready(url: str, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the embedded stack exited ({proc.returncode}):\n{log.read_text()}")
        with (
            contextlib.suppress(OSError),
            urllib.request.urlopen(url + "/readyz", timeout=2) as response,
        ):
            if response.status == 200:
                return
        time.sleep(0.25)
    raise RuntimeError(f"the embedded stack was not ready in {STARTUP_TIMEOUT_S:.0f} s")


@pytest.fixture(scope="package")
def restora(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Restora]:
    """`python -m services.embedded` (in-process bus, local store) on a free port."""
    data_dir = tmp_path_factory.mktemp("restora-data")
    (port,) = free_ports(1)
    env = {k: v for k, v in os.environ.items() if not k.startswith("RESTORA_")}
    env |= {
        "RESTORA_DATA_DIR": str(data_dir),
        "RESTORA_HOST": "127.0.0.1",
        "RESTORA_PORT": str(port),
        "RESTORA_LOG_LEVEL": "warning",
        "RESTORA_ADMIN_TOKEN": ADMIN_TOKEN,
    }
    log = data_dir.parent / "embedded.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "services.embedded"],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_ready(url, proc, log)
        yield Restora(url, data_dir)
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="package")
def chromium() -> Iterator[Any]:
    """One headless Chromium for the package; each test opens its own context (fresh profile)."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _unavailable("the playwright package is not installed (pip install playwright)")
    if not CHROMIUM.is_file():
        _unavailable(f"{CHROMIUM} is missing (apt-get install chromium)")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True
        )
        try:
            yield browser
        finally:
            browser.close()


def _page(browser: Any, restora: Restora, options: dict[str, Any]) -> Iterator[Any]:
    # Reduced motion: the page then scrolls without animation, so boxes measured for a drag
    # do not move while the pointer is down.
    context = browser.new_context(
        base_url=restora.url, accept_downloads=True, reduced_motion="reduce", **options
    )
    context.set_default_timeout(30_000)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    try:
        yield page
    finally:
        context.close()
    assert not errors, f"JavaScript errors on the page: {errors}"


@pytest.fixture
def desktop_page(chromium: Any, restora: Restora) -> Iterator[Any]:
    yield from _page(chromium, restora, DESKTOP)


@pytest.fixture
def phone_page(chromium: Any, restora: Restora) -> Iterator[Any]:
    yield from _page(chromium, restora, PHONE)


@pytest.fixture
def artifact() -> Any:
    """artifact("name") → test-artifacts/name.png, for the final screenshot of a test."""
    ARTIFACTS.mkdir(exist_ok=True)
    return lambda name: str(ARTIFACTS / f"{name}.png")
