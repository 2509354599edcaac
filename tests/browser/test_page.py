"""The upload page in a real headless Chromium, against the embedded stack.

Each test ends with a screenshot under test-artifacts/. Images are small and the classic
models are picked, so every job takes about a second.
"""

from __future__ import annotations

import base64
import io
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage
from skimage import data

from shared.ml.registry import SHIPPED_WEIGHTS_DIR
from tests.browser.conftest import Restora

pytestmark = pytest.mark.browser
try:
    from playwright.sync_api import expect
except ImportError:  # the `chromium` fixture then skips, or fails under CI
    expect = None

JOB_TIMEOUT_MS = 60_000


def _photo(path: Path, width: int, height: int, noise: float = 0.0) -> Path:
    """A crop of scikit-image's astronaut, resized, optionally with Gaussian noise."""
    img = Image.fromarray(data.astronaut()).resize((width, height), Image.Resampling.LANCZOS)
    pixels = np.asarray(img).astype(np.float32)
    if noise:
        pixels += np.random.default_rng(7).normal(0.0, noise, pixels.shape)
    Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(path)
    return path


_GIVE_FILE_JS = """([how, name, type, b64]) => {
    const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
    const transfer = new DataTransfer();
    transfer.items.add(new File([bytes], name, { type }));
    if (how === "paste") {
        document.dispatchEvent(new ClipboardEvent("paste", { clipboardData: transfer }));
        return;
    }
    const target = document.getElementById("dropzone");
    for (const kind of ["dragenter", "dragover", "drop"]) {
        target.dispatchEvent(new DragEvent(kind, { dataTransfer: transfer, bubbles: true }));
    }
}"""


def _give_file(page: Any, how: str, path: Path, mime: str) -> None:
    """Hand the page a file the way a drop or a paste from the clipboard does."""
    payload = base64.b64encode(path.read_bytes()).decode()
    page.evaluate(_GIVE_FILE_JS, [how, path.name, mime, payload])


def _open(page: Any, photo: Path, task: str, how: str = "picker") -> None:
    page.goto("/")
    if how == "picker":
        page.set_input_files("#file-input", str(photo))
    else:
        _give_file(page, how, photo, "image/png")
    expect(page.locator("#file-info")).to_contain_text(" px")
    page.locator(f"input[name=task][value={task}]").check()
    page.select_option("#model", "classic")  # fast on any machine, and always shipped


def _wait_done(page: Any) -> None:
    expect(page.locator("#result-card")).to_be_visible(timeout=JOB_TIMEOUT_MS)
    expect(page.locator("#stages li[data-stage=done]")).to_have_class(re.compile(r"\breached\b"))
    # Asserted from Playwright's own world: a polled string predicate would be an eval, which
    # the page's Content-Security-Policy refuses (and reports as a page error).
    for image in ("#before-img", "#after-img"):
        expect(page.locator(image)).to_have_js_property("complete", True)
        expect(page.locator(image)).not_to_have_js_property("naturalWidth", 0)


def _job_id(page: Any) -> str:
    return page.evaluate("JSON.parse(localStorage.getItem('restora.recentJobs'))[0].id")


def _clip_left(page: Any) -> float:
    clip = page.eval_on_selector("#after-img", "img => img.style.clipPath")
    return float(re.search(r"inset\(0(?:px)? 0(?:px)? 0(?:px)? ([\d.]+)px\)", clip).group(1))


def _decode(raw: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(raw)) as img:
        return np.asarray(img.convert("RGB")).astype(np.int16)


def test_desktop_denoise_compare_and_download(
    desktop_page: Any, tmp_path: Path, artifact: Any
) -> None:
    page = desktop_page
    _open(page, _photo(tmp_path / "noisy.png", 128, 96, noise=20.0), "denoise")
    expect(page.locator("#file-info")).to_contain_text("128 × 96 px · PNG")
    page.click("#submit")
    _wait_done(page)
    expect(page.locator("#job-status")).to_contain_text("Done")
    expect(page.locator("#result-info")).to_contain_text("128 × 96 px")

    # The slider moves with the keyboard and by dragging the divider's handle.
    page.focus("#compare")
    page.keyboard.press("ArrowRight")
    assert page.input_value("#compare") == "51"
    start = _clip_left(page)
    viewer = page.locator("#viewer").bounding_box()
    handle = page.locator(".divider-handle").bounding_box()
    page.mouse.move(handle["x"] + handle["width"] / 2, handle["y"] + handle["height"] / 2)
    page.mouse.down()
    page.mouse.move(viewer["x"] + viewer["width"] * 0.3, handle["y"], steps=5)
    page.mouse.up()
    assert int(page.input_value("#compare")) == pytest.approx(30, abs=1)
    assert _clip_left(page) < start

    with page.expect_download() as info:
        page.click("#download")
    download = info.value
    saved = tmp_path / download.suggested_filename
    download.save_as(saved)
    with Image.open(saved) as result:
        assert (result.format, result.size) == ("PNG", (128, 96))
    assert saved.suffix == ".png"
    expect(page.locator("#recent-list li")).to_have_count(1)
    page.screenshot(path=artifact("desktop-denoise"), full_page=True)


