"""Reading the multipart upload: files streamed to spooled temp files under a byte cap."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from typing import IO

from aiohttp import BodyPartReader, MultipartReader, web
from aiohttp.http_exceptions import HttpProcessingError
from PIL import Image, UnidentifiedImageError

from services.gateway.validation import InvalidRequest
from shared.ml.imaging import oriented_size

FILE_FIELDS = ("image", "mask")
TEXT_FIELD_LIMIT = 1024
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


@dataclass
class UploadForm:
    files: dict[str, UploadedFile] = field(default_factory=dict)
    fields: dict[str, str] = field(default_factory=dict)

    def close(self) -> None:
        for f in self.files.values():
            f.data.close()


async def read_upload(request: web.Request, max_bytes: int) -> UploadForm:
    if not request.content_type.startswith("multipart/"):
        raise InvalidRequest(
            "send the image as multipart/form-data with a file field 'image'", status=415
        )
    if request.content_length is not None and request.content_length > max_bytes + (1 << 20):
        raise InvalidRequest(_too_large(max_bytes), status=413)
    form = UploadForm()
    try:
        reader: MultipartReader = await request.multipart()
        while (part := await reader.next()) is not None:
            if not isinstance(part, BodyPartReader) or not part.name:
                continue
            if part.name in FILE_FIELDS:
                form.files[part.name] = await _spool(part, max_bytes)
            else:
                form.fields[part.name] = await _text(part)
    except BaseException as exc:
        form.close()
        if isinstance(exc, HttpProcessingError | ValueError) and not isinstance(
            exc, InvalidRequest
        ):  # aiohttp's parser: no boundary, a bad part header, a truncated body, ...
            reason = getattr(exc, "message", "") or str(exc)
            raise InvalidRequest(f"the multipart/form-data body is malformed: {reason}") from exc
        raise
    return form


async def _spool(part: BodyPartReader, max_bytes: int) -> UploadedFile:
    # Closed by UploadForm.close(): it outlives this function.
    spool = tempfile.SpooledTemporaryFile(max_size=_IN_MEMORY)  # noqa: SIM115
    size = 0
    while chunk := await part.read_chunk(_CHUNK):
        size += len(chunk)
        if size > max_bytes:
            spool.close()
            raise InvalidRequest(_too_large(max_bytes), status=413)
        spool.write(chunk)
    spool.seek(0)
    content_type = part.headers.get("Content-Type", "application/octet-stream")
    return UploadedFile(spool, size, content_type)


async def _text(part: BodyPartReader) -> str:
    raw = await part.read(decode=True)
    if len(raw) > TEXT_FIELD_LIMIT:
        raise InvalidRequest(f"form field {part.name!r} is longer than {TEXT_FIELD_LIMIT} bytes")
    return raw.decode("utf-8", errors="replace").strip()


def _orientation(img: Image.Image) -> int:
    try:
        return int(img.getexif().get(_EXIF_ORIENTATION, 1) or 1)
    except (ValueError, TypeError, OSError):
        return 1


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
    job, so a corrupt body still gets in and fails there with a reason.
    """
    if upload.size == 0:
        raise InvalidRequest(f"the {what} is empty", status=400)
    try:
        with Image.open(upload.data) as img:
            fmt = img.format or ""
            orientation = _orientation(img)
            upload.dimensions = oriented_size(img.size, orientation)
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
