"""Batches: several of one owner's jobs as one, read with the batch token, zipped as one file.

The embedded stack, classic models, small images: each job takes well under a second.
"""

from __future__ import annotations

import io
import json
import zipfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import pytest
from PIL import Image

from services.gateway import batches
from tests.pipeline_helpers import png_bytes
from tests.stack import ADMIN, Stack, running_stack, submit, wait_for_state

SIZES = [(48, 32), (40, 40), (24, 56)]  # (width, height)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def photo(width: int, height: int, seed: int) -> bytes:
    return png_bytes(np.random.default_rng(seed).integers(0, 255, (height, width, 3),
                                                          dtype=np.uint8))


@pytest.fixture
async def stack(tmp_path: Path) -> AsyncIterator[Stack]:
    async with running_stack(tmp_path) as running:
        yield running


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as client:
        yield client


async def _jobs(session: aiohttp.ClientSession, url: str, n: int = 3) -> list[dict[str, Any]]:
    made = []
    for seed, (width, height) in enumerate(SIZES[:n]):
        status, doc = await submit(session, url, photo(width, height, seed), "denoise",
                                   model="classic", sigma="15")
        assert status == 202, doc
        made.append({"id": doc["id"], "token": doc["owner_token"]})
    return made


async def _post(session: aiohttp.ClientSession, url: str, body: Any,
                headers: dict[str, str] | None = None) -> tuple[int, dict[str, Any]]:
    async with session.post(f"{url}/api/v1/batches", json=body, headers=headers) as response:
        return response.status, await response.json()


async def test_a_batch_of_three_is_read_and_zipped(
    stack: Stack, session: aiohttp.ClientSession
) -> None:
    jobs = await _jobs(session, stack.url)
    names = ["holiday.png", "../../etc/pass wd.PNG", None]
    body = {"jobs": [{**job, "name": name} for job, name in zip(jobs, names, strict=True)]}
    status, made = await _post(session, stack.url, body)
    assert status == 201, made
    batch_id, token = made["id"], made["batch_token"]
    # Stored as an object, with digests only.
    stored = await stack.store.get(batches.batch_key(batch_id))
    assert token.encode() not in stored and all(j["token"].encode() not in stored for j in jobs)
    assert json.loads(stored)["jobs"] == [j["id"] for j in jobs]

    async with aiohttp.ClientSession(headers=ADMIN) as operator:
        for job in jobs:
            await wait_for_state(operator, stack.url, job["id"], {"done"}, timeout=120)
    async with session.get(f"{stack.url}/api/v1/batches/{batch_id}",
                           headers=bearer(token)) as response:
        assert response.status == 200
        doc = await response.json()
    assert doc["total"] == 3 and doc["counts"] == {"done": 3} and doc["finished"]
    assert [j["id"] for j in doc["jobs"]] == [j["id"] for j in jobs]
    assert all(j["progress"] == 1.0 or j["state"] == "done" for j in doc["jobs"])

    # The zip, with the batch token, then through the link (no header) the document gives.
    for headers, path in ((bearer(token), f"/api/v1/batches/{batch_id}/zip"),
                          (None, doc["zip_url"])):
        async with session.get(stack.url + path, headers=headers) as response:
            assert response.status == 200, await response.text()
            assert response.headers["Content-Type"] == "application/zip"
            assert "attachment" in response.headers["Content-Disposition"]
            raw = await response.read()
        with zipfile.ZipFile(io.BytesIO(raw)) as archive:
            infos = archive.infolist()
            assert [i.filename for i in infos] == [
                "001-holiday.png", "002-pass_wd.png", f"003-{jobs[2]['id']}.png", "manifest.json"]
            assert all(i.compress_type == zipfile.ZIP_STORED for i in infos)
            for info, size in zip(infos, SIZES, strict=False):
                with Image.open(io.BytesIO(archive.read(info))) as img:
                    assert img.size == size
            manifest = json.loads(archive.read("manifest.json"))
            assert [j["state"] for j in manifest["jobs"]] == ["done"] * 3

    # The job tokens do not open the batch; the operator's does.
    async with session.get(f"{stack.url}/api/v1/batches/{batch_id}",
                           headers=bearer(jobs[0]["token"])) as response:
        assert response.status == 404
    async with session.get(f"{stack.url}/api/v1/batches/{batch_id}", headers=ADMIN) as response:
        assert response.status == 200


