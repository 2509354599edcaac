"""End to end through the gateway: upload, follow events, download, check the output.

Runs twice: on the embedded parts (in-process bus, local store) and on the real servers
(RabbitMQ + S3), which are the same code paths behind the same interfaces.
"""

from __future__ import annotations

import asyncio
import io
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import numpy as np
import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from PIL import Image
from skimage import data

from shared.ml.registry import SHIPPED_WEIGHTS_DIR, models_for
from shared.platform.jobs import JobKeys
from shared.platform.telemetry import setup_tracing
from tests.pipeline_helpers import decode_image, jpeg_bytes, png_bytes
from tests.stack import ADMIN, Stack, download, follow_events, running_stack, submit, wait_for_state


@pytest.fixture(scope="module")
def spans() -> InMemorySpanExporter:
    exporter = InMemorySpanExporter()
    setup_tracing("restora-tests", exporter)
    return exporter


@pytest.fixture(params=["embedded", pytest.param("servers", marks=pytest.mark.servers)])
async def stack(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Stack]:
    if request.param == "servers":
        rabbitmq_url = request.getfixturevalue("rabbitmq_url")
        s3 = request.getfixturevalue("s3_server")
        async with running_stack(tmp_path, rabbitmq_url, s3) as running:
            yield running
    else:
        async with running_stack(tmp_path) as running:
            yield running


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(headers=ADMIN) as client:
        yield client


async def run_job(
    session: aiohttp.ClientSession, stack: Stack, image: bytes, task: str, **fields: object
) -> tuple[dict, np.ndarray]:
    mask = fields.pop("mask", None)
    status, body = await submit(
        session, stack.url, image, task, mask, **{k: str(v) for k, v in fields.items()}
    )
    assert status == 202, body
    assert set(body) == {"id", "state", "status_url", "events_url", "owner_token"}
    assert body["state"] == "queued"
    events = await follow_events(session, stack.url, body["id"])
    assert events[-1]["state"] == "done", events
    owner = {"Authorization": f"Bearer {body['owner_token']}"}  # as a client reads its job
    async with session.get(stack.url + body["status_url"], headers=owner) as response:
        doc = await response.json()
    assert doc["state"] == "done" and doc["error"] is None
    assert {"queued", "running", "done"} <= set(doc["stages"])
    result = decode_image(await download(session, stack.url, doc["result_url"]))
    return doc, result


async def test_denoise_lowers_the_error(stack: Stack, session: aiohttp.ClientSession) -> None:
    clean = data.camera()[128:256, 192:352]
    rng = np.random.default_rng(0)
    noisy = np.clip(clean + rng.normal(0, 25, clean.shape), 0, 255).astype(np.uint8)
    doc, result = await run_job(session, stack, png_bytes(noisy), "denoise", sigma=25)
    assert result.shape == clean.shape
    mse = lambda a: float(np.mean((a.astype(float) - clean) ** 2))  # noqa: E731
    assert mse(result) < 0.6 * mse(noisy)
    assert doc["task"] == "denoise" and doc["output"]["width"] == clean.shape[1]
    # A plain PNG is its own model input: the gateway sent it straight to the denoiser, which
    # read the upload; the record still tells what came in.
    assert "preprocessing" not in doc["stages"]
    assert not await stack.store.exists(JobKeys(doc["id"]).input)
    assert doc["input"] == {"width": 160, "height": 128, "format": "PNG", "resized": False,
                            "jpeg_quality": None}


async def test_artifacts_reads_quality_from_the_file(
    stack: Stack, session: aiohttp.ClientSession
) -> None:
    clean = data.astronaut()[:96, :128]
    buf = io.BytesIO()
    Image.fromarray(clean).save(buf, format="JPEG", quality=20)
    doc, result = await run_job(session, stack, buf.getvalue(), "artifacts")
    assert result.shape == clean.shape
    assert doc["input"]["format"] == "JPEG" and doc["input"]["jpeg_quality"] == 20
    assert "preprocessing" in doc["stages"]  # a JPEG is decoded by preprocess
    assert await stack.store.exists(JobKeys(doc["id"]).input)  # decoded once, stored as PNG


