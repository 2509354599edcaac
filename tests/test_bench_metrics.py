"""The benchmark's metric recipes and machinery on synthetic data (no shared data needed)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from skimage import data as skdata
from skimage.metrics import structural_similarity

from benchmarks import harness, metrics
from benchmarks.dncnn import DnCNN, run_dncnn
from benchmarks.tasks.common import Options, model_limits
from training.degradations import add_gaussian_noise


def _pair(seed: int = 0, shape: tuple[int, ...] = (48, 64)) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    ref = rng.integers(0, 256, shape).astype(np.uint8)
    out = np.clip(ref + rng.normal(0, 8, shape), 0, 255).round().astype(np.uint8)
    return ref, out


def test_psnr_of_a_known_error() -> None:
    ref = np.zeros((10, 10), np.uint8)
    assert metrics.psnr(ref, ref + 1) == pytest.approx(20 * math.log10(255), abs=1e-12)
    assert metrics.psnr(ref, ref) == math.inf


def test_psnr_border_shave_ignores_the_border() -> None:
    ref = np.full((20, 20), 100, np.uint8)
    out = ref.copy()
    out[:4] = 0
    out[:, -4:] = 255
    assert metrics.psnr(ref, out, border=4) == math.inf
    assert metrics.psnr(ref, out) < 20


def test_psnr_is_float64_and_rejects_shape_mismatch() -> None:
    ref, out = _pair()
    expected = 10 * np.log10(255**2 / np.mean((ref.astype(float) - out) ** 2))
    assert metrics.psnr(ref, out) == pytest.approx(expected, abs=1e-12)
    with pytest.raises(ValueError, match="shapes differ"):
        metrics.psnr(ref, out[:-1])


def test_ssim_uses_the_matlab_settings() -> None:
    ref, out = _pair()
    matlab_like = structural_similarity(
        ref.astype(float), out.astype(float), gaussian_weights=True, sigma=1.5,
        use_sample_covariance=False, data_range=255,
    )  # fmt: skip
    default = structural_similarity(ref.astype(float), out.astype(float), data_range=255)
    assert metrics.ssim(ref, out) == pytest.approx(matlab_like, abs=1e-12)
    assert abs(metrics.ssim(ref, out) - default) > 1e-4  # the default recipe is not the one
    assert metrics.ssim(ref, ref) == pytest.approx(1.0)


def test_colour_ssim_is_the_channel_mean() -> None:
    ref, out = _pair(shape=(40, 40, 3))
    per_channel = [metrics.ssim(ref[..., c], out[..., c]) for c in range(3)]
    assert metrics.ssim(ref, out) == pytest.approx(np.mean(per_channel), abs=1e-12)


def test_luma_is_matlab_rgb2ycbcr_unrounded() -> None:
    rgb = np.array([[[0, 0, 0], [255, 255, 255], [255, 0, 0]]], np.uint8)
    y = metrics.luma(rgb)
    assert y.dtype == np.float64
    np.testing.assert_allclose(y[0], [16.0, 235.0, 16 + 65.481], atol=1e-12)
    gray = np.array([[3, 200]], np.uint8)
    np.testing.assert_array_equal(metrics.luma(gray), [[3.0, 200.0]])


def test_round_luma_rounds_halves_up() -> None:
    # Y = 16 + 128.553·G/255 + …: pick pixels whose Y lands near .5 and compare with floor(+.5)
    rgb = np.random.default_rng(1).integers(0, 256, (32, 32, 3)).astype(np.uint8)
    expected = np.floor(metrics.luma(rgb) + 0.5).astype(np.uint8)
    np.testing.assert_array_equal(metrics.round_luma(rgb), expected)


def test_y_psnr_ssim_shaves_and_scores_y() -> None:
    ref, _ = _pair(shape=(32, 32, 3))
    out = ref.copy()
    out[:4] = 0  # only the shaved border differs
    assert metrics.y_psnr_ssim(ref, out, border=4) == (math.inf, pytest.approx(1.0))


def test_to_uint8_rounds_and_clips() -> None:
    arr = np.array([-3.0, 0.4, 0.6, 254.6, 300.0])
    np.testing.assert_array_equal(metrics.to_uint8(arr), [0, 0, 1, 255, 255])
    u8 = np.array([1, 2], np.uint8)
    assert metrics.to_uint8(u8) is not None and metrics.to_uint8(u8).dtype == np.uint8


def test_hole_scores_only_look_inside_the_hole() -> None:
    ref, out = _pair(shape=(40, 40, 3))
    mask = np.zeros((40, 40), bool)
    mask[10:20, 5:30] = True
    outside_changed = out.copy()
    outside_changed[~mask] = 0
    assert metrics.masked_psnr(ref, out, mask) == metrics.masked_psnr(ref, outside_changed, mask)
    assert metrics.l1(ref, out, mask) == metrics.l1(ref, outside_changed, mask)
    full = np.ones((40, 40), bool)
    assert metrics.masked_psnr(ref, out, full) == pytest.approx(metrics.psnr(ref, out))
    assert metrics.l1(ref, ref + 0) == 0.0
    with pytest.raises(ValueError, match="empty"):
        metrics.masked_psnr(ref, out, np.zeros((40, 40), bool))


def test_inpaint_scores_whole_ssim_equals_ssim() -> None:
    ref, out = _pair(shape=(36, 44, 3))
    mask = np.zeros((36, 44), bool)
    mask[8:20, 8:30] = True
    scores = metrics.inpaint_scores(ref, out, mask)
    assert set(scores) == {"psnr", "ssim", "l1", "hole_psnr", "hole_ssim", "hole_l1"}
    assert scores["ssim"] == pytest.approx(metrics.ssim(ref, out), abs=1e-12)
    assert scores["hole_ssim"] == pytest.approx(
        float(np.mean(metrics.ssim_map(ref, out)[mask])), abs=1e-12
    )


def test_noise_psnr_on_a_sample_photo_matches_sigma() -> None:
    clean = skdata.camera()
    noisy = add_gaussian_noise(clean, 25.0, np.random.default_rng(0), clip=False)
    # float noise, unclipped: PSNR = 20·log10(255/25) ≈ 20.17 dB
    assert metrics.psnr(clean, noisy) == pytest.approx(20 * math.log10(255 / 25), abs=0.05)


def test_dncnn_layout_matches_the_kair_checkpoint() -> None:
    net = DnCNN()
    state = net.state_dict()
    assert len(state) == 34 and "model.0.weight" in state and "model.32.bias" in state
    assert sum(t.numel() for t in state.values()) == 555_137
    out = run_dncnn(net.eval(), np.random.default_rng(0).random((17, 23), np.float32))
    assert out.shape == (17, 23) and out.dtype == np.uint8


# --------------------------------------------------------------------------- harness


def _cases() -> list[harness.Case]:
    ref, out = _pair()

    def load(variant: str) -> harness.Sample:
        return {"gt": ref, "out": out}

    return [harness.Case("A", f"img{i}", load) for i in range(3)]


def _score(sample: harness.Sample, out: np.ndarray) -> harness.Scores:
    return {"psnr": metrics.psnr(sample["gt"], out), "ssim": metrics.ssim(sample["gt"], out)}


def _boom(sample: harness.Sample) -> np.ndarray:
    raise RuntimeError("no weights")


def test_harness_averages_caches_and_reports_failures(tmp_path: Path) -> None:
    calls = []

    def method(sample: harness.Sample) -> np.ndarray:
        calls.append(1)
        return sample["out"]

    rows = [
        harness.Row("slow classic", "slow", method, version="v1"),
        harness.Row("broken model", "broken", _boom, kind="model"),
        harness.Row("paper", "paper", published={"A": {"psnr": 30.0}}, kind="paper"),
    ]
    cache = harness.Cache(tmp_path / "c.json")
    results = harness.evaluate(_cases(), rows, _score, cache, progress=False)
    assert len(calls) == 3
    assert results[0].mean("A")[1] == 3
    assert results[1].error == "RuntimeError: no weights"
    table = harness.render_table("t", ["A"], results, [harness.View("", ("psnr", "ssim"))])
    assert "—" in table and "RuntimeError: no weights" in table and "30.00/—" in table

    again = harness.evaluate(_cases(), rows[:1], _score, harness.Cache(tmp_path / "c.json"),
                             progress=False)  # fmt: skip
    assert len(calls) == 3 and again[0].cached == 3  # all from the cache
    assert again[0].mean("A") == results[0].mean("A")
    fresh = harness.Cache(tmp_path / "c.json", read=False)
    harness.evaluate(_cases(), rows[:1], _score, fresh, progress=False)
    assert len(calls) == 6


def test_calibration_lines_flag_values_off_target() -> None:
    rows = [harness.Row("calib", "calib", lambda s: s["out"], expected={"A": {"psnr": 99.0}})]
    results = harness.evaluate(_cases(), rows, _score, None, progress=False)
    lines, ok = harness.calibration_lines(results, {"psnr": 0.02})
    assert not ok and "OFF" in lines[0]
    _, ok_subset = harness.calibration_lines(results, {"psnr": 0.02}, subset=True)
    assert ok_subset


# --------------------------------------------------------------------------- the command


def _save(path: Path, image: np.ndarray) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(path)


def test_quality_command_on_a_synthetic_data_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Set5-like SR data made from a scikit-image sample: the command prints one table, writes
    the JSON, caches the classic row in --cache-dir, and reports the missing calibration
    outputs as a failed row instead of crashing."""
    from benchmarks import quality
    from benchmarks.tasks.common import runtime
    from training.matlab_resize import imresize

    hr = skdata.astronaut()[:96, :128]
    _save(tmp_path / "data/testsets/Set5/HR/astro.png", hr)
    _save(tmp_path / "data/testsets/Set5/LR_bicubic/X4/astrox4.png", imresize(hr, 0.25))
    args = ["--task", "superres", "--data", str(tmp_path / "data"), "--models", "classic",
            "--only", "Set5 ×4", "--cache-dir", str(tmp_path / "cache"), "--quiet",
            "--json", str(tmp_path / "out.json")]  # fmt: skip
    assert quality.main(args) == 0
    result = json.loads((tmp_path / "out.json").read_text())
    rows = {r["key"]: r for r in result["rows"]}
    assert rows["classic"]["mean"]["Set5 ×4"]["n"] == 1
    assert 20 < rows["classic"]["mean"]["Set5 ×4"]["psnr"] < 40
    assert rows["calib-rcan"]["error"] is not None  # no reference outputs in this folder
    assert rows["paper-rrdb"]["mean"]["Set5 ×4"]["psnr"] == 32.73
    assert (tmp_path / "cache" / "superres.json").is_file()
    # Tiles are planned from a fixed budget, not from whatever memory is free right now.
    assert runtime().tile_budget_bytes == quality.TILE_BUDGET_MB * 1024 * 1024


