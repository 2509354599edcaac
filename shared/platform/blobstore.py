"""Object storage behind one interface: MinIO/S3 (minio client) or a local directory.

Objects are addressed by server-generated keys (`jobs/<id>/...`); user-provided names never
become keys. Downloads are links: presigned S3 URLs, or for the local store HMAC-signed,
expiring URLs that the gateway serves.

Every call is bounded: S3 calls have connect and read timeouts and a small retry budget, and
run on the store's own thread pool, so a hung or dead store answers `StoreUnavailable` in
seconds and never takes the threads the rest of the process needs.
"""

from __future__ import annotations

import asyncio
import base64
import builtins
import contextlib
import functools
import hashlib
import hmac
import io
import os
import shutil
import time
import urllib.parse
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from types import TracebackType
from typing import IO, Any, BinaryIO, Protocol, Self, TypeVar, cast

import certifi
import urllib3
from minio import Minio
from minio.commonconfig import ENABLED, Filter
from minio.error import S3Error, ServerError
from minio.lifecycleconfig import Expiration, LifecycleConfig, Rule
from urllib3.connectionpool import ConnectionPool
from urllib3.exceptions import MaxRetryError, ReadTimeoutError
from urllib3.response import BaseHTTPResponse

from shared.platform.config import CommonSettings
from shared.platform.logging import get_logger

log = get_logger(__name__)

LOCAL_FILES_ROUTE = "/api/v1/files/"


class BlobNotFound(KeyError):
    pass


class StoreUnavailable(RuntimeError):
    """The store refused the connection, failed, or stayed silent past its timeout."""


# A health check must answer quickly whatever the store does (/readyz answers within 2 s).
PING_TIMEOUT_S = 1.0
T = TypeVar("T")


@dataclass(frozen=True)
class LinkOptions:
    expires_s: int
    filename: str | None = None
    inline: bool = False

    def disposition(self) -> str | None:
        if not self.filename:
            return None
        kind = "inline" if self.inline else "attachment"
        return f'{kind}; filename="{self.filename}"'


class BlobStore(Protocol):
    async def put(self, key: str, data: bytes | IO[bytes], content_type: str = ...) -> None: ...
    async def get(self, key: str) -> bytes: ...
    async def exists(self, key: str) -> bool: ...
    async def list(self, prefix: str) -> list[str]: ...
    async def list_modified(self, prefix: str) -> dict[str, float]: ...
    async def delete_prefix(self, prefix: str) -> None: ...
    async def ping(self) -> bool: ...
    def link(self, key: str, options: LinkOptions) -> str: ...


def _check_key(key: str) -> str:
    if not key or key.startswith("/") or ".." in key.split("/") or "\\" in key:
        raise ValueError(f"invalid object key {key!r}")
    return key


def _read_all(data: bytes | IO[bytes]) -> bytes:
    return data if isinstance(data, bytes) else data.read()


class LocalDirBlobStore:
    """Objects as files under a directory; links are HMAC-signed gateway URLs."""

    def __init__(self, root: Path, secret: bytes, threads: int = 8) -> None:
        self.root = root
        self._secret = secret
        self.root.mkdir(parents=True, exist_ok=True)
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="restora-store")

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(
            self._pool, functools.partial(fn, *args)
        )

    def _path(self, key: str) -> Path:
        return self.root / _check_key(key)

    async def put(
        self, key: str, data: bytes | IO[bytes], content_type: str = "application/octet-stream"
    ) -> None:
        await self._run(self._put_sync, key, data)

    def _put_sync(self, key: str, data: bytes | IO[bytes]) -> None:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        # Write then rename: a reader never sees half an object, like on S3.
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{time.monotonic_ns()}.tmp")
        with open(tmp, "wb") as out:
            if isinstance(data, bytes):
                out.write(data)
            else:
                shutil.copyfileobj(data, out, 1 << 20)
        tmp.replace(path)

    async def get(self, key: str) -> bytes:
        try:
            return await self._run(self._path(key).read_bytes)
        except FileNotFoundError as exc:
            raise BlobNotFound(key) from exc

    async def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    async def list(self, prefix: str) -> list[str]:
        return await self._run(self._list_sync, prefix)

    def _list_sync(self, prefix: str) -> builtins.list[str]:  # `list` is the method here
        base = self.root / prefix.rsplit("/", 1)[0] if "/" in prefix else self.root
        if not base.is_dir():
            return []
        keys = (p.relative_to(self.root).as_posix() for p in base.rglob("*") if p.is_file())
        return sorted(
            k for k in keys if k.startswith(prefix) and not k.rsplit("/", 1)[-1].startswith(".")
        )

    async def list_modified(self, prefix: str) -> dict[str, float]:
        """`list`'s keys, each with when it was last written (Unix time)."""

        def modified() -> dict[str, float]:
            times = {}
            for key in self._list_sync(prefix):
                with contextlib.suppress(FileNotFoundError):  # deleted since it was listed
                    times[key] = self._path(key).stat().st_mtime
            return times

        return await self._run(modified)

    async def delete_prefix(self, prefix: str) -> None:
        for key in await self.list(prefix):
            self._path(key).unlink(missing_ok=True)

    async def ping(self) -> bool:
        return self.root.is_dir()

    def local_path(self, key: str) -> Path:
        return self._path(key)

    # -- signed links ---------------------------------------------------------------
    def link(self, key: str, options: LinkOptions) -> str:
        expires = int(time.time()) + options.expires_s
        params = {"expires": str(expires)}
        disposition = options.disposition()
        if disposition:
            params["disposition"] = disposition
        params["signature"] = self._sign(key, params)
        return f"{LOCAL_FILES_ROUTE}{urllib.parse.quote(key)}?{urllib.parse.urlencode(params)}"

    def verify_link(self, key: str, params: dict[str, str], now: float | None = None) -> bool:
        """True when `params` carry a valid, unexpired signature for `key`."""
        signature = params.get("signature", "")
        signed = {k: v for k, v in params.items() if k in ("expires", "disposition")}
        if not hmac.compare_digest(signature, self._sign(key, signed)):
            return False
        try:
            return int(signed["expires"]) >= (time.time() if now is None else now)
        except (KeyError, ValueError):
            return False

    def _sign(self, key: str, params: dict[str, str]) -> str:
        payload = key + "\n" + "\n".join(f"{k}={params[k]}" for k in sorted(params))
        digest = hmac.new(self._secret, payload.encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest).decode().rstrip("=")


