"""The fast PNG writer: every colour type and size decodes to the same pixels, in any decoder."""

from __future__ import annotations

import io
import zlib

import numpy as np
import pytest
from PIL import Image, ImageCms

from shared.ml import png_writer
from shared.ml.png_writer import encode_png

RNG = np.random.default_rng(7)


@pytest.fixture(autouse=True, params=["installed", "zlib"])
def deflater(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Every test with the deflate the service runs (ISA-L where installed) and with zlib's,
    the fallback where it is not."""
    if request.param == "zlib":
        monkeypatch.setattr(png_writer, "_deflater", zlib)
    return png_writer._deflater.__name__


def _decoded(data: bytes) -> tuple[np.ndarray, Image.Image]:
    img = Image.open(io.BytesIO(data))
    img.load()  # checks every chunk's CRC and the zlib stream (adler32 included)
    return np.asarray(img), img


@pytest.mark.parametrize(("shape", "mode"), [((5, 7), "L"), ((5, 7, 2), "LA"),
                                             ((5, 7, 3), "RGB"), ((5, 7, 4), "RGBA")])
def test_each_colour_type_round_trips(shape: tuple[int, ...], mode: str) -> None:
    pixels = RNG.integers(0, 256, shape, dtype=np.uint8)
    decoded, img = _decoded(encode_png(pixels))
    assert img.mode == mode
    assert np.array_equal(decoded, pixels)


@pytest.mark.parametrize(
    "shape", [(1, 1, 3), (1, 4000, 3), (4000, 1), (700, 900, 3), (1500, 1200, 4)]
)
def test_sizes_whole_or_deflated_in_pieces_round_trip(shape: tuple[int, ...]) -> None:
    # A smooth ramp plus noise, as photos are: the pieces must join into one valid stream.
    ramp = np.add.outer(np.arange(shape[0]), np.arange(shape[1])) % 256
    pixels = (ramp.reshape(shape[:2] + (1,) * (len(shape) - 2)) + RNG.integers(0, 9, shape)) % 256
    pixels = pixels.astype(np.uint8)
    data = encode_png(pixels)
    decoded, _ = _decoded(data)
    assert np.array_equal(decoded, pixels)


def test_large_images_are_deflated_in_pieces_into_one_zlib_stream() -> None:
    pixels = RNG.integers(0, 256, (1024, 1024, 3), dtype=np.uint8)
    raw = png_writer._filtered_up(pixels)
    deflated = png_writer._deflate(raw, 1)
    assert len(raw) // png_writer._PIECE_BYTES >= 2  # really in pieces
    assert zlib.decompress(deflated) == raw.tobytes()


def test_the_icc_profile_is_kept() -> None:
    profile = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    _, img = _decoded(encode_png(np.zeros((4, 4, 3), np.uint8), icc_profile=profile))
    assert img.info["icc_profile"] == profile


def test_up_filter_makes_files_about_as_small_as_pillows() -> None:
    from skimage import data

    photo = data.astronaut()
    buf = io.BytesIO()
    Image.fromarray(photo).save(buf, "PNG", compress_level=1)
    assert len(encode_png(photo)) < 1.05 * len(buf.getvalue())


@pytest.mark.parametrize(("pixels", "error"), [
    (np.zeros((4, 4), np.float32), TypeError),
    (np.zeros((4, 4, 5), np.uint8), ValueError),
    (np.zeros((0, 4, 3), np.uint8), ValueError),
    (np.zeros(4, np.uint8), ValueError),
])
def test_bad_arrays_are_refused(pixels: np.ndarray, error: type[Exception]) -> None:
    with pytest.raises(error):
        encode_png(pixels)


def test_isal_is_what_the_service_deflates_with(deflater: str) -> None:
    """It is a dependency: a missing wheel would quietly cost every job ~5 ms per 512²."""
    if deflater == "zlib":
        pytest.skip("the fallback's own run")
    assert deflater == "isal.isal_zlib"
