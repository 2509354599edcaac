"""The realistic-input SR benchmark (`benchmarks/tasks/superres_real.py`): fixed inputs per image,
the GAN stage's degradations, both score views, and its cache."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from skimage import data as skdata

from benchmarks import harness
from benchmarks.tasks import superres_real
from training import sr_degradations


def _hr() -> np.ndarray:
    return skdata.astronaut()[:64, :96]


def test_each_image_gets_its_own_fixed_degraded_input() -> None:
    hr = _hr()
    seed = superres_real.image_seed("kodim01")
    assert seed == superres_real.image_seed("kodim01") != superres_real.image_seed("kodim02")
    lr = superres_real.realistic_lr(hr, seed)
    assert lr.shape == (16, 24, 3) and lr.dtype == np.uint8
    assert np.array_equal(lr, superres_real.realistic_lr(hr, seed))
    assert not np.array_equal(lr, superres_real.realistic_lr(hr, seed + 1))


def test_every_step_of_the_gan_stage_is_applied_with_the_drawn_parameters(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`drawn` names what `degrade` really drew: blur, noise and JPEG, in that order."""
    calls: list[tuple[str, Any]] = []

    def spy(name: str, original: Any, arg: int) -> Any:
        def wrapper(*args: Any) -> Any:
            calls.append((name, args[arg] if name != "noise" else (args[1], args[2])))
            return original(*args)

        return wrapper

    monkeypatch.setattr(sr_degradations, "gaussian_blur",
                        spy("blur", sr_degradations.gaussian_blur, 1))
    monkeypatch.setattr(sr_degradations, "add_noise", spy("noise", sr_degradations.add_noise, 1))
    monkeypatch.setattr(sr_degradations, "jpeg_compress",
                        spy("jpeg", sr_degradations.jpeg_compress, 1))
    for seed in (3, 8, 11):
        calls.clear()
        superres_real.realistic_lr(_hr(), seed)
        draw = superres_real.drawn(seed, _hr().shape)
        assert calls == [("blur", draw.blur_sigma), ("noise", (draw.noise_sigma, draw.gray_noise)),
                         ("jpeg", draw.jpeg_quality)]
        low, high = superres_real.CONFIG.jpeg_quality
        assert low <= draw.jpeg_quality <= high and "JPEG Q" in str(draw)


def test_scores_y_and_rgb_and_refuses_a_wrong_size() -> None:
    hr = _hr()
    sample = {"hr": hr}
    perfect = superres_real.score(sample, hr)
    assert set(perfect) == {"psnr", "ssim", "rgb_psnr", "rgb_ssim"}
    assert perfect["rgb_psnr"] == np.inf and perfect["ssim"] == pytest.approx(1.0)
    shifted = np.clip(hr.astype(int) + np.array([12, 0, 0]), 0, 255).astype(np.uint8)
    colour = superres_real.score(sample, shifted)
    assert colour["rgb_psnr"] < colour["psnr"]  # a red cast shows more on RGB than on Y
    with pytest.raises(ValueError, match="4×"):
        superres_real.score(sample, hr[:32])
    assert harness.format_value("rgb_psnr", 23.456) == "23.46"
    assert harness.format_value("rgb_ssim", 0.51234) == "0.5123"


def test_quality_command_caches_every_row(tmp_path: Path) -> None:
    from benchmarks import quality

    folder = tmp_path / "data/testsets/Kodak24"
    folder.mkdir(parents=True)
    Image.fromarray(skdata.astronaut()).save(folder / "kodim99.png")
    args = ["--task", "superres-real", "--data", str(tmp_path / "data"), "--models", "classic",
            "--cache-dir", str(tmp_path / "cache"), "--quiet", "--json", str(tmp_path / "a.json")]
    assert quality.main(args) == 0
    first = json.loads((tmp_path / "a.json").read_text())["rows"][0]
    assert first["computed_images"] == 1 and 15 < first["mean"][superres_real.COLUMN]["psnr"] < 40
    assert quality.main(args) == 0
    again = json.loads((tmp_path / "a.json").read_text())["rows"][0]
    assert again["cached_images"] == 1 and again["computed_images"] == 0
    assert again["mean"] == first["mean"]
