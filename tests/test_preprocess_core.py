"""Unit tests of the preprocess pure core: every input is made in code with Pillow."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from services.preprocess.core import InvalidInput, Limits, NormalizedInput, normalize
from shared.ml.imaging import apply_orientation, decode_png, encode_result, srgb_icc_profile

LIMITS = Limits(max_upload_bytes=50 * 2**20, max_input_pixels=40_000_000)
RNG = np.random.default_rng(7)


def _random(shape: tuple[int, ...]) -> np.ndarray:
    return RNG.integers(0, 256, shape, dtype=np.uint8)


def _save(img: Image.Image, fmt: str = "PNG", **options: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **options)
    return buf.getvalue()


def _exif(orientation: int, *, gps: bool = False) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    if gps:
        ifd = exif.get_ifd(0x8825)
        ifd[1] = "N"
        ifd[2] = (52.0, 31.0, 12.0)
    return exif.tobytes()


def _norm(data: bytes, task: str = "denoise", **kwargs: object) -> NormalizedInput:
    options: dict = {"mask_bytes": None, "max_side": None, "limits": LIMITS, **kwargs}
    return normalize(data, task=task, **options)  # type: ignore[arg-type]


def _png(width: int, height: int, bit_depth: int, colour_type: int, raw: bytes) -> bytes:
    """A PNG written by hand, for what Pillow cannot save (48-bit RGB, lying headers)."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = zlib.crc32(kind + body) & 0xFFFFFFFF
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc)

    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(raw))
        + chunk(b"IEND", b"")
    )


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG whose IHDR claims `width`x`height` but holds almost no data (a bomb's header)."""
    return _png(width, height, 8, 0, b"\x00" * 64)


# --------------------------------------------------------------------------- modes


def test_rgb_png_is_returned_unchanged() -> None:
    arr = _random((30, 40, 3))
    out = _norm(_save(Image.fromarray(arr)))
    np.testing.assert_array_equal(out.pixels, arr)  # no resampling, no colour change
    assert out.alpha is None and out.mask is None
    assert out.source_format == "PNG" and out.jpeg_quality is None
    assert out.orientation_after == 1 and not out.was_resized
    assert out.pixels_as_uploaded


def test_gray_png_stays_gray() -> None:
    arr = _random((20, 10))
    out = _norm(_save(Image.fromarray(arr)), task="artifacts")
    assert out.pixels.shape == (20, 10)
    np.testing.assert_array_equal(out.pixels, arr)


def test_rgba_alpha_is_set_aside() -> None:
    arr = _random((12, 16, 4))
    out = _norm(_save(Image.fromarray(arr, mode="RGBA")))
    np.testing.assert_array_equal(out.pixels, arr[..., :3])
    assert out.alpha is not None
    np.testing.assert_array_equal(out.alpha, arr[..., 3])


def test_la_gives_gray_and_alpha() -> None:
    arr = _random((12, 16, 2))
    out = _norm(_save(Image.fromarray(arr, mode="LA")))
    assert out.pixels.shape == (12, 16)
    np.testing.assert_array_equal(out.pixels, arr[..., 0])
    np.testing.assert_array_equal(out.alpha, arr[..., 1])


def test_palette_with_transparency() -> None:
    img = Image.new("P", (8, 6))
    img.putpalette([0, 0, 0, 255, 0, 0, 0, 0, 255] + [0] * (256 * 3 - 9))
    idx = np.zeros((6, 8), dtype=np.uint8)
    idx[:, 4:] = 1
    idx[0, 0] = 2
    img.putdata(idx.flatten().tolist())
    out = _norm(_save(img, transparency=0))
    assert out.pixels.shape == (6, 8, 3)
    np.testing.assert_array_equal(out.pixels[0, 5], [255, 0, 0])
    np.testing.assert_array_equal(out.pixels[0, 0], [0, 0, 255])
    expected_alpha = np.where(idx == 0, 0, 255)
    np.testing.assert_array_equal(out.alpha, expected_alpha)


def test_palette_without_transparency_is_rgb_without_alpha() -> None:
    img = Image.fromarray(_random((8, 8, 3))).quantize(16)
    out = _norm(_save(img))
    np.testing.assert_array_equal(out.pixels, np.asarray(img.convert("RGB")))
    assert out.alpha is None


def test_16_bit_gray_png_is_scaled_not_clipped() -> None:
    arr16 = RNG.integers(0, 65536, (10, 12), dtype=np.uint16)
    img = Image.fromarray(arr16)
    assert img.mode == "I;16"
    out = _norm(_save(img))
    assert out.pixels.dtype == np.uint8 and out.pixels.shape == (10, 12)
    np.testing.assert_array_equal(out.pixels, np.rint(arr16 / 257.0).astype(np.uint8))


def test_48_bit_png_is_reduced_to_8_bit() -> None:
    rgb16 = RNG.integers(0, 65536, (4, 5, 3), dtype=np.uint16)
    raw = b"".join(b"\x00" + row.astype(">u2").tobytes() for row in rgb16)
    out = _norm(_png(5, 4, 16, 2, raw))
    assert out.pixels.dtype == np.uint8 and out.pixels.shape == (4, 5, 3)
    # Pillow keeps the high byte: within one level of the exact scaling.
    assert np.abs(out.pixels.astype(float) - rgb16 / 257.0).max() <= 1.0


def test_float_tiff_in_unit_range_is_scaled() -> None:
    arr = RNG.random((6, 7)).astype(np.float32)
    out = _norm(_save(Image.fromarray(arr, mode="F"), "TIFF"))
    np.testing.assert_array_equal(out.pixels, np.rint(arr * 255).astype(np.uint8))


def test_one_bit_png_becomes_gray() -> None:
    arr = _random((9, 9)) > 127
    out = _norm(_save(Image.fromarray(arr).convert("1")))
    np.testing.assert_array_equal(out.pixels, np.where(arr, 255, 0))


def test_cmyk_jpeg_becomes_rgb() -> None:
    img = Image.new("CMYK", (16, 16), (0, 255, 255, 0))  # pure red in naive CMYK
    out = _norm(_save(img, "JPEG", quality=95))
    assert out.pixels.shape == (16, 16, 3)
    r, g, b = out.pixels.reshape(-1, 3).mean(axis=0)
    assert r > 240 and g < 15 and b < 15
    assert out.icc_profile is None  # no CMYK profile to convert through: no profile claimed


def test_cmyk_with_broken_profile_falls_back_to_naive_conversion() -> None:
    fake = bytearray(128)
    fake[16:20], fake[36:40] = b"CMYK", b"acsp"  # looks like a CMYK profile, is not one
    img = Image.new("CMYK", (16, 16), (0, 255, 255, 0))
    out = _norm(_save(img, "JPEG", quality=95, icc_profile=bytes(fake)))
    assert out.pixels.reshape(-1, 3).mean(axis=0)[0] > 240
    assert out.icc_profile is None


# --------------------------------------------------------------------------- metadata


def test_exif_orientation_applied_for_denoise_but_not_artifacts() -> None:
    arr = _random((16, 32, 3))  # 32 wide, 16 high as stored
    data = _save(Image.fromarray(arr), "JPEG", quality=80, exif=_exif(6))
    stored = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))

    den = _norm(data, task="denoise")
    assert den.pixels.shape == (32, 16, 3) and den.orientation_after == 1
    np.testing.assert_array_equal(den.pixels, apply_orientation(stored, 6))

    art = _norm(data, task="artifacts")
    assert art.pixels.shape == (16, 32, 3) and art.orientation_after == 6
    np.testing.assert_array_equal(art.pixels, stored)  # the 8x8 grid stays where it was
    assert art.source_format == "JPEG" and art.jpeg_quality == 80


