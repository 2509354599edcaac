"""Several photos at once on the page: a batch with a grid, one zip, and the `auto` fix.

Images are small and the classic models are picked, so every job takes about a second.
"""

from __future__ import annotations

import base64
import io
import json
import re
import zipfile
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from tests.browser.test_page import JOB_TIMEOUT_MS, _photo, _wait_done

pytestmark = pytest.mark.browser
try:
    from playwright.sync_api import expect
except ImportError:  # the `chromium` fixture then skips, or fails under CI
    expect = None

SIZES = [(96, 64), (64, 96), (120, 80), (80, 80), (72, 48)]

_DROP_FILES_JS = """(files) => {
    const transfer = new DataTransfer();
    for (const [name, b64] of files) {
        const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
        transfer.items.add(new File([bytes], name, { type: "image/png" }));
    }
    const target = document.getElementById("dropzone");
    for (const kind of ["dragenter", "dragover", "drop"]) {
        target.dispatchEvent(new DragEvent(kind, { dataTransfer: transfer, bubbles: true }));
    }
}"""


def _photos(tmp_path: Path) -> list[Path]:
    return [_photo(tmp_path / f"photo-{i}.png", w, h, noise=15.0) for i, (w, h) in enumerate(SIZES)]


def _restore_the_five(page: Any, photos: list[Path]) -> None:
    """The 5 photos just given to the page, denoised (classic) as one batch until all are done."""
    expect(page.locator("#file-info")).to_contain_text("5 photos")
    expect(page.locator("#file-list li")).to_have_count(5)
    page.locator("input[name=task][value=denoise]").check()
    page.select_option("#model", "classic")
    expect(page.locator("#submit")).to_have_text("Restore 5 photos")
    page.click("#submit")
    _wait_batch_done(page, 5)
    expect(page.locator("#batch-counts")).to_contain_text("5 of 5 done")
    expect(page.locator("#batch-grid li .batch-name")).to_have_text([p.name for p in photos])


def _wait_batch_done(page: Any, count: int) -> None:
    grid = page.locator("#batch-grid li")
    expect(grid).to_have_count(count)
    expect(page.locator("#batch-grid li[data-state=done]")).to_have_count(
        count, timeout=JOB_TIMEOUT_MS
    )
    expect(page.locator("#batch-download")).to_be_enabled()


def _check_cards(page: Any) -> None:
    """Every card's thumbnail keeps its 4:3 box, whatever the photo's shape, above the name."""
    for card in page.locator("#batch-grid li").all():
        thumb = card.locator(".thumb").bounding_box()
        name = card.locator(".batch-name").bounding_box()
        assert abs(thumb["height"] - thumb["width"] * 3 / 4) <= 1, thumb
        assert name["y"] >= thumb["y"] + thumb["height"] - 1, (thumb, name)


def _check_zip(raw: bytes, photos: list[Path]) -> None:
    with zipfile.ZipFile(io.BytesIO(raw)) as archive:
        names = archive.namelist()
        assert "manifest.json" in names
        images = sorted(n for n in names if n != "manifest.json")
        assert len(images) == len(photos)
        manifest = json.loads(archive.read("manifest.json"))
        assert [job["state"] for job in manifest["jobs"]] == ["done"] * len(photos)
        for photo, (w, h) in zip(photos, SIZES, strict=True):
            (entry,) = [n for n in images if re.fullmatch(rf"\d+-{photo.stem}\.png", n)]
            with Image.open(io.BytesIO(archive.read(entry))) as img:
                assert img.size == (w, h)


def test_five_photos_make_a_batch_with_one_zip(
    desktop_page: Any, tmp_path: Path, artifact: Any
) -> None:
    page = desktop_page
    photos = _photos(tmp_path)
    page.goto("/")
    page.set_input_files("#file-input", [str(p) for p in photos])
    _restore_the_five(page, photos)

    with page.expect_download() as info:
        page.click("#batch-download")
    download = info.value
    saved = tmp_path / "batch.zip"
    download.save_as(saved)
    assert download.suggested_filename.endswith(".zip")
    _check_zip(saved.read_bytes(), photos)
    page.screenshot(path=artifact("desktop-batch"), full_page=True)

    # A reload brings the grid back from localStorage, with fresh links from the API.
    page.reload()
    _wait_batch_done(page, 5)
    expect(page.locator("#batch-grid li .batch-name")).to_have_text([p.name for p in photos])
    page.wait_for_function(
        "[...document.querySelectorAll('#batch-grid img')].filter("
        "img => img.complete && img.naturalWidth > 0).length === 5"
    )
    with page.expect_download() as info:
        page.click("#batch-download")
    _check_zip(Path(info.value.path()).read_bytes(), photos)

    # Forgetting the batch hides the grid, and it stays hidden after a reload.
    page.click("#batch-forget")
    expect(page.locator("#batch-card")).to_be_hidden()
    page.reload()
    expect(page.locator("#recent-card")).to_be_visible()
    expect(page.locator("#batch-card")).to_be_hidden()