def _touch_stroke(page: Any, points: list[tuple[float, float]]) -> None:
    """A one-finger stroke through real touch events (Playwright's touchscreen only taps)."""
    cdp = page.context.new_cdp_session(page)

    def touch(kind: str, point: tuple[float, float] | None) -> None:
        touches = [] if point is None else [{"x": point[0], "y": point[1], "id": 1}]
        cdp.send("Input.dispatchTouchEvent", {"type": kind, "touchPoints": touches})

    touch("touchStart", points[0])
    for point in points[1:]:
        touch("touchMove", point)
    touch("touchEnd", None)
    cdp.detach()


def test_phone_inpaint_with_touch(
    phone_page: Any, restora: Restora, tmp_path: Path, artifact: Any
) -> None:
    page = phone_page
    width, height = 160, 120
    photo = _photo(tmp_path / "photo.png", width, height)
    _open(page, photo, "inpaint")
    canvas = page.locator("#mask-canvas")
    expect(canvas).to_be_visible()
    expect(page.locator("#submit")).to_be_disabled()  # nothing painted yet
    canvas.scroll_into_view_if_needed()
    box = canvas.bounding_box()
    y = box["y"] + box["height"] * 0.5
    xs = np.linspace(box["x"] + box["width"] * 0.3, box["x"] + box["width"] * 0.7, 12)
    _touch_stroke(page, [(float(x), y) for x in xs])
    expect(page.locator("#mask-undo")).to_be_enabled()
    # Chrome's gesture recogniser takes a tap that comes within a few hundred ms of the end
    # of a touch sequence as part of that gesture and sends no click: a person's finger is
    # never that quick, so the test waits as a person would.
    page.wait_for_timeout(1500)
    page.locator("#submit").tap()
    _wait_done(page)

    # The mask went up binary, at the photo's own size, with the stroke where it was drawn.
    job_id = _job_id(page)
    with Image.open(io.BytesIO(restora.stored_mask(job_id))) as mask_img:
        assert mask_img.format == "PNG" and mask_img.size == (width, height)
        raw = np.asarray(mask_img)
    assert set(np.unique(raw)) <= {0, 255}, "the mask has grey (antialiased) pixels"
    mask = np.asarray(Image.fromarray(raw).convert("L")) > 127
    rows, cols = np.nonzero(mask)
    assert abs(rows.mean() - height * 0.5) < 3
    assert cols.min() < width * 0.3 and cols.max() > width * 0.7
    assert mask.mean() < 0.25

    # The result differs from the original only under (or right at the edge of) the stroke.
    job = restora.get_json(f"/api/v1/jobs/{job_id}")
    assert job["state"] == "done" and job["task"] == "inpaint"
    original = _decode(restora.get_bytes(job["original_url"]))
    result = _decode(restora.get_bytes(job["result_url"]))
    assert original.shape == result.shape == (height, width, 3)
    changed = np.abs(result - original).max(axis=2) > 2
    assert changed[mask].mean() > 0.3, "the painted region was not filled"
    near_stroke = ndimage.binary_dilation(mask, iterations=2)
    assert not changed[~near_stroke].any(), "pixels away from the stroke changed"
    # Nothing is wider than the phone's screen.
    assert page.evaluate("document.documentElement.scrollWidth") <= 375
    page.screenshot(path=artifact("phone-inpaint"), full_page=True)