async def test_superres_is_four_times_larger(stack: Stack, session: aiohttp.ClientSession) -> None:
    small = data.astronaut()[::8, ::8][:40, :48]
    _, result = await run_job(session, stack, png_bytes(small), "superres")
    assert result.shape == (160, 192, 3)


# Every inpainting model with shipped weights (DIP is slow: its own tests cover it).
INPAINT_MODELS = [m for m in models_for("inpaint", SHIPPED_WEIGHTS_DIR) if m != "dip"]


@pytest.mark.parametrize("model", INPAINT_MODELS)
async def test_inpaint_leaves_pixels_outside_the_mask(
    stack: Stack, session: aiohttp.ClientSession, model: str
) -> None:
    image = data.astronaut()[100:196, 100:228].copy()
    mask = np.zeros(image.shape[:2], np.uint8)
    mask[30:50, 40:80] = 255
    doc, result = await run_job(session, stack, png_bytes(image), "inpaint",
                                mask=png_bytes(mask), model=model)
    assert doc["model"] == model
    outside = mask == 0
    assert np.array_equal(result[outside], image[outside])
    assert not np.array_equal(result[~outside], image[~outside])


@pytest.mark.parametrize(
    ("content_type", "body"),
    [
        ("multipart/form-data", b"no boundary in the content type"),
        ("multipart/form-data; boundary=xx", b"--xx\r\nContent-Disposition: form-data; na\x00me"
                                              b"\r\n\r\n"),
        ("multipart/form-data; boundary=xx", b"--xx\r\nno-colon-header\r\n\r\ndata\r\n--xx--"),
    ],
)
async def test_a_malformed_multipart_body_is_a_400_with_a_reason(
    stack: Stack, session: aiohttp.ClientSession, content_type: str, body: bytes
) -> None:
    headers = {"Content-Type": content_type}
    async with session.post(stack.url + "/api/v1/jobs", data=body, headers=headers) as response:
        assert response.status == 400
        assert "malformed" in (await response.json())["error"]


async def test_non_image_upload_is_a_415_with_a_reason(
    stack: Stack, session: aiohttp.ClientSession
) -> None:
    status, body = await submit(session, stack.url, b"%PDF-1.4 not an image", "denoise")
    assert status == 415
    assert "not an image" in body["error"]


async def test_bad_options_are_400_with_a_reason(
    stack: Stack, session: aiohttp.ClientSession
) -> None:
    image = png_bytes(np.zeros((16, 16), np.uint8))
    status, body = await submit(session, stack.url, image, "denoise", sigma="500")
    assert status == 400 and "sigma" in body["error"] and "range" in body["error"]
    status, body = await submit(session, stack.url, image, "sharpen")
    assert status == 400 and "unknown task" in body["error"]
    status, body = await submit(session, stack.url, image, "inpaint")
    assert status == 400 and "mask" in body["error"]
    wrong_mask = png_bytes(np.zeros((16, 20), np.uint8))
    status, body = await submit(session, stack.url, image, "inpaint", wrong_mask)
    assert status == 400 and "the mask is 20x16 but the image is 16x16" in body["error"]