async def test_unfinished_batch_zip_is_409_then_failed_jobs_are_in_the_manifest(
    tmp_path: Path, session: aiohttp.ClientSession
) -> None:
    async with running_stack(tmp_path, workers=False) as stack:
        jobs = await _jobs(session, stack.url, 2)
        status, made = await _post(session, stack.url, {"jobs": jobs})
        assert status == 201
        zip_path = f"{stack.url}/api/v1/batches/{made['id']}/zip"
        async with session.get(zip_path, headers=bearer(made["batch_token"])) as response:
            assert response.status == 409
            assert "2 of 2 jobs are not finished" in (await response.json())["error"]
        for job in jobs:  # cancelled: final, no result
            async with session.delete(f"{stack.url}/api/v1/jobs/{job['id']}",
                                      headers=bearer(job["token"])) as response:
                assert response.status == 200
        async with session.get(zip_path, headers=bearer(made["batch_token"])) as response:
            assert response.status == 200
            archive = zipfile.ZipFile(io.BytesIO(await response.read()))
        assert archive.namelist() == ["manifest.json"]
        manifest = json.loads(archive.read("manifest.json"))
        assert [j["state"] for j in manifest["jobs"]] == ["gone", "gone"]


async def test_foreign_jobs_are_refused_and_another_owners_batch_is_404(
    tmp_path: Path, session: aiohttp.ClientSession
) -> None:
    async with running_stack(tmp_path, workers=False) as stack:
        mine, theirs = await _jobs(session, stack.url, 2)
        # Another owner's job, by id alone, or with a wrong token: as absent as a missing one.
        for entry in ({"id": theirs["id"]}, {"id": theirs["id"], "token": mine["token"]},
                      {"id": "0" * 32, "token": mine["token"]}, {"id": "../x", "token": "t"}):
            status, doc = await _post(session, stack.url, {"jobs": [mine, entry]})
            assert (status, doc["error"]) == (404, "jobs[1]: no such job"), entry
        assert await stack.store.list("batches/") == []

        status, made = await _post(session, stack.url, {"jobs": [mine]})
        assert status == 201
        other_status, other = await _post(session, stack.url, {"jobs": [theirs]})
        assert other_status == 201
        for suffix in ("", "/zip"):
            path = f"{stack.url}/api/v1/batches/{made['id']}{suffix}"
            for headers in (None, bearer(other["batch_token"]), bearer(theirs["token"])):
                async with session.get(path, headers=headers) as response:
                    assert response.status == 404, (suffix, headers)
                    assert made["id"] not in await response.text()
            bad_link = f"{path}?access=9999999999.{'0' * 64}"
            async with session.get(bad_link) as response:
                assert response.status == 404


async def test_batch_size_and_body_are_limited(
    tmp_path: Path, session: aiohttp.ClientSession
) -> None:
    async with running_stack(tmp_path, workers=False) as stack:
        too_many = {"jobs": [{"id": f"{i:032x}", "token": "t"} for i in range(101)]}
        status, doc = await _post(session, stack.url, too_many)
        assert (status, doc["error"]) == (400, "a batch holds at most 100 jobs (got 101)")
        for body, message in (({}, '"jobs"'), ({"jobs": []}, '"jobs"'),
                              ({"jobs": [{"token": "t"}]}, 'jobs[0] needs an "id"'),
                              ({"jobs": [{"id": "a", "token": 5}]}, '"token" must be')):
            status, doc = await _post(session, stack.url, body)
            assert status == 400 and message in doc["error"], (body, doc)
        async with session.post(f"{stack.url}/api/v1/batches", data=b"not json") as response:
            assert response.status == 400
        async with session.post(f"{stack.url}/api/v1/batches",
                                data=b"[" + b" " * 70_000 + b"]") as response:
            assert response.status == 413


def test_names_are_cleaned() -> None:
    assert batches.clean_stem("C:\\photos\\Été 2019.jpeg") == "t_2019"
    assert batches.clean_stem("a/b/cat.png") == "cat"
    assert batches.clean_stem("..png") == ""
    assert batches.clean_stem(42) == ""
