"""Quality benchmark: PSNR/SSIM (and L1 for inpainting) of the degraded input, the classic method,
each of our models, the papers' published values and calibration rows, as one table.

    python -m benchmarks.quality --task denoise|artifacts|superres|superres-real|inpaint
        [--data ../shared/data] [--json PATH] [--models classic,mwcnn,...] [--limit N]
        [--only "BSD68 σ25,Set12 σ25"] [--rows KEY,...] [--no-cache | --cache-only]
        [--cache-dir DIR] [--grid PATH] [--threads N] [--slow-limit N] [--quiet]
        [--markdown]

(``make bench-quality TASK=denoise BENCH_ARGS="--json runs/bench/denoise.json"``.)

Metric recipes: ``benchmarks/metrics.py`` (they reproduce the published tables; the calibration
rows prove it on every run). Each task's data, degradations and conventions are documented in
``benchmarks/tasks/<task>.py``. Rows marked ``*`` come entirely from ``benchmarks/cache`` (slow
classic methods, e.g. BM3D; per image, keyed by method version); ``--no-cache`` recomputes them
(and refreshes the cache). A model that fails is shown as "—" with the reason.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from collections import Counter
from pathlib import Path

from benchmarks import harness
from benchmarks.tasks import artifacts, denoise, inpaint, superres, superres_real
from benchmarks.tasks.common import (
    CALIBRATION_TOLERANCE,
    DEFAULT_DATA,
    REPO_ROOT,
    Options,
    Setup,
    configure_runtime,
)

TASKS = {
    "denoise": denoise.build,
    "artifacts": artifacts.build,
    "superres": superres.build,
    "superres-real": superres_real.build,
    "inpaint": inpaint.build,
}
CACHE_DIR = Path(__file__).resolve().parent / "cache"
# The CPU cap of shared.ml.tiling's budget: what a machine with ≥ 8 GiB free gets anyway.
TILE_BUDGET_MB = 2048
DEFAULT_GRID = REPO_ROOT / "runs" / "bench" / "inpaint_grid.png"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.quality", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--task", required=True, choices=sorted(TASKS))
    parser.add_argument(
        "--data",
        type=Path,
        default=DEFAULT_DATA,
        help="the shared data folder (default: %(default)s)",
    )
    parser.add_argument("--json", type=Path, help="write every number (and per image) here")
    parser.add_argument(
        "--models",
        help="comma-separated: classic and/or our model names "
        "(default: classic and every model whose weights are present)",
    )
    parser.add_argument("--limit", type=int, help="first N images of each set (quick runs)")
    parser.add_argument("--only", help="comma-separated column names, e.g. 'BSD68 σ25'")
    parser.add_argument(
        "--rows",
        help="comma-separated row keys to run, e.g. 'bm3d[float]' "
        "(keys are in the JSON; for filling the cache piece by piece)",
    )
    parser.add_argument(
        "--no-cache",
        action="store_true",
        help="recompute cached classic rows (the cache is refreshed)",
    )
    parser.add_argument(
        "--cache-only",
        action="store_true",
        help="cached rows: show what the cache holds, compute nothing (cells say n/total)",
    )
    parser.add_argument(
        "--cache-dir",
        type=Path,
        default=CACHE_DIR,
        help="where the cached rows are kept (default: %(default)s)",
    )
    parser.add_argument(
        "--grid",
        type=Path,
        default=DEFAULT_GRID,
        help="inpaint: where to save the picture grid (default: %(default)s)",
    )
    parser.add_argument(
        "--slow-limit",
        type=int,
        default=3,
        help="images per column for very slow models such as DIP (0: leave them out)",
    )
    parser.add_argument(
        "--ensemble",
        action="store_true",
        help="also score our networks' ensemble=true mode (8 flips/rotations: 8× the time)",
    )
    parser.add_argument(
        "--tile-budget-mb",
        type=int,
        default=TILE_BUDGET_MB,
        help="tiling memory budget: fixed so that every run cuts images into the same tiles "
        "(the service sizes tiles from free memory, which moves scores by ~0.005 dB)",
    )
    parser.add_argument("--threads", type=int, help="CPU threads for torch and OpenCV")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.add_argument("--markdown", action="store_true", help="print the table as Markdown")
    return parser.parse_args(argv)


def options_from(args: argparse.Namespace) -> Options:
    def split(text: str | None) -> list[str] | None:
        return None if text is None else [t.strip() for t in text.split(",") if t.strip()]

    only = split(args.only)
    return Options(
        data=args.data,
        limit=args.limit,
        models=split(args.models),
        only=None if only is None else frozenset(o.lower() for o in only),
        slow_limit=args.slow_limit,
        grid=args.grid,
        ensemble=args.ensemble,
    )


def set_threads(count: int | None) -> None:
    if count is None:
        return
    import cv2
    import torch

    torch.set_num_threads(count)
    cv2.setNumThreads(count)


def run(args: argparse.Namespace) -> tuple[str, dict[str, object], bool]:
    options = options_from(args)
    setup: Setup = TASKS[args.task](options)
    if args.rows:
        keys = {k.strip() for k in args.rows.split(",")}
        setup.rows = [r for r in setup.rows if r.key in keys]
    cache = harness.Cache(args.cache_dir / f"{args.task}.json", read=not args.no_cache)
    start = time.perf_counter()
    results = harness.evaluate(
        setup.cases,
        setup.rows,
        setup.score,
        cache,
        setup.keep,
        progress=not args.quiet,
        cache_only=args.cache_only,
    )
    columns = harness.columns_of(setup.cases, setup.rows)
    totals = Counter(case.column for case in setup.cases)
    table = harness.render_table(
        setup.title, columns, results, setup.views, totals, markdown=args.markdown
    )
    lines = [table]
    if any(r.cached and not r.computed for r in results):
        lines.append("* every image of this row from benchmarks/cache (--no-cache recomputes)")
    setup.notes += [
        f"{r.label}: only the first {r.max_images} images of {', '.join(sorted(r.columns or []))}"
        for r in setup.rows
        if r.max_images is not None
    ]
    lines += [f"note: {n}" for n in setup.notes]
    if args.limit:
        lines.append(f"note: --limit {args.limit}: first {args.limit} images of each set only")
    calibration, calibrated = harness.calibration_lines(
        results, CALIBRATION_TOLERANCE, subset=bool(args.limit), totals=totals
    )
    if calibration:
        status = "all within tolerance" if calibrated else "OFF: check the metric code"
        lines += [f"calibration (expected: published / SOURCES.md check) — {status}:", *calibration]
    if setup.after is not None:
        lines += setup.after(results)
    extra = {
        "command": " ".join([Path(sys.executable).name, "-m", "benchmarks.quality", *sys.argv[1:]]),
        "limit": args.limit,
        "notes": setup.notes,
        "calibration_ok": calibrated,
        "calibration": calibration,
        "seconds": round(time.perf_counter() - start, 1),
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor(),
            "cpus": os.cpu_count(),
        },
    }
    return "\n".join(lines), harness.results_json(args.task, columns, results, extra), calibrated


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    set_threads(args.threads)
    configure_runtime(args.tile_budget_mb)
    text, data, _ = run(args)
    print(text)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(data, indent=1, ensure_ascii=False) + "\n")
        print(f"numbers written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
