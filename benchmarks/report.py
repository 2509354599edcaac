"""Turn the job records of a time range into a summary table and PNG plots.

    python -m benchmarks.report --from 2026-11-25 --to 2026-11-26 --out runs/report

Reads the records where the services write them: the same `RESTORA_*` settings pick the
local store (`RESTORA_DATA_DIR`, or `--data-dir`) or S3. Writes `summary.json`,
`records.csv` and, when matplotlib is installed (the `report` extra), the plots
`latency_per_stage.png`, `throughput.png`, `queue_wait.png`, `failure_rate.png` and
`models.png`. The table is printed either way.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import sys
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from shared.platform.blobstore import make_blob_store
from shared.platform.config import CommonSettings, load_settings
from shared.platform.records import STAGE_COLUMNS, Filters, RecordStore, to_csv

STAGE_ORDER = [*STAGE_COLUMNS, "total"]


def _time(raw: str) -> float:
    """Epoch seconds, or an ISO 8601 date/time (UTC unless it names an offset)."""
    try:
        return float(raw)
    except ValueError:
        parsed = dt.datetime.fromisoformat(raw)
        return (parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.UTC)).timestamp()


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.report", description=__doc__)
    parser.add_argument("--from", dest="start", type=_time, help="start (epoch s or ISO 8601)")
    parser.add_argument("--to", dest="end", type=_time, help="end, exclusive (default: now)")
    parser.add_argument("--task", help="only this task")
    parser.add_argument("--model", help="only this model")
    parser.add_argument("--out", type=Path, required=True, help="folder for the files")
    parser.add_argument("--data-dir", type=Path, help="local store's folder (RESTORA_DATA_DIR)")
    parser.add_argument("--buckets", type=int, default=60, help="points per time series")
    return parser.parse_args(argv)


# ------------------------------------------------------------------------------ the table
def _s(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value * 1000:.1f} ms" if value < 1 else f"{value:.2f} s"


def _table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    cells = [[str(c) for c in headers], *[[str(c) for c in row] for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = [
        "  ".join(
            c.ljust(w) if i < 2 else c.rjust(w)
            for i, (c, w) in enumerate(zip(row, widths, strict=True))
        )
        for row in cells
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def format_summary(summary: dict[str, Any]) -> str:
    start, end = (
        dt.datetime.fromtimestamp(t, dt.UTC).isoformat(timespec="seconds") if t else "-"
        for t in (summary["from"], summary["to"])
    )
    rate = summary["failure_rate"]
    latency = summary["latency"]
    parts = [
        f"Records from {start} to {end}: {summary['count']} jobs, {summary['failed']} failed"
        f" ({rate * 100:.1f} %)"
        if rate is not None
        else "No finished jobs in this range.",
        f"Throughput {summary['throughput_per_min']:.3f} jobs/min; end-to-end latency "
        f"p50 {_s(latency['p50'])}, p95 {_s(latency['p95'])}, p99 {_s(latency['p99'])}",
        "",
        _table(
            ["task", "jobs", "failed", "fail %", "jobs/min", "p50", "p95", "p99"],
            [
                [
                    t["task"],
                    t["count"],
                    t["failed"],
                    f"{t['failure_rate'] * 100:.1f}",
                    f"{t['throughput_per_min']:.3f}",
                    _s(t["p50"]),
                    _s(t["p95"]),
                    _s(t["p99"]),
                ]
                for t in summary["tasks"]
            ],
        ),
        "",
        _table(
            ["task", "stage", "n", "p50", "p95", "p99", "mean"],
            [
                [
                    s["task"],
                    s["stage"],
                    s["n"],
                    _s(s["p50"]),
                    _s(s["p95"]),
                    _s(s["p99"]),
                    _s(s["mean"]),
                ]
                for s in sorted(summary["stages"], key=_stage_key)
            ],
        ),
        "",
        _table(
            [
                "task",
                "model",
                "device",
                "jobs",
                "failed",
                "latency p50",
                "inference p50",
                "inference s/MP",
            ],
            [
                [
                    m["task"],
                    m["model"],
                    m["device"] or "-",
                    m["count"],
                    m["failed"],
                    _s(m["latency_p50"]),
                    _s(m["inference_p50"]),
                    _s(m["inference_s_per_mpix"]),
                ]
                for m in summary["models"]
            ],
        ),
    ]
    return "\n".join(parts)


def _stage_key(row: dict[str, Any]) -> tuple[str, int]:
    stage = row["stage"]
    return row["task"], STAGE_ORDER.index(stage) if stage in STAGE_ORDER else 99


# ------------------------------------------------------------------------------ the plots
def write_plots(summary: dict[str, Any], out: Path, percentile: str = "p95") -> list[Path]:
    """PNG plots; [] when matplotlib is missing (an optional dependency: the `report` extra)."""
    try:
        import matplotlib

        matplotlib.use("Agg")  # files only: no display, no GUI toolkit
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed (pip install '.[report]'): no plots", file=sys.stderr)
        return []
    written: list[Path] = []

    def save(fig: Any, name: str) -> None:
        fig.tight_layout()
        fig.savefig(out / name, dpi=110)
        plt.close(fig)
        written.append(out / name)

    def times(rows: list[dict[str, Any]]) -> list[dt.datetime]:
        return [dt.datetime.fromtimestamp(r["t"], dt.UTC) for r in rows]

    # The asked-for range, at least one bucket wide: one point alone would span years.
    bucket = summary["bucket_s"]
    start = dt.datetime.fromtimestamp(summary["from"] - bucket / 2, dt.UTC)
    end = dt.datetime.fromtimestamp(max(summary["to"], summary["from"]) + bucket, dt.UTC)

    def time_axis(ax: Any, fig: Any) -> None:
        ax.set_xlim(start, end)
        ax.grid(alpha=0.3)
        fig.autofmt_xdate()

    series = defaultdict(list)
    for row in summary["series"]["stages"]:
        series[row["stage"]].append(row)
    for name, stages, title in (
        (
            "latency_per_stage.png",
            [s for s in STAGE_ORDER if not s.startswith("queue_")],
            f"Latency per stage ({percentile})",
        ),
        (
            "queue_wait.png",
            [s for s in STAGE_ORDER if s.startswith("queue_")],
            f"Queue wait ({percentile})",
        ),
    ):
        fig, ax = plt.subplots(figsize=(10, 4))
        for stage in (s for s in stages if series.get(s)):
            rows = series[stage]
            ax.plot(times(rows), [r[percentile] for r in rows], marker=".", label=stage)
        ax.set(title=title, ylabel="seconds", xlabel="UTC")
        time_axis(ax, fig)
        if ax.lines:
            ax.legend(fontsize="small", ncol=3)
        save(fig, name)

    overall = summary["series"]["overall"]
    per_min = 60 / summary["bucket_s"]
    fig, ax = plt.subplots(figsize=(10, 3.5))
    done = [(r["count"] - r["failed"]) * per_min for r in overall]
    failed = [r["failed"] * per_min for r in overall]
    width = summary["bucket_s"] / 86400 * 0.9  # matplotlib's date unit is a day
    ax.bar(times(overall), done, width=width, align="edge", color="#1f9d63", label="done")
    ax.bar(
        times(overall),
        failed,
        width=width,
        align="edge",
        bottom=done,
        color="#c8372d",
        label="failed",
    )
    ax.set(title="Throughput", ylabel="jobs per minute", xlabel="UTC")
    time_axis(ax, fig)
    ax.legend(fontsize="small")
    save(fig, "throughput.png")

    fig, ax = plt.subplots(figsize=(10, 3.5))
    ax.plot(times(overall), [r["failure_rate"] * 100 for r in overall], marker=".", color="#c8372d")
    ax.set(title="Failure rate", ylabel="% of finished jobs", xlabel="UTC")
    time_axis(ax, fig)
    save(fig, "failure_rate.png")

    models = [m for m in summary["models"] if m["inference_s_per_mpix"] is not None]
    fig, ax = plt.subplots(figsize=(8, max(2.5, 0.45 * len(models) + 1)))
    labels = [f"{m['task']} · {m['model']} ({m['device'] or '?'})" for m in models]
    ax.barh(labels, [m["inference_s_per_mpix"] for m in models], color="#4f6df5")
    ax.invert_yaxis()
    ax.set(title="Models: median inference time per megapixel", xlabel="seconds per MP")
    save(fig, "models.png")
    return written


# ------------------------------------------------------------------------------ main
async def build_report(args: argparse.Namespace) -> dict[str, Any]:
    env = dict(os.environ)
    if args.data_dir is not None:
        env["RESTORA_DATA_DIR"] = str(args.data_dir)
    store = make_blob_store(load_settings(CommonSettings, env))
    filters = Filters(start=args.start, end=args.end, task=args.task, model=args.model)
    records = RecordStore(store)
    summary = await records.summary(filters, args.buckets)
    rows = await records.query(filters, limit=1_000_000)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2))
    (args.out / "records.csv").write_text(to_csv(rows))
    return summary


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    summary = asyncio.run(build_report(args))
    print(format_summary(summary))
    plots = write_plots(summary, args.out) if summary["count"] else []
    print(f"\nWrote {args.out / 'summary.json'}, {args.out / 'records.csv'}", end="")
    print("".join(f", {p}" for p in plots))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
