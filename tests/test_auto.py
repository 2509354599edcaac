"""`task=auto`: the pure decision, and end to end in the embedded stack."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import numpy as np
import pytest
from PIL import Image
from skimage import data

from services.gateway.validation import parse_options
from shared.ml import auto, registry
from tests.pipeline_helpers import decode_image, png_bytes
from tests.stack import ADMIN, download, follow_events, running_stack, submit


def test_a_low_quality_noisy_small_jpeg_gets_the_whole_chain() -> None:
    choice = auto.choose(35, 12.3, (300, 200))
    assert choice.chain == ("artifacts", "denoise", "superres")
    assert choice.reasons == ("JPEG quality 35 → artifacts", "σ≈12 → denoise",
                              "300×200 px → superres")


def test_a_clean_large_photo_needs_nothing() -> None:
    choice = auto.choose(92, 1.1, (4000, 3000))
    assert choice.chain == () and choice.reasons == (auto.NOTHING_TO_FIX,)
    assert auto.choose(None, None, (2000, 1500)).chain == ()  # a PNG too small to estimate


@pytest.mark.parametrize(
    ("quality", "sigma", "size", "chain"),
    [
        (auto.ARTIFACTS_MAX_QUALITY, 0.0, (2000, 1000), ("artifacts",)),
        (auto.ARTIFACTS_MAX_QUALITY + 1, 0.0, (2000, 1000), ()),
        (None, auto.DENOISE_MIN_SIGMA, (2000, 1000), ("denoise",)),
        (None, auto.DENOISE_MIN_SIGMA - 0.1, (2000, 1000), ()),
        (None, 0.0, (auto.SUPERRES_MAX_LONG_SIDE, 10), ("superres",)),
        (None, 0.0, (10, auto.SUPERRES_MAX_LONG_SIDE + 1), ()),
    ],
)
def test_each_threshold(
    quality: int | None, sigma: float, size: tuple[int, int], chain: tuple[str, ...]
) -> None:
    assert auto.choose(quality, sigma, size).chain == chain


def test_the_gateway_budgets_for_what_auto_may_choose() -> None:
    assert auto.possible_steps((300, 200)) == ("artifacts", "denoise", "superres")
    assert auto.possible_steps((3000, 2000)) == ("artifacts", "denoise")
    options = parse_options("auto", {"model": "classic"}, registry.SHIPPED_WEIGHTS_DIR)
    assert set(options.models.values()) == {"classic"}


def test_auto_upscales_with_the_faithful_network_unless_told_otherwise() -> None:
    assert auto.models_in_preference("superres", ["realesrgan", "esrgan", "classic"]) == [
        "esrgan", "realesrgan", "classic"]
    assert auto.models_in_preference("superres", ["realesrgan", "classic"]) == [
        "realesrgan", "classic"]  # not installed: the task's own default
    assert auto.models_in_preference("denoise", ["mwcnn", "classic"]) == ["mwcnn", "classic"]
    shipped = registry.SHIPPED_WEIGHTS_DIR
    if "esrgan" not in registry.models_for("superres", shipped):
        pytest.skip("the esrgan weights are not shipped")
    assert parse_options("auto", {}, shipped).models["superres"] == "esrgan"
    if "realesrgan" in registry.models_for("superres", shipped):  # the user's word wins
        told = parse_options("auto", {"model": "superres:realesrgan"}, shipped)
        assert told.models["superres"] == "realesrgan"
    # a chain or a single superres keeps the task's default
    chain = parse_options("denoise,superres", {}, shipped).models["superres"]
    assert chain == registry.models_for("superres", shipped)[0]


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(headers=ADMIN) as client:
        yield client


async def _run(session: aiohttp.ClientSession, url: str, image: bytes) -> tuple[dict, np.ndarray]:
    status, body = await submit(session, url, image, "auto", model="classic")
    assert status == 202, body
    events = await follow_events(session, url, body["id"])
    assert events[-1]["state"] == "done", events
    async with session.get(url + body["status_url"]) as response:
        doc = await response.json()
    return doc, decode_image(await download(session, url, doc["result_url"]))


async def test_auto_denoises_and_upscales_a_small_noisy_photo(
    tmp_path: Path, session: aiohttp.ClientSession
) -> None:
    clean = data.astronaut()[100:196, 100:228]
    noisy = np.clip(clean + np.random.default_rng(0).normal(0, 15, clean.shape), 0, 255)
    async with running_stack(tmp_path) as stack:
        doc, result = await _run(session, stack.url, png_bytes(noisy.astype(np.uint8)))
    assert doc["auto"]["chain"] == ["denoise", "superres"] == doc["steps"]
    assert doc["auto"]["reasons"][1] == "128×96 px → superres"
    assert doc["auto"]["reasons"][0].startswith("σ≈1") and "denoise" in doc["auto"]["reasons"][0]
    assert result.shape == (384, 512, 3)
    assert {"denoise", "superres"} <= set(doc["stages"]) and {"denoise", "superres"} <= set(
        doc["timings"])


async def test_auto_leaves_a_clean_large_photo_alone(
    tmp_path: Path, session: aiohttp.ClientSession
) -> None:
    large = Image.fromarray(data.astronaut()).resize((1024, 1024), Image.Resampling.LANCZOS)
    photo = np.array(large)
    async with running_stack(tmp_path) as stack:
        doc, result = await _run(session, stack.url, png_bytes(photo))
    assert doc["auto"] == {"chain": [], "reasons": [auto.NOTHING_TO_FIX]}
    assert doc["steps"] == [] and "running" not in doc["stages"]
    assert np.array_equal(result, photo)
