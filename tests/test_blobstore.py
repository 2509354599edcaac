"""Both object stores behave alike, and their download links work from a plain HTTP client."""

from __future__ import annotations

import secrets
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from shared.platform.blobstore import (
    BlobNotFound,
    BlobStore,
    LinkOptions,
    LocalDirBlobStore,
    S3BlobStore,
)
from tests.stack import s3_settings


@pytest.fixture(params=["local", pytest.param("s3", marks=pytest.mark.servers)])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[BlobStore]:
    if request.param == "s3":
        instance: BlobStore = S3BlobStore(s3_settings(request.getfixturevalue("s3_server")))
    else:
        instance = LocalDirBlobStore(tmp_path, b"secret")
    yield instance


async def test_put_get_list_delete(store: BlobStore) -> None:
    body = secrets.token_bytes(100_000)
    await store.put("jobs/a/upload/image", body)
    await store.put("jobs/a/events/1.json", b"{}")
    await store.put("jobs/b/upload/image", b"other")
    assert await store.get("jobs/a/upload/image") == body
    assert await store.exists("jobs/a/upload/image")
    assert await store.list("jobs/a/") == ["jobs/a/events/1.json", "jobs/a/upload/image"]
    await store.delete_prefix("jobs/a/")
    assert await store.list("jobs/a/") == []
    assert not await store.exists("jobs/a/upload/image")
    with pytest.raises(BlobNotFound):
        await store.get("jobs/a/upload/image")
    assert await store.get("jobs/b/upload/image") == b"other"


async def test_listing_with_times_tells_when_each_object_was_written(store: BlobStore) -> None:
    before = time.time()
    await store.put("jobs/a/job.json", b"{}")
    await store.put("jobs/a/upload/image", b"pixels")
    await store.put("jobs/b/job.json", b"{}")
    modified = await store.list_modified("jobs/a/")
    assert sorted(modified) == await store.list("jobs/a/")
    # S3 keeps whole seconds: each time is within a second of the write
    assert all(before - 1.5 <= at <= time.time() + 1.5 for at in modified.values()), modified
    assert await store.list_modified("jobs/none/") == {}


async def test_keys_cannot_escape(store: BlobStore) -> None:
    for bad in ("../etc/passwd", "/abs", "jobs/../../x"):
        with pytest.raises(ValueError):
            await store.put(bad, b"x")


async def test_presigned_link_downloads_from_public_endpoint_only_client(
    request: pytest.FixtureRequest,
) -> None:
    pytest.importorskip("minio")
    if "servers" not in request.keywords:
        request.applymarker(pytest.mark.servers)
    endpoint = request.getfixturevalue("s3_server")
    # The signing client knows only the public endpoint; the link must work as given.
    settings = s3_settings(endpoint, s3_public_endpoint=endpoint.endpoint)
    store = S3BlobStore(settings)
    await store.put("jobs/c/result/result.png", b"png-bytes", "image/png")
    link = store.link("jobs/c/result/result.png", LinkOptions(60, "restora-c.png"))
    with urllib.request.urlopen(link) as response:
        assert response.read() == b"png-bytes"
        assert 'attachment; filename="restora-c.png"' in response.headers["Content-Disposition"]


def test_local_links_expire_and_cannot_be_altered(tmp_path: Path) -> None:
    store = LocalDirBlobStore(tmp_path, b"secret")
    link = store.link("jobs/d/result/result.png", LinkOptions(60, "x.png"))
    path, query = link.split("?", 1)
    params = dict(p.split("=", 1) for p in query.split("&"))
    params = {k: urllib.request.unquote(v.replace("+", " ")) for k, v in params.items()}
    key = urllib.request.unquote(path.removeprefix("/api/v1/files/"))
    assert store.verify_link(key, params)
    assert not store.verify_link("jobs/e/result/result.png", params)  # another object
    assert not store.verify_link(key, {**params, "expires": str(int(time.time()) + 9999)})
    assert not store.verify_link(key, params, now=time.time() + 61)  # expired
