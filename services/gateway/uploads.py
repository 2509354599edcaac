"""Reading the multipart upload: files streamed to spooled temp files under a byte cap, text
fields streamed under theirs, the whole body under a pace (a stalled or trickling client is
answered 408 instead of holding a connection for ever)."""

from __future__ import annotations

import asyncio
import io
import struct
import tempfile
import time
from collections.abc import Awaitable
from dataclasses import dataclass, field
from typing import IO, TypeVar

from aiohttp import BodyPartReader, MultipartReader, web
from aiohttp.http_exceptions import HttpProcessingError
from PIL import Image, UnidentifiedImageError

from services.gateway.validation import InvalidRequest
from shared.ml.imaging import decodes_as_stored, oriented_size

FILE_FIELDS = ("image", "mask")
TEXT_FIELD_LIMIT = 1024
# The form has ten options: more text fields than this is not a form from Restora's page or API.
MAX_TEXT_FIELDS = 32
_CHUNK = 1 << 16
_EXIF_ORIENTATION = 0x0112
_IN_MEMORY = 8 << 20  # uploads above this spill to disk while being read


@dataclass
class UploadedFile:
    data: IO[bytes]
    size: int
    content_type: str
    format: str = ""
    # (width, height) as displayed, i.e. after EXIF orientation; None when unknown.
    dimensions: tuple[int, int] | None = None
    # The header says the file is a model's input as it is (`imaging.decodes_as_stored`),
    # upright and with no colour profile to carry to the result: preprocess has nothing to do.
    needs_no_normalising: bool = False


@dataclass
class UploadForm:
    files: dict[str, UploadedFile] = field(default_factory=dict)
    fields: dict[str, str] = field(default_factory=dict)

    def close(self) -> None:
        for f in self.files.values():
            f.data.close()


T = TypeVar("T")


@dataclass
class BodyPace:
    """How slowly a client may send a body: no pause longer than `stall_s`, and after the first
    `stall_s` at least `min_rate` bytes/s on average. None or 0 turns either off."""

    stall_s: float | None = None
    min_rate: int = 0
    started: float = field(default_factory=time.monotonic)
    received: int = 0

    async def wait(self, read: Awaitable[T]) -> T:
        """`read`, or a 408 when the client is too slow to deliver it."""
        if not self.stall_s:
            return await read
        timeout = self.stall_s
        if self.min_rate:
            due = self.started + self.stall_s + self.received / self.min_rate
            timeout = min(timeout, due - time.monotonic())
        try:
            async with asyncio.timeout(max(timeout, 0.0)):
                return await read
        except TimeoutError:
            raise InvalidRequest(self._too_slow(), status=408) from None

    def count(self, data: bytes) -> bytes:
        self.received += len(data)
        return data

    def _too_slow(self) -> str:
        rate = f" or slower than {self.min_rate / 1024:g} KiB/s" if self.min_rate else ""
        return f"the upload stalled for {self.stall_s:g} s{rate}: send it again"


async def read_upload(
    request: web.Request, max_bytes: int, pace: BodyPace | None = None
) -> UploadForm:
    if not request.content_type.startswith("multipart/"):
        raise InvalidRequest(
            "send the image as multipart/form-data with a file field 'image'", status=415
        )
    if request.content_length is not None and request.content_length > max_bytes + (1 << 20):
        raise InvalidRequest(_too_large(max_bytes), status=413)
    pace = pace or BodyPace()
    form = UploadForm()
    try:
        reader: MultipartReader = await request.multipart()
        while (part := await pace.wait(reader.next())) is not None:
            if not isinstance(part, BodyPartReader) or not part.name:
                continue
            if part.name in form.files or part.name in form.fields:
                raise InvalidRequest(f"the form field {part.name!r} is sent twice")
            if part.name in FILE_FIELDS:
                form.files[part.name] = await _spool(part, max_bytes, pace)
            elif len(form.fields) >= MAX_TEXT_FIELDS:
                raise InvalidRequest(f"the form has more than {MAX_TEXT_FIELDS} fields", 413)
            else:
                form.fields[part.name] = await _text(part, pace)
    except BaseException as exc:
        form.close()
        if isinstance(exc, HttpProcessingError | ValueError) and not isinstance(
            exc, InvalidRequest
        ):  # aiohttp's parser: no boundary, a bad part header, a truncated body, ...
            reason = getattr(exc, "message", "") or str(exc)
            raise InvalidRequest(f"the multipart/form-data body is malformed: {reason}") from exc
        raise
    return form


