"""Pure core of the preprocess service: upload bytes in, model-ready arrays out.

No I/O besides decoding the given bytes. Every rejection is an `InvalidInput` whose message is
shown to the user as the job's failure reason, so it names the limit that was hit.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Literal

import numpy as np
from PIL import Image

from shared.ml.imaging import (
    apply_orientation,
    decodes_as_stored,
    estimate_jpeg_quality,
    icc_colour_space,
    icc_matches_mode,
    megapixels,
    oriented_size,
    shrunk_size,
    srgb_icc_profile,
)

Task = Literal["denoise", "artifacts", "superres", "inpaint"]

# Formats we decode. An allowlist, because some Pillow plugins are risky on untrusted input
# (EPS shells out to Ghostscript, for one) and nobody restores a photo stored as one of those.
ACCEPTED_FORMATS: tuple[str, ...] = ("JPEG", "MPO", "PNG", "WEBP", "TIFF", "BMP", "GIF", "AVIF")

_EXIF_ORIENTATION_TAG = 0x0112
_HIGH_DEPTH_MODES = frozenset({"I;16", "I;16B", "I;16L", "I;16N", "I", "F"})
_ALPHA_MODES = frozenset({"RGBA", "RGBa", "LA", "La", "PA"})
_GRAY_MODES = frozenset({"1", "L", "LA", "La"})


@dataclass(frozen=True)
class Limits:
    """Upload limits for one task.

    `max_input_pixels` caps the image the model gets (after an optional `max_side` shrink); SR's
    is smaller since its output is 16x the input. `max_decode_pixels` caps what is decoded at
    all, which matters only when `max_side` lets a larger upload shrink under the input cap;
    None means the same as `max_input_pixels`.
    """

    max_upload_bytes: int
    max_input_pixels: int
    max_decode_pixels: int | None = None

    @property
    def decode_pixels(self) -> int:
        return self.max_input_pixels if self.max_decode_pixels is None else self.max_decode_pixels


# eq=False: numpy arrays make field-wise equality ambiguous.
@dataclass(frozen=True, eq=False)
class NormalizedInput:
    pixels: np.ndarray  # uint8, HxW (gray) or HxWx3 (RGB)
    alpha: np.ndarray | None  # uint8 HxW, same frame as pixels
    icc_profile: bytes | None  # matches the pixels' colour space (GRAY or RGB)
    orientation_after: int  # EXIF orientation still to apply to the result (artifacts only)
    mask: np.ndarray | None  # bool HxW, same frame as pixels, True = fill (inpaint only)
    source_format: str  # Pillow's format name: "JPEG", "PNG", ...
    jpeg_quality: int | None  # estimated from the quantisation tables, JPEG sources only
    was_resized: bool  # True only when `max_side` shrank the image
    # The upload decodes (`imaging.decode_png`) to exactly `pixels`: a gray or RGB PNG with
    # nothing converted, turned or shrunk, so the next stage can read the upload itself.
    pixels_as_uploaded: bool = False


class InvalidInput(ValueError):
    """The upload cannot be processed; str(exc) is the user-facing reason."""


def normalize(
    image_bytes: bytes,
    *,
    task: Task,
    mask_bytes: bytes | None,
    max_side: int | None,
    limits: Limits,
) -> NormalizedInput:
    """Decode, validate and normalise an upload for `task`.

    EXIF orientation is applied, except for `artifacts`: JPEG artifact removal must see the
    pixels as stored so the 8x8 block grid stays aligned, and `orientation_after` carries the
    orientation to the result. Pixels are never resampled unless `max_side` is given and the
    long side exceeds it (LANCZOS shrink so the long side equals `max_side`). Masks are only read
    for `inpaint`.
    """
    if max_side is not None and max_side < 1:
        raise InvalidInput(f"max_side must be a positive number of pixels, got {max_side}")
    _check_bytes(image_bytes, limits, "image")
    with _opened(image_bytes, "image", limits, task) as img:
        stored_size = img.size
        target = shrunk_size(stored_size, max_side)
        _check_pixels(stored_size, target, task, max_side, limits)
        _load(img, "image")
        orientation = _exif_orientation(img)
        source_format = img.format or "unknown"
        plain_png = decodes_as_stored(source_format, img.mode, "transparency" in img.info)
        jpeg_quality = _jpeg_quality(img)
        pixels, alpha, icc_profile = _to_model_mode(img, img.info.get("icc_profile"))

    if task == "artifacts":
        orientation_after = orientation
    else:
        orientation_after = 1
        pixels = apply_orientation(pixels, orientation)
        alpha = None if alpha is None else apply_orientation(alpha, orientation)
        target = oriented_size(target, orientation)

    mask_gray = None
    if task == "inpaint":
        if mask_bytes is None:
            raise InvalidInput("inpaint needs a mask: an image the size of the photo, white = fill")
        mask_gray = _read_mask(mask_bytes, (pixels.shape[1], pixels.shape[0]), limits)

    was_resized = target != (pixels.shape[1], pixels.shape[0])
    if was_resized:
        pixels, alpha = _shrink(pixels, alpha, target)
        if mask_gray is not None:
            nearest = Image.Resampling.NEAREST  # keeps the mask binary-valued
            mask_gray = np.array(Image.fromarray(mask_gray).resize(target, nearest))

    mask = None
    if mask_gray is not None:
        mask = mask_gray >= 128
        if not mask.any():
            raise InvalidInput("the mask is empty: paint the area to fill in white")

    return NormalizedInput(
        pixels=pixels,
        alpha=alpha,
        icc_profile=icc_profile,
        orientation_after=orientation_after,
        mask=mask,
        source_format=source_format,
        jpeg_quality=jpeg_quality,
        was_resized=was_resized,
        pixels_as_uploaded=(
            plain_png and alpha is None and not was_resized
            and (orientation == 1 or task == "artifacts")
        ),
    )


# --------------------------------------------------------------------------- decoding


def _check_bytes(data: bytes, limits: Limits, what: str) -> None:
    if not data:
        raise InvalidInput(f"the {what} upload is empty")
    if len(data) > limits.max_upload_bytes:
        raise InvalidInput(
            f"the {what} is {_mib(len(data))}; the upload limit is {_mib(limits.max_upload_bytes)}"
        )


def _mib(n: int) -> str:
    return f"{n / 2**20:.1f} MiB" if n >= 2**20 else f"{n / 2**10:.1f} KiB"


def _accepted_formats() -> list[str]:
    Image.init()  # registers every plugin, so the filter below sees them all
    return [fmt for fmt in ACCEPTED_FORMATS if fmt in Image.OPEN]


@contextmanager
def _opened(data: bytes, what: str, limits: Limits, task: Task) -> Iterator[Image.Image]:
    """Open (parse headers only) with the format allowlist, mapping failures to InvalidInput."""
    with warnings.catch_warnings():
        # Pillow warns past MAX_IMAGE_PIXELS; our own per-task limit is checked instead.
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            img = Image.open(io.BytesIO(data), formats=_accepted_formats())
        except Image.DecompressionBombError as exc:
            # Pillow refuses at twice MAX_IMAGE_PIXELS before we can read the size ourselves.
            guard = megapixels(2 * (Image.MAX_IMAGE_PIXELS or 0))
            raise InvalidInput(
                f"the {what} is larger than {guard} (decompression-bomb guard); the limit for "
                f"{task} is {megapixels(limits.max_input_pixels)}"
            ) from exc
        except Image.UnidentifiedImageError as exc:
            accepted = ", ".join(ACCEPTED_FORMATS)
            raise InvalidInput(
                f"the {what} upload is not a recognised image (accepted: {accepted})"
            ) from exc
        except Exception as exc:  # plugins raise assorted errors on malformed headers
            raise InvalidInput(f"the {what} is corrupt: {exc}") from exc
    with img:
        yield img


def _load(img: Image.Image, what: str) -> None:
    """Decode every pixel now, so truncated or corrupt data fails here, not in a model."""
    try:
        img.load()
    except Exception as exc:  # OSError, SyntaxError, zlib.error, ... depending on the plugin
        raise InvalidInput(f"the {what} is corrupt or truncated: {exc}") from exc


def _check_pixels(
    size: tuple[int, int],
    target: tuple[int, int],
    task: Task,
    max_side: int | None,
    limits: Limits,
) -> None:
    """Reject from the header alone, before any pixel is decoded."""
    width, height = size
    described = f"{width}x{height} = {megapixels(width * height)}"
    if target != size:
        target_px = target[0] * target[1]
        described += f" ({target[0]}x{target[1]} = {megapixels(target_px)} at max_side {max_side})"
    if target[0] * target[1] > limits.max_input_pixels:
        raise InvalidInput(
            f"image is {described}; the limit for {task} is {megapixels(limits.max_input_pixels)}"
        )
    if width * height > limits.decode_pixels:
        raise InvalidInput(
            f"image is {described}; the limit for decoding an upload is "
            f"{megapixels(limits.decode_pixels)}"
        )


def _exif_orientation(img: Image.Image) -> int:
    try:
        value = img.getexif().get(_EXIF_ORIENTATION_TAG, 1)
    except Exception:  # a malformed EXIF block is no reason to reject the photo
        return 1
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


def _jpeg_quality(img: Image.Image) -> int | None:
    tables = getattr(img, "quantization", None)
    if img.format not in ("JPEG", "MPO") or not tables:
        return None
    try:
        return estimate_jpeg_quality(tables)
    except ValueError:
        return None


# --------------------------------------------------------------------------- colour modes


def _to_model_mode(
    img: Image.Image, icc_profile: bytes | None
) -> tuple[np.ndarray, np.ndarray | None, bytes | None]:
    """Convert any Pillow mode to uint8 gray (HxW) or RGB (HxWx3), with alpha set aside.

    The ICC profile is kept only when it describes the output's colour space.
    """
    mode = img.mode
    if mode in _HIGH_DEPTH_MODES:
        pixels = _high_depth_to_uint8(np.asarray(img), mode)
        return pixels, None, icc_profile if icc_matches_mode(icc_profile, "L") else None
    if mode == "CMYK":
        pixels, managed = _cmyk_to_rgb(img, icc_profile)
        # Colour-managed pixels are now sRGB; naive ones have no profile that describes them.
        return pixels, None, srgb_icc_profile() if managed else None

    gray = mode in _GRAY_MODES
    if mode == "1":  # convert to L first: "1" -> LA does not exist
        img = img.convert("L")
    has_alpha = mode in _ALPHA_MODES or "transparency" in img.info
    try:
        if has_alpha:
            arr = np.asarray(img.convert("LA" if gray else "RGBA"))
            pixels = np.ascontiguousarray(arr[..., 0] if gray else arr[..., :3])
            alpha: np.ndarray | None = np.ascontiguousarray(arr[..., -1])
        else:
            pixels = np.array(img.convert("L" if gray else "RGB"))
            alpha = None
    except ValueError as exc:  # e.g. LAB TIFFs: no direct conversion in Pillow
        raise InvalidInput(f"unsupported colour mode {mode}") from exc
    out_mode = "L" if gray else "RGB"
    return pixels, alpha, icc_profile if icc_matches_mode(icc_profile, out_mode) else None


def _high_depth_to_uint8(arr: np.ndarray, mode: str) -> np.ndarray:
    """Scale (never clip) 16-bit, 32-bit integer and float gray to 8 bits.

    16-bit and in-range 32-bit integers are divided by 257, which maps 0..65535 onto 0..255
    exactly. Floats in [0, 1] are scaled by 255 and floats in [0, 255] kept. Anything else has
    no declared range, so it is stretched from its own min..max.
    """
    values = np.nan_to_num(arr.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    lo, hi = (float(values.min()), float(values.max())) if values.size else (0.0, 0.0)
    if mode.startswith("I;16") or (mode == "I" and lo >= 0 and hi <= 65535):
        scaled = values / 257.0
    elif mode == "F" and lo >= 0 and hi <= 1.0:
        scaled = values * 255.0
    elif mode == "F" and lo >= 0 and hi <= 255.0:
        scaled = values
    else:
        scaled = (values - lo) * (255.0 / (hi - lo)) if hi > lo else np.zeros_like(values)
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def _cmyk_to_rgb(img: Image.Image, icc_profile: bytes | None) -> tuple[np.ndarray, bool]:
    """CMYK -> sRGB through the embedded profile when there is one, naively otherwise.

    Returns the pixels and whether the colour-managed path was taken.
    """
    if icc_colour_space(icc_profile) == "CMYK" and icc_profile is not None:
        try:
            from PIL import ImageCms

            source = ImageCms.ImageCmsProfile(io.BytesIO(icc_profile))
            srgb = ImageCms.createProfile("sRGB")
            converted = ImageCms.profileToProfile(img, source, srgb, outputMode="RGB")
            if converted is not None:
                return np.array(converted), True
        except Exception:  # a broken profile: fall back to Pillow's naive formula
            pass
    return np.array(img.convert("RGB")), False


# --------------------------------------------------------------------------- resizing and masks


def _shrink(
    pixels: np.ndarray, alpha: np.ndarray | None, size: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray | None]:
    """LANCZOS shrink to `size` (width, height); with alpha, resampled together so Pillow
    premultiplies and transparent pixels' colours do not bleed into visible ones."""
    if alpha is None:
        return np.array(Image.fromarray(pixels).resize(size, Image.Resampling.LANCZOS)), None
    stacked = Image.fromarray(np.dstack([pixels, alpha]), mode="LA" if pixels.ndim == 2 else "RGBA")
    arr = np.array(stacked.resize(size, Image.Resampling.LANCZOS))
    colour = arr[..., 0] if pixels.ndim == 2 else arr[..., :3]
    return np.ascontiguousarray(colour), np.ascontiguousarray(arr[..., -1])