@pytest.mark.parametrize(
    ("image", "options", "task", "as_uploaded"),
    [
        (Image.fromarray(_random((16, 24))), {}, "denoise", True),
        (Image.fromarray(_random((16, 24, 3))), {"exif": _exif(6)}, "artifacts", True),
        (Image.fromarray(_random((16, 24, 3))), {"exif": _exif(6)}, "denoise", False),
        (Image.fromarray(_random((16, 24, 4)), mode="RGBA"), {}, "denoise", False),
        (Image.fromarray(_random((16, 24, 3))).convert("P"), {}, "denoise", False),
    ],
    ids=["gray", "turned-later", "turned-now", "alpha", "palette"],
)
def test_pixels_as_uploaded_only_where_the_upload_decodes_to_them(
    image: Image.Image, options: dict, task: str, as_uploaded: bool
) -> None:
    data = _save(image, **options)
    out = _norm(data, task=task)
    assert out.pixels_as_uploaded is as_uploaded
    if as_uploaded:  # what the next stage will read in place of a stored copy
        np.testing.assert_array_equal(decode_png(data), out.pixels)


def test_jpeg_and_shrunk_uploads_are_not_used_as_is() -> None:
    arr = _random((40, 60, 3))
    assert not _norm(_save(Image.fromarray(arr), "JPEG", quality=95)).pixels_as_uploaded
    assert not _norm(_save(Image.fromarray(arr)), max_side=30).pixels_as_uploaded


def test_icc_profile_is_kept() -> None:
    icc = srgb_icc_profile()
    out = _norm(_save(Image.fromarray(_random((8, 8, 3))), icc_profile=icc))
    assert out.icc_profile == icc


