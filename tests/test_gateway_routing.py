"""The gateway's first hop: a PNG preprocess would pass on unchanged goes straight to its model
(pure: header facts in, a request or None out; no servers)."""

from __future__ import annotations

import io
from collections.abc import Callable

import numpy as np
import pytest
from PIL import Image, ImageCms

from services.gateway.routing import StraightToModel, straight_to_model
from services.gateway.uploads import UploadedFile, sniff_image
from shared.platform.config import GatewaySettings, InputLimitSettings
from shared.platform.messages import JobOptions

UPLOAD_KEY = "uploads/job-1"
SUBMITTED_AT = 1_700_000_000.0


def _encoded(image: Image.Image, fmt: str = "PNG", **options: object) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt, **options)
    return buf.getvalue()


def _rgb(width: int = 40, height: int = 24) -> Image.Image:
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def _sniffed(data: bytes) -> UploadedFile:
    upload = UploadedFile(io.BytesIO(data), len(data), "image/png")
    sniff_image(upload, "image")
    return upload


def _route(data: bytes, task: str = "denoise", options: JobOptions | None = None,
           limits: InputLimitSettings | None = None) -> StraightToModel | None:
    return straight_to_model("job-1", task, options or JobOptions("mwcnn"), _sniffed(data),
                             UPLOAD_KEY, SUBMITTED_AT, limits or GatewaySettings())


def test_a_plain_rgb_png_goes_straight_to_its_model_with_the_upload_as_input() -> None:
    straight = _route(_encoded(_rgb()), options=JobOptions("mwcnn", sigma=25))
    assert straight is not None
    request = straight.request
    assert (request.job_id, request.task, request.input_key) == ("job-1", "denoise", UPLOAD_KEY)
    assert request.options == JobOptions("mwcnn", sigma=25)
    assert (request.mask_key, request.alpha_key, request.icc_key) == (None, None, None)
    assert (request.orientation_after, request.source_format) == (1, "PNG")
    assert request.submitted_at == SUBMITTED_AT and request.steps == []
    assert straight.input_facts == {"width": 40, "height": 24, "format": "PNG",
                                    "resized": False, "jpeg_quality": None}


def test_a_gray_png_and_a_chain_go_straight_too() -> None:
    gray = Image.fromarray(np.zeros((16, 24), np.uint8))
    assert _route(_encoded(gray)) is not None
    chain = _route(_encoded(_rgb()), task="denoise,superres")
    assert chain is not None
    assert chain.request.task == "denoise" and chain.request.steps == ["denoise", "superres"]


def _with_icc() -> bytes:
    profile = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    return _encoded(_rgb(), icc_profile=profile)


def _rotated() -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 6
    return _encoded(_rgb(), exif=exif.tobytes())


NORMALISED_BY_PREPROCESS: dict[str, Callable[[], bytes]] = {
    "jpeg": lambda: _encoded(_rgb(), "JPEG", quality=90),
    "rgba": lambda: _encoded(_rgb().convert("RGBA")),
    "palette": lambda: _encoded(_rgb().convert("P")),
    "rgb with a transparent colour": lambda: _encoded(_rgb(), transparency=(0, 0, 0)),
    "16-bit gray": lambda: _encoded(Image.fromarray(np.zeros((16, 24), np.uint16))),
    "colour profile": _with_icc,
    "exif orientation": _rotated,
}


@pytest.mark.parametrize("case", sorted(NORMALISED_BY_PREPROCESS))
def test_what_preprocess_would_change_goes_through_preprocess(case: str) -> None:
    assert _route(NORMALISED_BY_PREPROCESS[case]()) is None


def test_auto_inpainting_and_a_shrinking_max_side_go_through_preprocess() -> None:
    png = _encoded(_rgb(40, 24))
    assert _route(png, task="auto") is None  # it chooses its steps from the pixels
    assert _route(png, task="inpaint") is None  # the mask is normalised too
    assert _route(png, options=JobOptions("mwcnn", max_side=32)) is None
    assert _route(png, options=JobOptions("mwcnn", max_side=40)) is not None  # nothing to shrink


def test_an_image_over_a_steps_pixel_limit_goes_to_preprocess_to_be_refused_by_name() -> None:
    png = _encoded(_rgb(40, 24))  # 960 pixels
    tight = GatewaySettings(max_pixels_superres=959)
    assert _route(png, task="superres", limits=tight) is None
    assert _route(png, task="denoise,superres", limits=tight) is None
    assert _route(png, task="denoise", limits=tight) is not None
    assert _route(png, task="superres", limits=GatewaySettings(max_pixels_superres=960))