def test_non_image_upload_shows_the_reason(
    desktop_page: Any, tmp_path: Path, artifact: Any
) -> None:
    page = desktop_page
    notes = tmp_path / "notes.txt"
    notes.write_text("not a photo at all\n" * 20)
    page.goto("/")
    _give_file(page, "paste", notes, "text/plain")
    expect(page.locator("#file-info")).to_contain_text("cannot show it")
    page.click("#submit")
    error = page.locator("#form-error")
    expect(error).to_be_visible()
    expect(error).to_contain_text("not an image Restora can read")
    expect(page.locator("#job-card")).to_be_hidden()
    page.screenshot(path=artifact("non-image-error"), full_page=True)


def test_superres_shows_4x_size_and_compares(
    desktop_page: Any, tmp_path: Path, artifact: Any
) -> None:
    page = desktop_page
    _open(page, _photo(tmp_path / "small.png", 64, 48), "superres", how="drop")
    # ESRGAN offers the 8-pass ensemble; bicubic does not, and its row hides (and unticks).
    page.select_option("#model", "classic")
    expect(page.locator("#ensemble-row")).to_be_hidden()
    page.select_option("#model", "esrgan")
    # The strength slider follows the registry: shown only where GAN weights are installed.
    gan_shipped = (SHIPPED_WEIGHTS_DIR / "esrgan-gan.safetensors").is_file()
    strength_row = page.locator("#strength-row")
    if gan_shipped:
        expect(strength_row).to_be_visible()
    else:
        expect(strength_row).to_be_hidden()
    page.check("#ensemble")
    page.click("#submit")
    _wait_done(page)
    info = page.locator("#result-info")
    expect(info).to_contain_text("64 × 48 → 256 × 192 px")
    expect(info).to_contain_text("4× larger")
    expect(info).to_contain_text("8-pass ensemble")
    sizes = page.evaluate(
        "['before-img', 'after-img'].map(id => { const img = document.getElementById(id);"
        " const r = img.getBoundingClientRect();"
        " return [img.naturalWidth, img.naturalHeight, r.width, r.height]; })"
    )
    (bw, bh, bdw, bdh), (aw, ah, adw, adh) = sizes
    assert (bw, bh, aw, ah) == (64, 48, 256, 192)
    assert (bdw, bdh) == pytest.approx((adw, adh))  # before is shown at the result's scale

    page.click("#zoom-100")
    expect(page.locator("#zoom-level")).to_have_text("100%")
    stage = page.locator("#stage").bounding_box()
    assert (stage["width"], stage["height"]) == pytest.approx((256, 192), abs=0.5)

    # Zoomed past the viewport, dragging pans, and the split follows the slider.
    viewer = page.locator("#viewer")
    viewer.focus()
    for _ in range(5):
        page.keyboard.press("+")
    before_pan = page.locator("#stage").bounding_box()
    vb = viewer.bounding_box()
    page.mouse.move(vb["x"] + vb["width"] * 0.8, vb["y"] + vb["height"] * 0.3)
    page.mouse.down()
    page.mouse.move(vb["x"] + vb["width"] * 0.6, vb["y"] + vb["height"] * 0.5, steps=4)
    page.mouse.up()
    after_pan = page.locator("#stage").bounding_box()
    assert after_pan["x"] != pytest.approx(before_pan["x"], abs=1)
    clip = _clip_left(page)
    page.focus("#compare")
    page.keyboard.press("End")
    assert _clip_left(page) > clip
    page.keyboard.press("Home")
    assert _clip_left(page) < clip
    page.eval_on_selector("#compare", "e => { e.value = 50; e.dispatchEvent(new Event('input')); }")
    viewer.focus()
    page.keyboard.press("0")
    page.locator("#download").focus()
    page.screenshot(path=artifact("superres-compare"), full_page=True)


def test_failed_job_shows_the_reason(desktop_page: Any, tmp_path: Path, artifact: Any) -> None:
    page = desktop_page
    # Over the super-resolution input cap (4 MP): the upload is accepted, preprocess fails it.
    big = tmp_path / "big.png"
    Image.new("RGB", (2100, 2100), (120, 130, 140)).save(big)
    _open(page, big, "superres")
    page.click("#submit")
    error = page.locator("#job-error")
    expect(error).to_be_visible(timeout=JOB_TIMEOUT_MS)
    expect(error).to_contain_text("the limit for superres is 4.0 MP")
    expect(page.locator("#stages li[data-stage=done]")).to_contain_text("Failed")
    expect(page.locator("#result-card")).to_be_hidden()
    expect(page.locator("#cancel")).to_be_hidden()
    expect(page.locator("#recent-list li").first).to_contain_text("failed")
    page.screenshot(path=artifact("failed-job"), full_page=True)