class _NoRetryOnSilence(urllib3.Retry):
    """Retries a refused or reset connection and a 5xx answer, but not a read timeout: a
    server silent that long is hung, and asking again would only multiply the wait."""

    def increment(
        self,
        method: str | None = None,
        url: str | None = None,
        response: BaseHTTPResponse | None = None,
        error: Exception | None = None,
        _pool: ConnectionPool | None = None,
        _stacktrace: TracebackType | None = None,
    ) -> Self:
        if isinstance(error, ReadTimeoutError):
            raise MaxRetryError(_pool, url or "", error) from error  # type: ignore[arg-type]
        return super().increment(method, url, response, error, _pool, _stacktrace)


def _http_client(
    connect_s: float, read_s: float, retries: int, pool_size: int
) -> urllib3.PoolManager:
    """minio's own client waits 5 minutes per read and retries 5 times; this one is bounded."""
    return urllib3.PoolManager(
        timeout=urllib3.Timeout(connect=connect_s, read=read_s),
        maxsize=pool_size,
        cert_reqs="CERT_REQUIRED",
        ca_certs=os.environ.get("SSL_CERT_FILE") or certifi.where(),
        retries=_NoRetryOnSilence(
            total=retries,
            backoff_factor=0.2,
            status_forcelist=[500, 502, 503, 504],
        ),
    )


# What a call raises when the store itself (not the request) is the problem.
_UNAVAILABLE_ERRORS = (urllib3.exceptions.HTTPError, OSError, ServerError)


