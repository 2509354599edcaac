"""The performance dashboard in headless Chromium, against the embedded stack.

Records come from one real job plus synthetic ones written straight into the stack's
local store (several models, a failure, spread over the last hour), so every chart has
something to draw.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import io
import re
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from shared.platform.blobstore import make_blob_store
from shared.platform.config import CommonSettings, load_settings
from shared.platform.records import RecordStore
from tests.browser.conftest import Restora
from tests.stack import ADMIN_TOKEN
from tests.test_records import synthetic

pytestmark = pytest.mark.browser
playwright_api = pytest.importorskip("playwright.sync_api")
expect = playwright_api.expect

CHARTS = ("latency", "throughput", "queue", "failures", "models")
JOB_TIMEOUT_S = 60.0


def _write_synthetic_records(restora: Restora) -> None:
    settings = load_settings(CommonSettings, {"RESTORA_DATA_DIR": str(restora.data_dir)})
    writer = RecordStore(make_blob_store(settings))
    now = time.time()
    rows = [
        ("denoise", "mwcnn", "done", 1.2),
        ("denoise", "classic", "done", 0.4),
        ("denoise", "classic", "failed", 0.3),
        ("superres", "esrgan", "done", 5.0),
        ("superres", "classic", "done", 0.2),
        ("inpaint", "deepfill", "done", 2.5),
    ]
    records = [
        synthetic(0xDA5B0000 + i * 16 + k, task, model, outcome, now - 3000 + i * 400 + k * 60, s)
        for k in range(3)
        for i, (task, model, outcome, s) in enumerate(rows)
    ]

    async def write() -> None:
        for record in records:
            await writer.write(record)

    # Playwright's sync API keeps an event loop running in this thread: write from another.
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        pool.submit(asyncio.run, write()).result()


def _run_real_job(page: Any, restora: Restora) -> str:
    buf = io.BytesIO()
    noisy = np.random.default_rng(3).integers(0, 255, (48, 64), dtype=np.uint8)
    Image.fromarray(noisy).save(buf, format="PNG")
    response = page.request.post(
        "/api/v1/jobs",
        multipart={
            "image": {"name": "noisy.png", "mimeType": "image/png", "buffer": buf.getvalue()},
            "task": "denoise",
            "model": "classic",
            "sigma": "20",
        },
    )
    assert response.status == 202, response.text()
    job_id = response.json()["id"]
    deadline = time.monotonic() + JOB_TIMEOUT_S
    while restora.get_json(f"/api/v1/jobs/{job_id}")["state"] != "done":
        assert time.monotonic() < deadline, "the job did not finish"
        time.sleep(0.2)
    return str(job_id)


@pytest.fixture(scope="module")
def with_records(restora: Restora) -> Restora:
    _write_synthetic_records(restora)
    return restora


def _open_dashboard(page: Any) -> None:
    page.goto(f"/dashboard?token={ADMIN_TOKEN}")  # the link `make run` prints
    expect(page.locator("body[data-loaded=true]")).to_be_attached()


def test_the_dashboard_draws_every_chart(
    desktop_page: Any, with_records: Restora, artifact: Any
) -> None:
    job_id = _run_real_job(desktop_page, with_records)
    records = with_records.get_json("/api/v1/records?task=denoise&model=classic&limit=100")
    assert job_id in {r["job_id"] for r in records["records"]}
    _open_dashboard(desktop_page)
    for chart in CHARTS:
        figure = desktop_page.locator(f"#chart-{chart}")
        expect(figure.locator("svg .series").first).to_be_visible()
        assert int(figure.get_attribute("data-series") or 0) >= 1, chart
    legend = desktop_page.locator("#chart-latency .legend")
    for stage in ("upload", "preprocess", "inference", "encode", "end to end"):
        expect(legend).to_contain_text(stage)
    expect(desktop_page.locator("#chart-queue .legend")).to_contain_text("wait for a model service")
    expect(desktop_page.locator("#chart-models .legend")).to_contain_text("esrgan")
    tasks = desktop_page.locator("#tasks-table tbody tr")
    expect(tasks.filter(has_text="superres")).to_have_count(1)
    expect(desktop_page.locator("#kpi-failures")).to_contain_text("%")
    expect(desktop_page.locator("#csv-link")).to_have_attribute("href", re.compile("format=csv"))
    desktop_page.screenshot(path=artifact("dashboard-desktop"), full_page=True)


def test_the_task_filter_narrows_every_chart(desktop_page: Any, with_records: Restora) -> None:
    _open_dashboard(desktop_page)
    desktop_page.select_option("#task", "superres")
    rows = desktop_page.locator("#tasks-table tbody tr")
    expect(rows).to_have_count(1)
    expect(rows.first).to_contain_text("superres")
    expect(desktop_page.locator("#chart-models .legend")).not_to_contain_text("mwcnn")
    desktop_page.select_option("#percentile", "p50")
    expect(desktop_page.locator("#chart-latency h2")).to_contain_text("p50")


def test_the_dashboard_fits_a_phone(phone_page: Any, with_records: Restora, artifact: Any) -> None:
    _open_dashboard(phone_page)
    expect(phone_page.locator("#chart-latency svg .series").first).to_be_visible()
    overflow = phone_page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
    assert overflow <= 1, f"the page scrolls sideways by {overflow}px"
    phone_page.screenshot(path=artifact("dashboard-phone"), full_page=True)


def test_the_dashboard_is_for_operators_only(desktop_page: Any, with_records: Restora) -> None:
    page = desktop_page
    page.goto("/")  # the public page does not point users at it
    expect(page.locator("a[href^='/dashboard']")).to_have_count(0)
    response = page.goto("/dashboard")
    assert response is not None and response.status == 401
    expect(page.locator("body")).to_contain_text("for operators")
    _open_dashboard(page)
    # Its own link keeps the token; the CSV comes through the API with it, as a file.
    page.locator("header nav a", has_text="Dashboard").click()
    expect(page).to_have_url(re.compile(r"/dashboard\?token="))
    expect(page.locator("body[data-loaded=true]")).to_be_attached()
    with page.expect_download() as download:
        page.click("#csv-link")
    saved = download.value.path()
    assert saved is not None
    assert Path(saved).read_text().startswith("schema_version,job_id,")