def test_dropping_five_photos_at_once_makes_a_batch_with_one_zip(
    desktop_page: Any, tmp_path: Path, artifact: Any
) -> None:
    """One drop of 5 photos; the server's first answer is a 503 with Retry-After, which is waited.

    All 5 end done in the grid, and "Download all" gives a zip of 5 images of their own sizes.
    """
    page = desktop_page
    photos = _photos(tmp_path)
    refused: list[str] = []

    def busy_once(route: Any) -> None:
        if route.request.method == "POST" and not refused:
            refused.append(route.request.url)
            route.fulfill(
                status=503,
                headers={"Retry-After": "1"},
                json={"error": "restora is busy: too much work is waiting"},
            )
        else:
            route.continue_()

    page.route("**/api/v1/jobs", busy_once)
    page.goto("/")
    payload = [[p.name, base64.b64encode(p.read_bytes()).decode()] for p in photos]
    page.evaluate(_DROP_FILES_JS, payload)
    _restore_the_five(page, photos)
    page.wait_for_function(
        "[...document.querySelectorAll('#batch-grid img')].filter("
        "img => img.complete && img.naturalWidth > 0).length === 5"
    )
    _check_cards(page)
    assert len(refused) == 1

    with page.expect_download() as info:
        page.click("#batch-download")
    assert info.value.suggested_filename.endswith(".zip")
    _check_zip(Path(info.value.path()).read_bytes(), photos)
    page.screenshot(path=artifact("desktop-batch-drop"), full_page=True)


def test_auto_on_a_jpeg_says_what_it_chose(
    desktop_page: Any, tmp_path: Path, artifact: Any
) -> None:
    page = desktop_page
    png = _photo(tmp_path / "source.png", 128, 96)
    jpeg = tmp_path / "blocky.jpg"
    with Image.open(png) as img:
        img.save(jpeg, quality=20)
    page.goto("/")
    page.set_input_files("#file-input", str(jpeg))
    expect(page.locator("#file-info")).to_contain_text("128 × 96 px · JPEG")
    page.locator("input[name=task][value=auto]").check()
    expect(page.locator("#model option")).not_to_have_count(0)
    page.select_option("#model", "classic")
    page.click("#submit")
    _wait_done(page)
    job_id = page.evaluate("JSON.parse(localStorage.getItem('restora.recentJobs'))[0].id")
    token = page.evaluate("JSON.parse(localStorage.getItem('restora.recentJobs'))[0].token")
    doc = page.evaluate(
        "async ([id, token]) => (await fetch(`/api/v1/jobs/${id}`,"
        " { headers: { Authorization: `Bearer ${token}` } })).json()",
        [job_id, token],
    )
    assert doc["task"] == "auto"
    chosen = doc.get("auto") or (doc.get("details") or {}).get("auto")
    assert chosen and "artifacts" in chosen["chain"], chosen  # a quality-20 JPEG
    expect(page.locator("#auto-choice")).to_contain_text("Auto chose: Remove JPEG artifacts")
    expect(page.locator("#auto-choice")).to_contain_text("JPEG quality")
    expect(page.locator("#recent-list li").first).to_contain_text("Fix everything (auto)")
    page.screenshot(path=artifact("desktop-auto"), full_page=True)


def test_a_chain_is_offered_and_runs(desktop_page: Any, tmp_path: Path) -> None:
    page = desktop_page
    page.goto("/")
    page.set_input_files("#file-input", str(_photo(tmp_path / "one.png", 96, 64, noise=15.0)))
    expect(page.locator("#file-info")).to_contain_text(" px")
    page.locator("input[name=task][value='artifacts,denoise']").check()
    page.select_option("#model", "classic")
    page.click("#submit")
    _wait_done(page)
    expect(page.locator("#result-info")).to_contain_text("96 × 64 px")
