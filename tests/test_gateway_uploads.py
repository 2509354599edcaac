"""The gateway's look at an upload: its format and displayed size from the header alone."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from services.gateway.uploads import UploadedFile, sniff_image

ROTATED = 6  # EXIF orientation: shown turned 90°, so a 40×24 PNG displays as 24×40


def _png(width: int = 40, height: int = 24, exif_orientation: int | None = None) -> bytes:
    buf = io.BytesIO()
    pixels = np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8)
    options = {}
    if exif_orientation is not None:
        exif = Image.Exif()
        exif[0x0112] = exif_orientation
        options["exif"] = exif.tobytes()
    Image.fromarray(pixels).save(buf, format="PNG", **options)
    return buf.getvalue()


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _with_exif_after_the_pixels(png: bytes, orientation: int) -> bytes:
    """`png` with an eXIf chunk just before IEND, as some writers place it."""
    exif = Image.Exif()
    exif[0x0112] = orientation
    iend = png.rindex(b"IEND") - 4
    return png[:iend] + _chunk(b"eXIf", exif.tobytes()[6:]) + png[iend:]


def _upload(data: bytes) -> UploadedFile:
    return UploadedFile(io.BytesIO(data), len(data), "image/png")


@pytest.mark.parametrize(
    ("data", "displayed"),
    [
        (_png(), (40, 24)),
        (_png(exif_orientation=ROTATED), (24, 40)),  # eXIf before the pixels (Pillow writes it so)
        (_with_exif_after_the_pixels(_png(), ROTATED), (24, 40)),
        (_with_exif_after_the_pixels(_png(), 1), (40, 24)),
    ],
)
def test_a_png_is_sized_as_displayed_wherever_its_exif_is(
    data: bytes, displayed: tuple[int, int]
) -> None:
    upload = _upload(data)
    assert sniff_image(upload, "image") == "PNG"
    assert upload.dimensions == displayed
    assert upload.data.tell() == 0  # left at the start for the store


def test_a_png_cut_short_is_still_sniffed_and_left_to_preprocess() -> None:
    """Only the header is read here: a body cut short gets in and fails in preprocess."""
    data = _with_exif_after_the_pixels(_png(), ROTATED)
    upload = _upload(data[: len(data) // 2])
    assert sniff_image(upload, "image") == "PNG"
    assert upload.dimensions == (40, 24)  # the eXIf chunk was in the part that never came


def test_the_pixels_are_not_decoded_to_find_the_exif() -> None:
    """Pixel data that would not decode does not hide an eXIf chunk after it: the chunks
    are walked, the pixels never decoded."""
    png = _png()
    start = png.index(b"IDAT") + 4
    end = png.rindex(b"IEND") - 8  # the IDAT chunk's CRC
    garbage = png[:start] + bytes(end - start) + png[end:]
    upload = _upload(_with_exif_after_the_pixels(garbage, ROTATED))
    assert sniff_image(upload, "image") == "PNG"
    assert upload.dimensions == (24, 40)