def _read_mask(data: bytes, image_size: tuple[int, int], limits: Limits) -> np.ndarray:
    """Decode a mask to uint8 gray in its EXIF-oriented frame, sized like the image.

    Transparent mask pixels count as black (keep): a mask painted on a transparent canvas
    means "fill where painted".
    """
    _check_bytes(data, limits, "mask")
    width, height = image_size
    with _opened(data, "mask", limits, "inpaint") as img:
        mw, mh = img.size
        # The pixel count does not depend on orientation: a mismatch is certain before decoding.
        if mw * mh != width * height:
            raise InvalidInput(f"the mask is {mw}x{mh} but the image is {width}x{height}")
        _load(img, "mask")
        orientation = _exif_orientation(img)
        pixels, alpha, _ = _to_model_mode(img, None)
    if pixels.ndim == 3:
        pixels = np.array(Image.fromarray(pixels).convert("L"))
    if alpha is not None:
        pixels = (pixels.astype(np.uint16) * alpha // 255).astype(np.uint8)
    pixels = apply_orientation(pixels, orientation)
    if (pixels.shape[1], pixels.shape[0]) != (width, height):
        raise InvalidInput(
            f"the mask is {pixels.shape[1]}x{pixels.shape[0]} but the image is {width}x{height} "
            "(both after EXIF orientation)"
        )
    return pixels
