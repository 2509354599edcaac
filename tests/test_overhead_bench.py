"""The overhead benchmark's (`benchmarks/overhead.py`) numbers and report, without servers.

The benchmark itself starts RabbitMQ, S3 and three services and runs a 512² network dozens of
times: minutes, so it is run by hand (`make bench-overhead`), not here.
"""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks import overhead


def test_spread_and_ratio_of_the_p50s() -> None:
    pure = [1.0, 1.2, 1.1, 0.9, 1.0]  # p50 1.0
    pipeline = [1.05, 1.1, 1.2, 1.0, 1.5]  # p50 1.1
    summary = overhead.summarize(pipeline, pure, limit=1.10)
    assert summary.pure == overhead.Spread(5, 1.0, pytest.approx(1.16))
    assert summary.pipeline.p50_s == pytest.approx(1.1)
    assert summary.ratio == pytest.approx(1.1)
    assert summary.meets  # at the limit counts as meeting it
    assert not overhead.summarize([1.2] * 3, pure, limit=1.10).meets
    with pytest.raises(ValueError):
        overhead.spread([])


def test_first_job_after_ready_is_held_to_the_same_limit() -> None:
    summary = overhead.summarize([2.0] * 4, [1.9] * 4, limit=1.10)
    start = overhead.WorkerStart(12.0, 13.0, 8.0, first_job_s=2.2, pure_load_s=3.0,
                                 pure_first_s=2.0)
    assert start.first_job_meets(summary)  # 2.2 ≤ 1.10 × 2.0
    slow = overhead.WorkerStart(12.0, 13.0, 8.0, 2.3, 3.0, 2.0)
    assert not slow.first_job_meets(summary)
    report = overhead.render_start(slow, summary).splitlines()
    assert report[0].startswith("worker start (denoise service)")
    assert report[-1] == ("first job after ready / pipeline p50: 1.150× — warm-up paid at worker "
                          "start: NO (≤ 1.10×)")


def test_summary_table_lines_up_and_says_the_verdict() -> None:
    summary = overhead.summarize([0.5, 0.52, 0.55], [0.45, 0.46, 0.47], limit=1.10)
    lines = overhead.render_summary(summary).splitlines()
    assert lines[0].split() == ["runs", "p50", "s", "p90", "s"]
    assert lines[1].split() == ["pure", "function", "3", "0.460", "0.468"]
    assert lines[2].split() == ["pipeline,", "end", "to", "end", "3", "0.520", "0.544"]
    assert len({len(line) for line in lines[:3]}) == 1  # right-aligned numbers: equal widths
    assert lines[3] == "pipeline / pure, p50: 1.130× — does NOT meet ≤ 1.10×"


def test_outputs_identical_close_or_different() -> None:
    reference = np.full((8, 8, 3), 100, np.uint8)
    close = reference.copy()
    close[0, 0, 0] = 101  # one step in one value: far above 50 dB
    far = np.zeros_like(reference)
    same = overhead.check_outputs(reference, [reference, close])
    assert (same.compared, same.identical, same.same_work) == (2, 1, True)
    assert same.min_psnr_db > 60
    assert not overhead.check_outputs(reference, [reference, far]).same_work
    assert not overhead.check_outputs(reference, [reference[:4]]).same_work  # another shape
    assert not overhead.check_outputs(reference, []).same_work
    assert overhead.check_outputs(reference, [reference]).min_psnr_db == np.inf
    assert "2/2 pipeline results identical" in overhead.render_outputs(
        overhead.check_outputs(reference, [reference, reference])
    )


def test_stage_timings_are_the_p50_per_service_stage() -> None:
    jobs = [
        {"preprocess": {"total_s": 0.05}, "denoise": {"inference_s": 0.4, "store_s": 0.02}},
        {"preprocess": {"total_s": 0.07}, "denoise": {"inference_s": 0.6, "store_s": 0.04}},
        {"preprocess": {"total_s": 0.06}, "denoise": {"inference_s": 0.5, "note": "x"}},
        {},
    ]
    stages = overhead.stage_p50s(jobs)
    assert stages == pytest.approx(
        {"preprocess.total_s": 0.06, "denoise.inference_s": 0.5, "denoise.store_s": 0.03}
    )
    assert overhead.render_stages(stages).startswith(
        "stages, p50 s: denoise.inference_s 0.500, denoise.store_s 0.030"
    )
    assert overhead.render_stages({}).endswith("(none reported)")


def test_the_upload_is_the_pure_functions_pixels() -> None:
    upload = overhead.make_upload(64, 25.0, seed=3)
    assert upload.pixels.shape == (64, 64, 3) and upload.pixels.dtype == np.uint8
    assert np.array_equal(overhead.decode(upload.png), upload.pixels)
    assert np.array_equal(overhead.make_upload(64, 25.0, seed=3).pixels, upload.pixels)


def test_arguments() -> None:
    args = overhead.parse_args(["--runs", "3", "--env", "RESTORA_BACKEND=torch"])
    assert args.runs == 3 and args.size == 512 and args.limit == overhead.DEFAULT_LIMIT
    assert args.env == {"RESTORA_THREADS": "1", "RESTORA_BACKEND": "torch"}
    with pytest.raises(SystemExit):
        overhead.parse_args(["--env", "BACKEND=torch"])
