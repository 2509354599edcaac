"""Unit tests of shared.ml.imaging: stage PNGs, orientation, result encoding, JPEG quality."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image, ImageCms, ImageOps

from shared.ml.imaging import (
    PREVIEW_SIDE,
    THUMBNAIL_SIDE,
    apply_orientation,
    composite_masked,
    decode_mask_png,
    decode_png,
    encode_png_array,
    encode_result,
    encode_result_with_renditions,
    estimate_jpeg_quality,
    from_float01,
    has_preview,
    icc_colour_space,
    oriented_size,
    renditions,
    resize_alpha,
    srgb_icc_profile,
    to_float01,
    warm_codecs,
)

RNG = np.random.default_rng(1234)


def _random(shape: tuple[int, ...]) -> np.ndarray:
    return RNG.integers(0, 256, shape, dtype=np.uint8)


def _open(data: bytes) -> Image.Image:
    img = Image.open(io.BytesIO(data))
    img.load()
    return img


@pytest.mark.parametrize("shape", [(7, 5), (7, 5, 3), (7, 5, 4)])
def test_png_round_trip_is_lossless(shape: tuple[int, ...]) -> None:
    arr = _random(shape)
    out = decode_png(encode_png_array(arr))
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out, arr)


def test_bool_mask_round_trip() -> None:
    mask = _random((6, 9)) > 127
    data = encode_png_array(mask)
    assert _open(data).mode == "L"
    np.testing.assert_array_equal(decode_mask_png(data), mask)


def test_encode_png_rejects_other_dtypes() -> None:
    with pytest.raises(TypeError):
        encode_png_array(np.zeros((4, 4), dtype=np.uint16))


@pytest.mark.parametrize("orientation", range(1, 9))
@pytest.mark.parametrize("channels", [None, 3])
def test_apply_orientation_matches_pillow(orientation: int, channels: int | None) -> None:
    shape = (5, 7) if channels is None else (5, 7, channels)
    arr = _random(shape)
    exif = Image.Exif()
    exif[0x0112] = orientation
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "PNG", exif=exif.tobytes())
    expected = np.asarray(ImageOps.exif_transpose(_open(buf.getvalue())))
    got = apply_orientation(arr, orientation)
    np.testing.assert_array_equal(got, expected)
    assert got.flags.c_contiguous
    assert oriented_size((7, 5), orientation) == (got.shape[1], got.shape[0])


def test_resize_alpha_uses_width_height_order() -> None:
    alpha = np.full((10, 20), 200, dtype=np.uint8)
    out = resize_alpha(alpha, (80, 40))
    assert out.shape == (40, 80) and out.dtype == np.uint8
    assert np.all(out == 200)


def test_float_helpers_round_and_clip() -> None:
    arr = _random((4, 4, 3))
    np.testing.assert_array_equal(from_float01(to_float01(arr)), arr)
    np.testing.assert_array_equal(
        from_float01(np.array([-0.5, 0.4 / 255, 0.6 / 255, 1.7])), [0, 0, 1, 255]
    )


def test_composite_masked_keeps_pixels_outside_mask() -> None:
    original, filled = _random((6, 6, 3)), _random((6, 6, 3))
    mask = np.zeros((6, 6), dtype=bool)
    mask[2:4, 1:5] = True
    out = composite_masked(original, filled, mask)
    np.testing.assert_array_equal(out[~mask], original[~mask])
    np.testing.assert_array_equal(out[mask], filled[mask])


def test_encode_png_result_with_alpha_icc_and_orientation() -> None:
    pixels, alpha = _random((10, 20, 3)), _random((10, 20))
    icc = srgb_icc_profile()
    data = encode_result(pixels, alpha=alpha, icc_profile=icc, fmt="png", orientation=6)
    img = _open(data)
    assert img.mode == "RGBA" and img.size == (10, 20)  # rotated: width and height swap
    np.testing.assert_array_equal(np.asarray(img)[..., :3], apply_orientation(pixels, 6))
    np.testing.assert_array_equal(np.asarray(img)[..., 3], apply_orientation(alpha, 6))
    assert img.info.get("icc_profile") == icc
    assert not img.getexif()


def test_encode_gray_png_with_alpha_is_la() -> None:
    img = _open(encode_result(_random((8, 8)), alpha=_random((8, 8)), icc_profile=None, fmt="png"))
    assert img.mode == "LA"


def test_jpeg_result_flattens_alpha_onto_white() -> None:
    pixels = np.zeros((16, 16, 3), dtype=np.uint8)
    alpha = np.zeros((16, 16), dtype=np.uint8)
    alpha[:, 8:] = 255  # left half transparent, right half opaque black
    img = _open(encode_result(pixels, alpha=alpha, icc_profile=None, fmt="jpeg"))
    assert img.mode == "RGB"
    arr = np.asarray(img).astype(int)
    assert arr[:, :6].min() > 245 and arr[:, 10:].max() < 10


def test_icc_for_another_colour_space_is_dropped() -> None:
    # An RGB profile must not be attached to a gray JPEG: viewers would misread the pixels.
    data = encode_result(_random((8, 8)), alpha=None, icc_profile=srgb_icc_profile(), fmt="jpeg")
    assert "icc_profile" not in _open(data).info
    assert icc_colour_space(srgb_icc_profile()) == "RGB"
    assert icc_colour_space(b"not a profile") is None


def test_webp_result_keeps_alpha_and_icc() -> None:
    icc = srgb_icc_profile()
    data = encode_result(
        _random((12, 12, 3)), alpha=_random((12, 12)), icc_profile=icc, fmt="webp", quality=80
    )
    img = _open(data)
    assert img.format == "WEBP" and img.mode == "RGBA"
    assert img.info.get("icc_profile") == icc


def test_result_carries_no_exif_or_gps() -> None:
    for fmt in ("png", "jpeg", "webp"):
        img = _open(encode_result(_random((8, 8, 3)), alpha=None, icc_profile=None, fmt=fmt))
        assert not img.getexif(), fmt
        assert "exif" not in img.info, fmt


def test_srgb_profile_is_a_valid_icc() -> None:
    profile = ImageCms.ImageCmsProfile(io.BytesIO(srgb_icc_profile()))
    assert "sRGB" in ImageCms.getProfileDescription(profile)


def test_estimate_jpeg_quality_is_exact_for_pillow_files() -> None:
    img = Image.fromarray(_random((16, 16, 3)))
    for quality in range(5, 96):
        buf = io.BytesIO()
        img.save(buf, "JPEG", quality=quality)
        estimate = estimate_jpeg_quality(_open(buf.getvalue()).quantization)
        assert abs(estimate - quality) <= 1, (quality, estimate)
        assert estimate == quality  # the IJG tables differ for every q in this range


def test_estimate_jpeg_quality_needs_table_zero() -> None:
    with pytest.raises(ValueError):
        estimate_jpeg_quality({1: [1] * 64})


@pytest.mark.parametrize("fmt", ["png", "jpeg", "webp"])
def test_result_with_renditions_is_the_same_result(fmt: str) -> None:
    pixels, alpha = _random((40, 30, 3)), _random((40, 30))
    alone = encode_result(pixels, alpha=alpha, icc_profile=None, fmt=fmt, orientation=6)
    encoded, _ = encode_result_with_renditions(
        pixels, alpha=alpha, icc_profile=None, fmt=fmt, orientation=6
    )
    assert encoded == alone


def test_renditions_are_thumbnail_then_preview_in_the_results_frame() -> None:
    # 3000 x 600 as the user sees it (orientation 6 turns the stored 600 x 3000).
    pixels = np.zeros((3000, 600, 3), dtype=np.uint8)
    pixels[:, :300] = 255  # white on the stored left: the top once turned
    _, small = encode_result_with_renditions(
        pixels, alpha=None, icc_profile=None, fmt="png", orientation=6
    )
    (thumb, thumb_type), (preview, preview_type) = small
    assert thumb_type == preview_type == "image/webp"
    assert _open(thumb).size == (THUMBNAIL_SIDE, 51)
    assert _open(preview).size == (PREVIEW_SIDE, 410)
    top, bottom = np.asarray(_open(preview).convert("L"))[[5, -5]].mean(axis=1)
    assert top > 240 and bottom < 15


def test_a_small_result_is_its_own_preview_and_gray_goes_out_as_rgb() -> None:
    _, small = encode_result_with_renditions(
        _random((20, 30)), alpha=_random((20, 30)), icc_profile=None, fmt="png"
    )
    ((data, content_type),) = small  # the thumbnail alone
    thumb = _open(data)
    assert thumb.size == (30, 20) and content_type == "image/webp"
    assert thumb.format == "WEBP" and thumb.mode == "RGBA"


@pytest.mark.parametrize(("width", "height", "has"), [(2048, 2048, False), (2049, 10, True),
                                                      (10, 2049, True), (1, 1, False)])
def test_only_a_result_larger_than_a_preview_has_one(width: int, height: int, has: bool) -> None:
    assert has_preview(width, height) is has
    assert len(renditions(Image.new("RGB", (width, height)))) == (2 if has else 1)


def test_renditions_of_a_jpeg_result_show_it_flattened() -> None:
    pixels = np.zeros((16, 16, 3), dtype=np.uint8)
    alpha = np.zeros((16, 16), dtype=np.uint8)  # all transparent: a JPEG shows it white
    _, small = encode_result_with_renditions(pixels, alpha=alpha, icc_profile=None, fmt="jpeg")
    preview = _open(small[0][0])  # the thumbnail: this result is its own preview
    assert preview.mode == "RGB" and np.asarray(preview).min() > 245


def test_warm_codecs_encodes_every_result_format_at_start() -> None:
    assert warm_codecs() == ("png", "jpeg", "webp")
