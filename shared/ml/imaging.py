"""Image I/O helpers shared by preprocess and the model services.

Between stages images travel as PNG (lossless, so a stage never adds its own artifacts); the
final result is encoded once by `encode_result`, which re-applies what preprocess set aside
(EXIF orientation, alpha, ICC profile) and writes no EXIF, so GPS and camera metadata never leave
the service.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Literal, get_args

import numpy as np
from PIL import Image

from shared.ml import png_writer

ResultFormat = Literal["png", "jpeg", "webp"]

# Background a transparent image is flattened onto for JPEG, which has no alpha channel:
# white matches how browsers and viewers usually display transparency on a page.
JPEG_FLATTEN_BACKGROUND = 255

# IJG (libjpeg) standard luminance quantisation table, natural (row-major) order, as in
# Annex K of ITU-T T.81. Pillow's `Image.quantization` is also in natural order.
_IJG_LUMINANCE = np.array(
    [
        16, 11, 10, 16, 24, 40, 51, 61,
        12, 12, 14, 19, 26, 58, 60, 55,
        14, 13, 16, 24, 40, 57, 69, 56,
        14, 17, 22, 29, 51, 87, 80, 62,
        18, 22, 37, 56, 68, 109, 103, 77,
        24, 35, 55, 64, 81, 104, 113, 92,
        49, 64, 78, 87, 103, 121, 120, 101,
        72, 92, 95, 98, 112, 100, 103, 99,
    ],
    dtype=np.int64,
)  # fmt: skip


# --------------------------------------------------------------------------- PNG between stages


def encode_png_array(arr: np.ndarray) -> bytes:
    """Encode a uint8 HxW, HxWx3 or HxWx4 array (or a bool HxW mask, as 0/255) as PNG.

    Compress level 1: these PNGs are intermediate objects read once by the next stage, so
    encoding speed matters more than a few percent of size.
    """
    if arr.dtype == np.bool_:
        arr = arr.astype(np.uint8) * 255
    if arr.dtype != np.uint8:
        raise TypeError(f"expected uint8 or bool array, got {arr.dtype}")
    return png_writer.encode_png(_check_image_shape(arr), level=1)


def decode_png(data: bytes) -> np.ndarray:
    """Decode a PNG written by `encode_png_array` into uint8 HxW (gray) or HxWxC.

    Other modes are converted to the nearest of L, RGB and RGBA so callers only ever see those.
    """
    with Image.open(io.BytesIO(data), formats=["PNG"]) as img:
        img.load()
        if img.mode in ("L", "RGB", "RGBA"):
            return np.asarray(img).copy()
        return np.asarray(img.convert("RGBA" if img.has_transparency_data else "RGB"))


def decodes_as_stored(fmt: str, mode: str, has_transparency: bool) -> bool:
    """Whether a file (Pillow's format and mode, and whether its header has a transparency
    chunk) decodes with `decode_png` to exactly the uint8 gray or RGB pixels a model runs on: a
    PNG in L or RGB with no transparency. Such an upload is the model's input as it is.
    """
    return fmt == "PNG" and mode in ("L", "RGB") and not has_transparency


def decode_mask_png(data: bytes) -> np.ndarray:
    """Decode a stored mask PNG into a bool HxW array (True = fill)."""
    arr = decode_png(data)
    if arr.ndim == 3:
        arr = arr[..., 0]
    return arr >= 128


# --------------------------------------------------------------------------- array helpers


def apply_orientation(arr: np.ndarray, orientation: int) -> np.ndarray:
    """Transform `arr` (HxW or HxWxC) for EXIF orientation 1-8.

    Same result as `PIL.ImageOps.exif_transpose` on an image tagged `orientation`: the returned
    array is what a viewer displays. Unknown values are treated as 1 (no change).
    """
    if orientation == 2:  # mirrored horizontally
        out = arr[:, ::-1]
    elif orientation == 3:  # rotated 180
        out = arr[::-1, ::-1]
    elif orientation == 4:  # mirrored vertically
        out = arr[::-1, :]
    elif orientation == 5:  # PIL TRANSPOSE
        out = np.swapaxes(arr, 0, 1)
    elif orientation == 6:  # PIL ROTATE_270: 90 degrees clockwise
        out = np.rot90(arr, k=-1)
    elif orientation == 7:  # PIL TRANSVERSE
        out = np.rot90(arr, k=2).swapaxes(0, 1)
    elif orientation == 8:  # PIL ROTATE_90: 90 degrees counter-clockwise
        out = np.rot90(arr, k=1)
    else:
        return arr
    return np.ascontiguousarray(out)


def oriented_size(size: tuple[int, int], orientation: int) -> tuple[int, int]:
    """(width, height) after `apply_orientation`: orientations 5-8 swap the axes."""
    width, height = size
    return (height, width) if orientation in (5, 6, 7, 8) else (width, height)


def shrunk_size(size: tuple[int, int], max_side: int | None) -> tuple[int, int]:
    """(width, height) after shrinking so the long side is at most `max_side` (what preprocess
    does with the `max_side` option; the gateway's cost estimate counts the same pixels)."""
    width, height = size
    if max_side is None or max(width, height) <= max_side:
        return size
    scale = max_side / max(width, height)
    if width >= height:
        return max_side, max(1, round(height * scale))
    return max(1, round(width * scale)), max_side


def resize_alpha(alpha: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize a uint8 HxW alpha channel to `size` = (width, height), Pillow's order, bicubic."""
    img = Image.fromarray(np.ascontiguousarray(alpha, dtype=np.uint8), mode="L")
    return np.asarray(img.resize(size, Image.Resampling.BICUBIC)).copy()


def to_float01(arr: np.ndarray) -> np.ndarray:
    """uint8 image -> float32 in [0, 1], the range the networks work in."""
    return arr.astype(np.float32) / 255.0


def from_float01(arr: np.ndarray) -> np.ndarray:
    """float image in [0, 1] -> uint8, rounding (not truncating) and clipping overshoot."""
    return np.clip(np.rint(np.asarray(arr, dtype=np.float32) * 255.0), 0, 255).astype(np.uint8)


def is_gray(image: np.ndarray) -> bool:
    """One channel, or three equal ones (a black-and-white photo saved as RGB)."""
    if image.ndim == 2 or image.shape[2] == 1:
        return True
    return bool((image[..., 0] == image[..., 1]).all() and (image[..., 1] == image[..., 2]).all())


def composite_masked(original: np.ndarray, filled: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Take `filled` inside the bool `mask` and `original` everywhere else.

    Inpainting results go through this so that pixels outside the mask are bit-identical to the
    decoded input, whatever the network did to them.
    """
    if original.shape != filled.shape or mask.shape != original.shape[:2]:
        raise ValueError(
            f"shapes differ: original {original.shape}, filled {filled.shape}, mask {mask.shape}"
        )
    sel = mask if original.ndim == 2 else mask[..., None]
    return np.where(sel, filled, original).astype(original.dtype)


def _check_image_shape(arr: np.ndarray) -> np.ndarray:
    if arr.ndim == 2 or (arr.ndim == 3 and arr.shape[2] in (3, 4)):
        return np.ascontiguousarray(arr)
    raise ValueError(f"expected HxW, HxWx3 or HxWx4 array, got shape {arr.shape}")


# --------------------------------------------------------------------------- ICC profiles


def icc_colour_space(icc_profile: bytes | None) -> str | None:
    """The ICC header's data colour space ('RGB', 'GRAY', 'CMYK', ...), or None if not ICC."""
    # Header: bytes 16-19 are the colour space signature, 36-39 the 'acsp' file signature.
    if icc_profile is None or len(icc_profile) < 128 or icc_profile[36:40] != b"acsp":
        return None
    return icc_profile[16:20].decode("ascii", errors="replace").strip()


def icc_matches_mode(icc_profile: bytes | None, mode: str) -> bool:
    """Whether a profile describes pixels of Pillow `mode` (an RGB profile on gray is wrong)."""
    space = icc_colour_space(icc_profile)
    wanted = {"L": "GRAY", "LA": "GRAY", "RGB": "RGB", "RGBA": "RGB", "CMYK": "CMYK"}
    return space is not None and wanted.get(mode) == space


def srgb_icc_profile() -> bytes:
    """An sRGB ICC profile, attached where we converted pixels to sRGB ourselves (CMYK)."""
    from PIL import ImageCms

    return ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()


# --------------------------------------------------------------------------- final result


# zlib level 1: on photos 3-4x faster than level 6 for files at most ~10 % larger; at 24 MP
# that is seconds the user waits for a few percent of size. `png_writer` then takes a 512²
# colour result from Pillow's 17 ms to 5 ms, for ~2 % more bytes.
RESULT_PNG_COMPRESS_LEVEL = 1


def encode_result(
    pixels: np.ndarray,
    *,
    alpha: np.ndarray | None,
    icc_profile: bytes | None,
    fmt: ResultFormat,
    orientation: int = 1,
    quality: int = 95,
) -> bytes:
    """Encode the restored image for the user.

    - `pixels`: uint8 HxW or HxWx3; `alpha`: uint8 HxW in the same frame, or None.
    - `orientation`: EXIF orientation still to apply (artifact removal runs on the stored
      frame); it is applied to the pixels, so the output carries no orientation tag.
    - The ICC profile is attached when it fits the output's colour space (a gray profile is
      dropped if WebP forces RGB, for example).
    - JPEG cannot carry alpha: a transparent image is flattened onto white
      (`JPEG_FLATTEN_BACKGROUND`), which is how it would be seen on a typical page.
    - No EXIF, XMP or text chunks are written: GPS and camera metadata are dropped.
    - `quality` applies to JPEG and WebP; JPEG at quality >= 90 keeps full-resolution chroma
      (4:4:4), since chroma subsampling would blur what the restoration just recovered.
    """
    img = result_image(pixels, alpha=alpha, fmt=fmt, orientation=orientation)
    return _encode_result_image(img, icc_profile, fmt, quality)


def encode_result_with_renditions(
    pixels: np.ndarray,
    *,
    alpha: np.ndarray | None,
    icc_profile: bytes | None,
    fmt: ResultFormat,
    orientation: int = 1,
    quality: int = 95,
) -> tuple[bytes, list[tuple[bytes, str]]]:
    """`encode_result`, and the result's `renditions` made from the same pixels.

    The renditions are made on a second thread while the result is encoded. Only the parts
    that release the GIL overlap (zlib in `png_writer`, Pillow's resampling), so the end of a
    job waits for less than the sum of the two (512² colour PNG with its thumbnail: 11 ms).
    """
    img = result_image(pixels, alpha=alpha, fmt=fmt, orientation=orientation)
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="renditions") as pool:
        small = pool.submit(renditions, img)
        encoded = _encode_result_image(img, icc_profile, fmt, quality)
        return encoded, small.result()


def result_image(
    pixels: np.ndarray, *, alpha: np.ndarray | None, fmt: ResultFormat, orientation: int = 1
) -> Image.Image:
    """The result as the user sees it (see `encode_result`), before encoding."""
    pixels = _check_image_shape(np.asarray(pixels, dtype=np.uint8))
    if pixels.ndim == 3 and pixels.shape[2] != 3:
        raise ValueError(f"pixels must be HxW or HxWx3, got shape {pixels.shape}")
    if alpha is not None and alpha.shape != pixels.shape[:2]:
        raise ValueError(f"alpha shape {alpha.shape} does not match pixels {pixels.shape}")
    pixels = apply_orientation(pixels, orientation)
    if alpha is not None:
        alpha = apply_orientation(alpha, orientation)
    if fmt == "jpeg" and alpha is not None:
        return Image.fromarray(_flatten(pixels, alpha, JPEG_FLATTEN_BACKGROUND))
    return _with_alpha(pixels, alpha)


def _encode_result_image(
    img: Image.Image, icc_profile: bytes | None, fmt: ResultFormat, quality: int
) -> bytes:
    if fmt == "jpeg":
        options: dict[str, object] = {"quality": int(quality), "optimize": True}
        if quality >= 90 and img.mode == "RGB":
            options["subsampling"] = 0
        return _save(img, "JPEG", icc_profile, options)
    if fmt == "png":
        icc = icc_profile if icc_profile and icc_matches_mode(icc_profile, img.mode) else None
        return png_writer.encode_png(
            np.asarray(img), level=RESULT_PNG_COMPRESS_LEVEL, icc_profile=icc
        )
    if fmt == "webp":
        # WebP stores RGB(A) only; gray goes out as RGB.
        if img.mode in ("L", "LA"):
            img = img.convert("RGBA" if img.mode == "LA" else "RGB")
        return _save(img, "WEBP", icc_profile, {"quality": int(quality), "method": 4})
    raise ValueError(f"unknown result format {fmt!r}")


def _flatten(pixels: np.ndarray, alpha: np.ndarray, background: int) -> np.ndarray:
    a = alpha.astype(np.float32) / 255.0
    if pixels.ndim == 3:
        a = a[..., None]
    out = pixels.astype(np.float32) * a + float(background) * (1.0 - a)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def _with_alpha(pixels: np.ndarray, alpha: np.ndarray | None) -> Image.Image:
    if alpha is None:
        return Image.fromarray(pixels)
    stacked = np.dstack([pixels, alpha])
    return Image.fromarray(stacked, mode="RGBA" if pixels.ndim == 3 else "LA")


def _save(
    img: Image.Image, pil_format: str, icc_profile: bytes | None, options: dict[str, object]
) -> bytes:
    if icc_profile is not None and icc_matches_mode(icc_profile, img.mode):
        options = {**options, "icc_profile": icc_profile}
    buf = io.BytesIO()
    img.save(buf, format=pil_format, **options)
    return buf.getvalue()


# --------------------------------------------------------------------------- JPEG quality


def _ijg_table(quality: int) -> np.ndarray:
    """libjpeg's `jpeg_set_quality` scaling of the standard luminance table (baseline)."""
    scale = 5000 // quality if quality < 50 else 200 - 2 * quality
    return np.clip((_IJG_LUMINANCE * scale + 50) // 100, 1, 255)


_IJG_TABLES = np.stack([_ijg_table(q) for q in range(1, 101)])  # row q-1 is quality q


def estimate_jpeg_quality(quantization: Mapping[int, Sequence[int]]) -> int:
    """The IJG quality (1-100) whose luminance table best matches the file's table 0.

    `quantization` is Pillow's `JpegImageFile.quantization` (natural order). Exact for files
    written by libjpeg/Pillow with standard tables; for other encoders (phones, Photoshop) it is
    the nearest IJG equivalent, compared in log space so that small and large quantisers weigh
    alike. Where several qualities give the same table the median one is returned.
    """
    if 0 not in quantization or len(quantization[0]) != 64:
        raise ValueError("no 64-entry luminance quantisation table (table 0)")
    table = np.maximum(np.asarray(quantization[0], dtype=np.float64), 1.0)
    errors = np.abs(np.log(_IJG_TABLES) - np.log(table)[None, :]).sum(axis=1)
    best = np.flatnonzero(np.isclose(errors, errors.min(), rtol=0.0, atol=1e-9))
    return int(best[len(best) // 2]) + 1


def megapixels(pixels: int) -> str:
    """Format a pixel count for user-facing messages: 4000000 -> '4.0 MP'."""
    mp = pixels / 1e6
    # Small limits (tests, thumbnails) would all print as "0.0 MP": keep 3 significant digits.
    return f"{mp:.1f} MP" if mp >= 0.1 else f"{mp:.3g} MP"


# --------------------------------------------------------------------------- renditions

THUMBNAIL_SIDE = 256
PREVIEW_SIDE = 2048


# WebP method 2: half the time of method 4 (512² colour: 10 against 21 ms) for ~5 % more bytes;
# these are what the page shows while the full result downloads, made at the end of every job.
_RENDITION_WEBP = {"format": "WEBP", "quality": 85, "method": 2}


def renditions(result: Image.Image) -> list[tuple[bytes, str]]:
    """Smaller copies of the final result for the browser, as (bytes, content type): the
    thumbnail (long side at most `THUMBNAIL_SIDE`, the recent-jobs list), then the preview (at
    most `PREVIEW_SIDE`, for viewing huge SR results) where `has_preview` says one is needed.

    `result` is `result_image`'s (orientation applied, JPEG's flattening done). A result no
    larger than the preview is its own preview: copying it would only delay the job's end. The
    thumbnail is shrunk from the preview, which is already small. WebP keeps transparency and
    is far smaller than PNG for photos.
    """
    if not has_preview(*result.size):
        return [_rendition_webp(_thumbnail(result))]
    preview = _shrunk(result, PREVIEW_SIDE)
    return [_rendition_webp(_thumbnail(preview)), _rendition_webp(preview)]


def _thumbnail(img: Image.Image) -> Image.Image:
    """A box filter first, Lanczos only for what is left under 2×: a 512² result's thumbnail in
    0.3 ms instead of 2.5, which the end of every job waits for; at 256 px, in a list, the
    difference does not show."""
    return _shrunk(img, THUMBNAIL_SIDE, reducing_gap=1.0)


def has_preview(width: int, height: int) -> bool:
    """Whether a result this size gets a preview of its own (else the result is its preview)."""
    return max(width, height) > PREVIEW_SIDE


def _shrunk(img: Image.Image, max_side: int, reducing_gap: float = 2.0) -> Image.Image:
    """A new image, never `img` itself: `Image.save` keeps its options on the image object,
    so the result and a rendition saved from one object on two threads would swap them."""
    small = img.copy()
    if max(img.size) <= max_side:
        return small
    small.thumbnail((max_side, max_side), Image.Resampling.LANCZOS, reducing_gap=reducing_gap)
    return small


def _rendition_webp(img: Image.Image) -> tuple[bytes, str]:
    if img.mode in ("L", "LA"):
        img = img.convert("RGBA" if img.mode == "LA" else "RGB")
    buf = io.BytesIO()
    img.save(buf, **_RENDITION_WEBP)  # type: ignore[arg-type]
    return buf.getvalue(), "image/webp"


def warm_codecs() -> tuple[str, ...]:
    """Encode a photo-sized image in every result format with its renditions, and decode it: the
    first use of each codec (its plugin loaded, the deflate threads started) then falls on the
    worker's start, not on its first job. A restarted denoise worker's first 512² job spent
    30 ms encoding against 8 ms warm, and 19 ms loading its input against 8. Returns the
    formats warmed."""
    ramp = np.linspace(0, 255, 512, dtype=np.float32)
    pixels = np.stack([np.add.outer(ramp[:384] / 2, ramp / 2)] * 3, axis=-1).astype(np.uint8)
    formats: tuple[ResultFormat, ...] = get_args(ResultFormat)
    for fmt in formats:
        encode_result_with_renditions(pixels, alpha=None, icc_profile=None, fmt=fmt)
    decode_png(encode_png_array(pixels))
    return formats