def test_push_back_is_explained_and_the_photo_can_be_shrunk_to_fit(
    desktop_page: Any, tmp_path: Path, artifact: Any
) -> None:
    """The gateway's 413 for a costly job and 503 for a full queue, played by a route: the page
    says what happened, offers the max_side that fits, and waits out the Retry-After."""
    page = desktop_page
    posts: list[bytes] = []
    costly = {"error": "this job would cost about 72 work units", "limit": "job cost",
              "setting": "RESTORA_MAX_JOB_COST", "cost": 72.4, "max_cost": 60, "max_side": 100}
    busy = {"error": "Restora is busy: 250 denoise jobs are waiting (the limit is 200); "
            "try again in 3 s", "limit": "queue depth", "retry_after_s": 3}

    def answer(route: Any) -> None:
        if route.request.method != "POST":
            route.continue_()
            return
        posts.append(route.request.post_data_buffer or b"")
        if len(posts) == 1:
            route.fulfill(status=413, json=costly)
        elif len(posts) == 2:
            route.fulfill(status=503, json=busy, headers={"Retry-After": "3"})
        else:
            route.continue_()

    page.route("**/api/v1/jobs", answer)
    _open(page, _photo(tmp_path / "photo.png", 128, 96), "denoise")
    page.click("#submit")
    error = page.locator("#form-error")
    expect(error).to_contain_text("too much work for one job")
    expect(error).to_contain_text("72 work units; this server allows 60 per job")
    shrink = page.locator("#shrink-and-restore")
    expect(shrink).to_have_text("Shrink to 100 px and restore")
    page.screenshot(path=artifact("push-back-cost"), full_page=True)

    shrink.click()
    expect(error).to_contain_text("Restora is busy right now")
    expect(error).to_contain_text("250 denoise jobs are waiting")
    expect(page.locator("#submit")).to_be_disabled()
    expect(page.locator("#submit-hint")).to_contain_text("try again in")
    page.screenshot(path=artifact("push-back-busy"), full_page=True)

    expect(page.locator("#submit")).to_be_enabled(timeout=10_000)  # after the Retry-After
    page.click("#submit")
    _wait_done(page)
    assert len(posts) == 3
    assert b'name="max_side"' not in posts[0]
    assert all(b'name="max_side"\r\n\r\n100\r\n' in body for body in posts[1:])
    expect(page.locator("#result-info")).to_contain_text("100 × 75 px")

def test_a_job_is_private_to_the_browser_that_made_it(
    desktop_page: Any, chromium: Any, restora: Restora, tmp_path: Path, artifact: Any
) -> None:
    page = desktop_page
    _open(page, _photo(tmp_path / "private.png", 64, 48, noise=20.0), "denoise")
    page.click("#submit")
    _wait_done(page)
    entry = page.evaluate("JSON.parse(localStorage.getItem('restora.recentJobs'))[0]")
    job_id, token = entry["id"], entry["token"]
    assert token and token != job_id
    # This browser keeps its token with the job: after a reload it still opens it.
    page.reload()
    recent = page.locator("#recent-list li").first
    expect(recent).to_contain_text("done")
    expect(recent.locator("img")).to_be_visible()

    # Another browser (a fresh context: no localStorage) that knows only the id.
    context = chromium.new_context(base_url=restora.url)
    try:
        other = context.new_page()
        for method, path in (("get", ""), ("get", "/events"), ("delete", "")):
            response = getattr(other.request, method)(f"/api/v1/jobs/{job_id}{path}")
            assert response.status == 404, (method, path)
            assert job_id not in response.text()
        # Even planted in its recent list, the id alone opens nothing.
        other.goto("/")
        other.evaluate(
            "(e) => localStorage.setItem('restora.recentJobs', JSON.stringify([e]))",
            {key: value for key, value in entry.items() if key != "token"},
        )
        other.reload()
        expect(other.locator("#recent-list li").first).to_contain_text("expired")
        expect(other.locator("#recent-list li img")).to_have_count(0)
        other.screenshot(path=artifact("private-job-other-browser"), full_page=True)
        # The token is what opens it.
        owner = {"Authorization": f"Bearer {token}"}
        assert other.request.get(f"/api/v1/jobs/{job_id}", headers=owner).status == 200
    finally:
        context.close()
    assert restora.get_json(f"/api/v1/jobs/{job_id}")["state"] == "done"  # untouched