def test_icc_of_wrong_colour_space_is_dropped() -> None:
    out = _norm(_save(Image.fromarray(_random((8, 8))), icc_profile=srgb_icc_profile()))
    assert out.icc_profile is None


def test_gps_is_dropped_in_result() -> None:
    data = _save(Image.fromarray(_random((16, 16, 3))), "JPEG", exif=_exif(3, gps=True))
    assert Image.open(io.BytesIO(data)).getexif().get_ifd(0x8825)  # the input has GPS
    out = _norm(data, task="artifacts")
    result = encode_result(
        out.pixels,
        alpha=out.alpha,
        icc_profile=out.icc_profile,
        fmt="jpeg",
        orientation=out.orientation_after,
    )
    img = Image.open(io.BytesIO(result))
    assert not img.getexif() and "exif" not in img.info


# --------------------------------------------------------------------------- rejections


def test_non_image_is_rejected() -> None:
    with pytest.raises(InvalidInput, match="not a recognised image"):
        _norm(b"%PDF-1.7 definitely not a picture")


def test_empty_upload_is_rejected() -> None:
    with pytest.raises(InvalidInput, match="empty"):
        _norm(b"")


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_truncated_image_is_rejected(fmt: str) -> None:
    data = _save(Image.fromarray(_random((64, 64, 3))), fmt)
    with pytest.raises(InvalidInput, match="corrupt or truncated"):
        _norm(data[: len(data) // 2])


def test_byte_limit_names_the_limit() -> None:
    data = _save(Image.fromarray(_random((64, 64, 3))))
    limits = Limits(max_upload_bytes=1024, max_input_pixels=10**6)
    with pytest.raises(InvalidInput, match=r"^the image is .* KiB; the upload limit is 1\.0 KiB$"):
        _norm(data, limits=limits)


def test_pixel_limit_is_checked_from_the_header() -> None:
    # The header claims 10000x10000; decoding would fail on the missing data, so a
    # limit message proves the check ran before any pixel was decoded.
    limits = Limits(max_upload_bytes=2**20, max_input_pixels=4_000_000)
    with pytest.raises(InvalidInput) as info:
        _norm(_png_header_only(10_000, 10_000), task="superres", limits=limits)
    assert str(info.value) == "image is 10000x10000 = 100.0 MP; the limit for superres is 4.0 MP"


def test_decompression_bomb_beyond_pillows_guard() -> None:
    with pytest.raises(InvalidInput, match=r"decompression-bomb guard.*limit for denoise"):
        _norm(_png_header_only(100_000, 100_000))


def test_large_compressible_image_over_limit() -> None:
    data = _save(Image.new("L", (3000, 2000)))  # a few KiB of PNG, 6 MP of pixels
    limits = Limits(max_upload_bytes=2**20, max_input_pixels=1_000_000)
    with pytest.raises(InvalidInput, match=r"3000x2000 = 6\.0 MP; the limit for inpaint is 1\.0"):
        _norm(data, task="inpaint", limits=limits)


def test_max_side_lets_a_large_upload_shrink_under_the_input_limit() -> None:
    data = _save(Image.fromarray(_random((200, 300, 3))))
    limits = Limits(max_upload_bytes=2**20, max_input_pixels=20_000, max_decode_pixels=100_000)
    out = _norm(data, task="superres", max_side=150, limits=limits)
    assert out.pixels.shape == (100, 150, 3) and out.was_resized
    with pytest.raises(InvalidInput, match=r"limit for decoding an upload is 0\.05 MP"):
        _norm(data, task="superres", max_side=150, limits=Limits(2**20, 20_000, 50_000))


# --------------------------------------------------------------------------- resizing


def test_max_side_shrinks_long_side_with_lanczos() -> None:
    arr = _random((200, 300, 4))
    img = Image.fromarray(arr, mode="RGBA")
    out = _norm(_save(img), max_side=150)
    assert out.was_resized and out.pixels.shape == (100, 150, 3)
    assert out.alpha is not None and out.alpha.shape == (100, 150)
    expected = np.asarray(img.resize((150, 100), Image.Resampling.LANCZOS))
    np.testing.assert_array_equal(out.alpha, expected[..., 3])


def test_max_side_not_exceeded_means_no_resampling() -> None:
    arr = _random((40, 60, 3))
    out = _norm(_save(Image.fromarray(arr)), max_side=60)
    assert not out.was_resized
    np.testing.assert_array_equal(out.pixels, arr)


def test_max_side_applies_in_the_oriented_frame() -> None:
    data = _save(Image.fromarray(_random((100, 200, 3))), "JPEG", exif=_exif(6))
    out = _norm(data, max_side=50)
    assert out.pixels.shape == (50, 25, 3)


def test_invalid_max_side() -> None:
    with pytest.raises(InvalidInput, match="max_side"):
        _norm(_save(Image.fromarray(_random((8, 8, 3)))), max_side=0)


# --------------------------------------------------------------------------- masks


def _mask_png(arr: np.ndarray, **options: object) -> bytes:
    return _save(Image.fromarray(arr), **options)


def test_mask_is_binarised_at_128() -> None:
    image = _save(Image.fromarray(_random((4, 4, 3))))
    levels = np.array([[0, 127, 128, 255]] * 4, dtype=np.uint8)
    out = _norm(image, task="inpaint", mask_bytes=_mask_png(levels))
    assert out.mask is not None and out.mask.dtype == np.bool_
    np.testing.assert_array_equal(out.mask, levels >= 128)


def test_rgb_mask_and_transparent_mask() -> None:
    image = _save(Image.fromarray(_random((4, 4, 3))))
    rgba = np.zeros((4, 4, 4), dtype=np.uint8)
    rgba[..., :3] = 255  # white everywhere, but only opaque on the first row
    rgba[0, :, 3] = 255
    out = _norm(image, task="inpaint", mask_bytes=_save(Image.fromarray(rgba, mode="RGBA")))
    np.testing.assert_array_equal(out.mask, np.arange(4)[:, None] == np.zeros((1, 4)))


def test_mask_size_mismatch_names_both_sizes() -> None:
    image = _save(Image.fromarray(_random((10, 12, 3))))
    mask = _mask_png(np.full((10, 10), 255, dtype=np.uint8))
    with pytest.raises(InvalidInput, match="mask is 10x10 but the image is 12x10"):
        _norm(image, task="inpaint", mask_bytes=mask)


def test_mask_same_pixel_count_but_transposed_is_rejected() -> None:
    image = _save(Image.fromarray(_random((10, 20, 3))))
    mask = _mask_png(np.full((20, 10), 255, dtype=np.uint8))
    with pytest.raises(InvalidInput, match="mask is 10x20 but the image is 20x10"):
        _norm(image, task="inpaint", mask_bytes=mask)


def test_mask_is_read_in_the_exif_oriented_frame() -> None:
    # Image stored 20x10 with orientation 6 is 10x20 on screen; the mask is drawn on screen.
    image = _save(Image.fromarray(_random((10, 20, 3))), "JPEG", exif=_exif(6))
    drawn = np.zeros((20, 10), dtype=np.uint8)
    drawn[:5] = 255
    out = _norm(image, task="inpaint", mask_bytes=_mask_png(drawn))
    assert out.pixels.shape == (20, 10, 3)
    np.testing.assert_array_equal(out.mask, drawn >= 128)

    # A mask carrying its own orientation is oriented too.
    stored = np.ascontiguousarray(np.rot90(drawn, k=1))  # undo a 90-degree clockwise turn
    out = _norm(image, task="inpaint", mask_bytes=_mask_png(stored, exif=_exif(6)))
    np.testing.assert_array_equal(out.mask, drawn >= 128)


def test_mask_follows_max_side_with_nearest() -> None:
    image = _save(Image.fromarray(_random((100, 200, 3))))
    drawn = np.zeros((100, 200), dtype=np.uint8)
    drawn[:, :100] = 200
    out = _norm(image, task="inpaint", mask_bytes=_mask_png(drawn), max_side=50)
    assert out.mask is not None and out.mask.shape == (25, 50)
    assert out.mask[:, :25].all() and not out.mask[:, 25:].any()


def test_inpaint_without_mask_is_rejected() -> None:
    with pytest.raises(InvalidInput, match="needs a mask"):
        _norm(_save(Image.fromarray(_random((8, 8, 3)))), task="inpaint")


def test_all_black_mask_is_rejected() -> None:
    image = _save(Image.fromarray(_random((8, 8, 3))))
    mask = _mask_png(np.full((8, 8), 127, dtype=np.uint8))
    with pytest.raises(InvalidInput, match="mask is empty"):
        _norm(image, task="inpaint", mask_bytes=mask)


def test_corrupt_mask_is_rejected() -> None:
    image = _save(Image.fromarray(_random((8, 8, 3))))
    with pytest.raises(InvalidInput, match="mask upload is not a recognised image"):
        _norm(image, task="inpaint", mask_bytes=b"scribble")


def test_mask_is_ignored_for_other_tasks() -> None:
    image = _save(Image.fromarray(_random((8, 8, 3))))
    out = _norm(image, task="denoise", mask_bytes=b"anything")
    assert out.mask is None