class S3BlobStore:
    """MinIO or any S3-compatible server through the `minio` client.

    A second client configured with the *public* endpoint and an explicit region signs
    download links: signing then needs no network call, and the Host header the browser
    sends matches the one the signature was made for.
    """

    def __init__(self, settings: CommonSettings) -> None:
        self.bucket = settings.s3_bucket
        threads = max(1, settings.store_threads)
        client = functools.partial(
            Minio,
            settings.s3_endpoint,
            access_key=settings.s3_access_key,
            secret_key=settings.s3_secret_key,
            secure=settings.s3_secure,
            region=settings.s3_region,
        )
        self._client = client(
            http_client=_http_client(
                settings.s3_connect_timeout_s,
                settings.s3_read_timeout_s,
                settings.s3_retries,
                threads,
            )
        )
        # Health checks: a short timeout, no retry, threads of their own.
        self._probe = client(http_client=_http_client(PING_TIMEOUT_S, PING_TIMEOUT_S, 0, 2))
        public = settings.s3_public_endpoint or settings.s3_endpoint
        self._signer = Minio(
            public,
            access_key=settings.s3_access_key,
            secret_key=settings.s3_secret_key,
            secure=settings.s3_public_secure if settings.s3_public_endpoint else settings.s3_secure,
            region=settings.s3_region,
        )
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="restora-s3")
        self._probe_pool = ThreadPoolExecutor(2, thread_name_prefix="restora-s3-probe")
        self._bucket_ready = False
        self._retention_days = max(1, -(-settings.retention_s // 86400))

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        """`fn` on the store's threads; the store's own failures become StoreUnavailable."""
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._pool, functools.partial(fn, *args))
        except _UNAVAILABLE_ERRORS as exc:
            raise StoreUnavailable(f"the object store is unavailable: {exc}") from exc

    async def ensure_bucket(self) -> None:
        if self._bucket_ready:
            return

        def create() -> None:
            if not self._client.bucket_exists(self.bucket):
                try:
                    self._client.make_bucket(self.bucket)
                except S3Error as exc:  # another replica made it first
                    if exc.code not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                        raise

        await self._run(create)
        await self._run(self._set_retention)
        self._bucket_ready = True

    def _set_retention(self) -> None:
        """Expire every job object after the retention period (S3 counts whole days)."""
        rule = Rule(
            ENABLED,
            rule_filter=Filter(prefix="jobs/"),
            rule_id="restora-retention",
            expiration=Expiration(days=self._retention_days),
        )
        try:
            self._client.set_bucket_lifecycle(self.bucket, LifecycleConfig([rule]))
        except S3Error as exc:
            # Not every S3 server implements lifecycle rules; the gateway's sweeper still
            # deletes expired jobs, so this is a warning, not a failure.
            log.warning("bucket_lifecycle_unsupported", bucket=self.bucket, error=str(exc))

    async def put(
        self, key: str, data: bytes | IO[bytes], content_type: str = "application/octet-stream"
    ) -> None:
        payload = _read_all(data) if isinstance(data, bytes) else data
        await self.ensure_bucket()

        def upload() -> None:
            if isinstance(payload, bytes):
                self._client.put_object(
                    self.bucket, _check_key(key), io.BytesIO(payload), len(payload), content_type
                )
            else:
                self._client.put_object(
                    self.bucket, _check_key(key), cast(BinaryIO, payload), -1, content_type,
                    part_size=16 << 20,
                )

        await self._run(upload)

    async def get(self, key: str) -> bytes:
        def download() -> bytes:
            try:
                response = self._client.get_object(self.bucket, _check_key(key))
            except S3Error as exc:
                if exc.code in ("NoSuchKey", "NoSuchBucket"):
                    raise BlobNotFound(key) from exc
                raise
            try:
                return response.read()
            finally:
                response.close()
                response.release_conn()

        return await self._run(download)

    async def exists(self, key: str) -> bool:
        def stat() -> bool:
            try:
                self._client.stat_object(self.bucket, _check_key(key))
                return True
            except S3Error as exc:
                if exc.code in ("NoSuchKey", "NoSuchBucket", "NoSuchObject"):
                    return False
                raise

        return await self._run(stat)

    async def list(self, prefix: str) -> list[str]:
        await self.ensure_bucket()

        def listing() -> list[str]:
            objects = self._client.list_objects(self.bucket, prefix=prefix, recursive=True)
            return sorted(o.object_name for o in objects if o.object_name)

        return await self._run(listing)

    async def list_modified(self, prefix: str) -> dict[str, float]:
        """`list`'s keys, each with when it was last written (Unix time)."""
        await self.ensure_bucket()

        def listing() -> dict[str, float]:
            objects = self._client.list_objects(self.bucket, prefix=prefix, recursive=True)
            return {
                o.object_name: o.last_modified.timestamp() if o.last_modified else 0.0
                for o in objects
                if o.object_name
            }

        return await self._run(listing)

    async def delete_prefix(self, prefix: str) -> None:
        keys = await self.list(prefix)

        def delete() -> None:
            for key in keys:
                self._client.remove_object(self.bucket, key)

        await self._run(delete)

    async def ping(self) -> bool:
        """Whether the store answers, in about PING_TIMEOUT_S at most whatever it does."""
        loop = asyncio.get_running_loop()
        try:
            probe = loop.run_in_executor(self._probe_pool, self._probe.bucket_exists, self.bucket)
            await asyncio.wait_for(probe, PING_TIMEOUT_S * 1.5)
            return True
        except Exception:
            return False

    def link(self, key: str, options: LinkOptions) -> str:
        headers: dict[str, str | list[str] | tuple[str]] = {}
        disposition = options.disposition()
        if disposition:
            headers["response-content-disposition"] = disposition
        return self._signer.presigned_get_object(
            self.bucket,
            _check_key(key),
            expires=timedelta(seconds=options.expires_s),
            response_headers=headers or None,
        )


def make_blob_store(settings: CommonSettings) -> BlobStore:
    if settings.embedded_store:
        secret = settings.link_secret.encode() or os.urandom(32)
        return LocalDirBlobStore(settings.data_dir / "objects", secret, settings.store_threads)
    return S3BlobStore(settings)