async def _spool(part: BodyPartReader, max_bytes: int, pace: BodyPace) -> UploadedFile:
    # Closed by UploadForm.close(): it outlives this function.
    spool = tempfile.SpooledTemporaryFile(max_size=_IN_MEMORY)  # noqa: SIM115
    size = 0
    try:
        while chunk := pace.count(await pace.wait(part.read_chunk(_CHUNK))):
            size += len(chunk)
            if size > max_bytes:
                raise InvalidRequest(_too_large(max_bytes), status=413)
            spool.write(chunk)
    except BaseException:
        spool.close()
        raise
    spool.seek(0)
    content_type = part.headers.get("Content-Type", "application/octet-stream")
    return UploadedFile(spool, size, content_type)


async def _text(part: BodyPartReader, pace: BodyPace) -> str:
    """A text field, refused as soon as it passes the limit: never more than the limit plus
    one read is held (a read is at most the limit too)."""
    raw = bytearray()
    while chunk := pace.count(await pace.wait(part.read_chunk(TEXT_FIELD_LIMIT + 1))):
        raw += chunk
        if len(raw) > TEXT_FIELD_LIMIT:
            raise InvalidRequest(_field_too_long(part.name), status=413)
    decoded = bytearray()  # as sent, or after its Content-(Transfer-)Encoding
    try:
        async for piece in part.decode_iter(bytes(raw)):
            decoded += piece
            if len(decoded) > TEXT_FIELD_LIMIT:
                raise InvalidRequest(_field_too_long(part.name), status=413)
    except RuntimeError as exc:  # aiohttp: an encoding it does not know
        raise InvalidRequest(f"the form field {part.name!r} cannot be read: {exc}") from None
    return decoded.decode("utf-8", errors="replace").strip()


def _field_too_long(name: str | None) -> str:
    return f"the form field {name!r} is longer than {TEXT_FIELD_LIMIT} bytes"


def _orientation(img: Image.Image, data: IO[bytes]) -> int:
    try:
        if img.format == "PNG" and "exif" not in img.info:
            exif = Image.Exif()
            exif.load(_png_chunk(data, b"eXIf") or b"")
        else:
            exif = img.getexif()
        return int(exif.get(_EXIF_ORIENTATION, 1) or 1)
    except (ValueError, TypeError, OSError, struct.error):
        return 1


def _png_chunk(data: IO[bytes], wanted: bytes) -> bytes | None:
    """The first `wanted` chunk of a PNG, found by walking the chunk headers: no pixel is
    decoded. (Pillow's `getexif` decodes the whole image to look for an eXIf chunk after the
    pixels, 3.5 ms for a 512² photo on the gateway's event loop.)"""
    data.seek(8)  # the signature
    while header := data.read(8):
        if len(header) < 8:
            return None
        length, kind = struct.unpack(">I4s", header)
        if kind == wanted:
            return data.read(length)
        if kind == b"IEND":
            return None
        data.seek(length + 4, io.SEEK_CUR)  # the chunk's data and CRC
    return None


def check_mask_matches(image: UploadedFile, mask: UploadedFile) -> None:
    """A 400 when the mask's displayed size is not the image's (both EXIF-oriented)."""
    if image.dimensions and mask.dimensions and image.dimensions != mask.dimensions:
        (iw, ih), (mw, mh) = image.dimensions, mask.dimensions
        raise InvalidRequest(
            f"the mask is {mw}x{mh} but the image is {iw}x{ih}: paint the mask at the image's size"
        )


def _too_large(max_bytes: int) -> str:
    return f"the upload is larger than the limit of {max_bytes / (1 << 20):.0f} MiB"


def sniff_image(upload: UploadedFile, what: str) -> str:
    """The image format from the file's header, or a 415 saying it is not an image.

    Only the header is parsed here: a full decode (and the pixel limits) is preprocess's
    job, or the model service's for a PNG that goes straight to it, so a corrupt body still
    gets in and fails there with a reason.
    """
    if upload.size == 0:
        raise InvalidRequest(f"the {what} is empty", status=400)
    try:
        with Image.open(upload.data) as img:
            fmt = img.format or ""
            orientation = _orientation(img, upload.data)
            upload.dimensions = oriented_size(img.size, orientation)
            upload.needs_no_normalising = (
                decodes_as_stored(fmt, img.mode, "transparency" in img.info)
                and orientation == 1
                and "icc_profile" not in img.info
            )
    except Image.DecompressionBombError:
        fmt = "oversized"  # preprocess rejects it with the pixel limit it exceeds
    except (UnidentifiedImageError, OSError, ValueError):
        raise InvalidRequest(
            f"the {what} is not an image Restora can read (PNG, JPEG, WebP, TIFF, BMP, GIF)",
            status=415,
        ) from None
    finally:
        upload.data.seek(0)
    upload.format = fmt
    return fmt