def test_cache_merges_concurrent_writers_and_drops_old_versions(tmp_path: Path) -> None:
    path = tmp_path / "c.json"
    a, b = harness.Cache(path), harness.Cache(path)
    row_a, row_b = harness.Row("a", "a", version="1"), harness.Row("b", "b", version="1")
    a.put("X", row_a, "img", {"psnr": 1.0})
    b.put("X", row_b, "img", {"psnr": 2.0})
    a.save()
    b.save()  # b never saw a's entry: it must still be kept
    merged = harness.Cache(path)
    assert merged.get("X", row_a, "img") == {"psnr": 1.0}
    assert merged.get("X", row_b, "img") == {"psnr": 2.0}
    newer = harness.Row("a", "a", version="2")
    merged.put("X", newer, "img", {"psnr": 3.0})
    merged.save()
    again = harness.Cache(path)
    assert again.get("X", row_a, "img") is None and again.get("X", newer, "img") == {"psnr": 3.0}


def test_cache_only_computes_nothing_and_marks_partial_cells(tmp_path: Path) -> None:
    def method(sample: harness.Sample) -> np.ndarray:
        return sample["out"]

    row = harness.Row("slow", "slow", method, version="1")
    cases = _cases()
    harness.evaluate(cases[:1], [row], _score, harness.Cache(tmp_path / "c.json"), progress=False)
    results = harness.evaluate(cases, [row], _score, harness.Cache(tmp_path / "c.json"),
                               progress=False, cache_only=True)  # fmt: skip
    assert results[0].computed == 0 and results[0].mean("A")[1] == 1
    view = harness.View("", ("psnr", "ssim"))
    assert "(1/3)" in harness.render_table("t", ["A"], results, [view], {"A": 3})


def test_dip_rows_are_cached_by_code_version_and_fast_models_are_not() -> None:
    options = Options(data=Path("."), limit=None, models=None, only=None, slow_limit=2)
    columns = frozenset({"holes 20–30%"})
    dip = model_limits("dip", options, columns)
    assert dip["max_images"] == 2 and dip["columns"] == columns
    assert dip["version"].startswith("torch") and len(dip["version"]) > 12
    assert model_limits("mwcnn", options, columns) == {}