async def test_corrupt_image_fails_with_a_reason_and_workers_live_on(
    stack: Stack, session: aiohttp.ClientSession
) -> None:
    good = png_bytes(data.camera()[:64, :64])
    truncated = good[: len(good) // 2]  # a valid header: the gateway lets it in
    status, body = await submit(session, stack.url, truncated, "denoise")
    assert status == 202
    doc = await wait_for_state(session, stack.url, body["id"], {"done", "failed"})
    assert doc["state"] == "failed"
    reason = (doc["error"] or "").lower()
    assert "truncated" in reason or "corrupt" in reason, reason
    assert "attempt" not in reason  # a user error is not retried
    # The same workers still serve the next job.
    doc, _ = await run_job(session, stack, good, "denoise", sigma=10)
    assert doc["state"] == "done"


async def test_an_image_too_small_for_auto_sigma_fails_at_once_with_the_reason(
    stack: Stack, session: aiohttp.ClientSession
) -> None:
    status, body = await submit(session, stack.url, png_bytes(np.zeros((4, 4), np.uint8)),
                                "denoise", sigma="auto")
    assert status == 202
    doc = await wait_for_state(session, stack.url, body["id"], {"done", "failed"})
    assert doc["state"] == "failed"
    assert "too small to estimate the noise level" in doc["error"]
    assert "attempt" not in doc["error"]  # a user error is not retried


async def test_one_job_is_one_trace(
    stack: Stack, session: aiohttp.ClientSession, spans: InMemorySpanExporter
) -> None:
    spans.clear()
    jpeg = jpeg_bytes(data.camera()[:64, :64])
    status, body = await submit(session, stack.url, jpeg, "denoise", sigma="10")
    assert status == 202
    await follow_events(session, stack.url, body["id"])
    expected = {"gateway submit", "restora.preprocess process", "restora.denoise process"}
    expected.add("denoise inference")
    names = await span_names_of_job_trace(spans, body["id"], expected)
    assert expected <= names

    # A plain PNG goes from the gateway straight to the denoiser, in one trace all the same.
    status, body = await submit(session, stack.url, png_bytes(data.camera()[:64, :64]),
                                "denoise", sigma="10")
    assert status == 202
    await follow_events(session, stack.url, body["id"])
    expected = {"gateway submit", "restora.denoise process", "denoise inference"}
    names = await span_names_of_job_trace(spans, body["id"], expected)
    assert expected <= names and "restora.preprocess process" not in names


async def span_names_of_job_trace(
    spans: InMemorySpanExporter, job_id: str, expected: set[str], timeout_s: float = 10.0
) -> set[str]:
    """Names of the finished spans in the job's trace, once `expected` are all in (or timeout).

    The model service publishes `done` inside its consumer span and closes the span only after
    the broker has taken the ack, so a client that saw `done` can be a moment ahead of it.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while True:
        finished = spans.get_finished_spans()
        submit_span = next(
            s
            for s in finished
            if s.name == "gateway submit" and s.attributes.get("restora.job_id") == job_id
        )
        trace_id = submit_span.context.trace_id
        names = {s.name for s in finished if s.context.trace_id == trace_id}
        if expected <= names or loop.time() > deadline:
            return names
        await asyncio.sleep(0.05)


async def test_readyz_and_openapi(stack: Stack, session: aiohttp.ClientSession) -> None:
    async with session.get(stack.url + "/readyz") as response:
        assert response.status == 200
        assert (await response.json()) == {"ready": True, "broker": True, "store": True}
    async with session.get(stack.url + "/api/v1/openapi.json") as response:
        spec = await response.json()
    form = spec["paths"]["/api/v1/jobs"]["post"]["requestBody"]["content"]["multipart/form-data"]
    assert form["schema"]["properties"]["sigma"]["x-range"] == [0.0, 75.0]
    job_id = spec["paths"]["/api/v1/jobs/{id}"]["parameters"][0]
    assert job_id["name"] == "id" and job_id["in"] == "path" and job_id["required"]
    assert {"/api/v1/records", "/api/v1/records/summary", "/metrics"} <= set(spec["paths"])


async def test_dip_jobs_run_on_their_own_queue(
    stack: Stack, session: aiohttp.ClientSession
) -> None:
    image = data.astronaut()[100:164, 100:164].copy()
    mask = np.zeros(image.shape[:2], np.uint8)
    mask[20:36, 20:40] = 255
    doc, result = await run_job(
        session,
        stack,
        png_bytes(image),
        "inpaint",
        mask=png_bytes(mask),
        model="dip",
        iterations=10,
    )
    assert doc["model"] == "dip"
    assert np.array_equal(result[mask == 0], image[mask == 0])
