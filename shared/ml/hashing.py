"""File digests (weights identity in job records, precision cache keys)."""

from __future__ import annotations

import functools
import hashlib
from pathlib import Path


def file_sha256(path: Path | str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


@functools.cache
def _cached(path: str, _mtime: float) -> str:
    return file_sha256(path)


def cached_file_sha256(path: Path) -> str:
    """sha256 of `path`, computed once per file version (mtime)."""
    return _cached(str(path), path.stat().st_mtime)
