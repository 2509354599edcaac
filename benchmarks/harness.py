"""The quality benchmark's machinery: cases × rows → per-image scores → one printed table.

A *case* is one test image at one degradation level; its *column* is what the table groups it
under (e.g. "BSD68 σ25"). A *row* is a method (or the degraded input, a paper's published value,
or a calibration instrument). Every row runs on every case of its columns; scores are averaged
per column. Rows with a ``version`` are cached per image in ``benchmarks/cache/<task>.json``
under the key (column, row key, row version, metrics version), so slow classic methods (BM3D)
are computed once; rows of our own models are not cached (their weights change) unless their
version names the weights (``superres-real`` does: its rows are keyed by the weights' sha256).
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from benchmarks.metrics import METRICS_VERSION

Sample = dict[str, Any]
Scores = dict[str, float]
ScoreFn = Callable[[Sample, np.ndarray], Scores]


@dataclass(frozen=True)
class Case:
    column: str
    image: str
    # variant (e.g. "float"/"uint8" noise convention) -> the ground truth and degraded input
    load: Callable[[str], Sample]


@dataclass(frozen=True)
class Row:
    label: str
    key: str  # stable id in the cache and the JSON
    run: Callable[[Sample], np.ndarray] | None = None  # None: a published-value row
    variant: str = ""
    version: str | None = None  # set: results are cached under this version
    columns: frozenset[str] | None = None  # None: every column
    max_images: int | None = None  # per column, for very slow methods
    published: dict[str, Scores] = field(default_factory=dict)
    expected: dict[str, Scores] = field(default_factory=dict)  # calibration targets
    score: ScoreFn | None = None  # overrides the task's score function
    kind: str = "method"  # input | method | model | paper | calibration

    def applies_to(self, column: str) -> bool:
        return self.columns is None or column in self.columns


@dataclass(frozen=True)
class View:
    """One section of the table: which score keys a cell shows, e.g. ("psnr", "ssim")."""

    suffix: str
    metrics: tuple[str, ...]


@dataclass
class RowResult:
    row: Row
    per_image: dict[str, dict[str, Scores]] = field(default_factory=dict)
    error: str | None = None
    cached: int = 0
    computed: int = 0
    seconds: float = 0.0
    outputs: dict[tuple[str, str], np.ndarray] = field(default_factory=dict)

    def mean(self, column: str) -> tuple[Scores, int]:
        if self.row.run is None:
            return self.row.published.get(column, {}), 0
        images = self.per_image.get(column, {})
        if not images:
            return {}, 0
        keys = next(iter(images.values())).keys()
        means = {k: round(float(np.mean([s[k] for s in images.values()])), 6) for k in keys}
        return means, len(images)


class Cache:
    """Per-image scores of the slow, deterministic rows, as small committed JSON."""

    def __init__(self, path: Path, read: bool = True) -> None:
        self.path = path
        self.read = read  # False (--no-cache): recompute everything, still store the results
        self.entries: dict[str, dict[str, Scores]] = {}
        if path.is_file():
            self.entries = json.loads(path.read_text())["entries"]
        self.new: dict[str, dict[str, Scores]] = {}  # what this run computed
        self.dirty = False

    @staticmethod
    def key(column: str, row: Row) -> str:
        return f"{column}|{row.key}|{row.version}|metrics-v{METRICS_VERSION}"

    def get(self, column: str, row: Row, image: str) -> Scores | None:
        if not self.read:
            return None
        return self.entries.get(self.key(column, row), {}).get(image)

    def put(self, column: str, row: Row, image: str, scores: Scores) -> None:
        key = self.key(column, row)
        self.entries.setdefault(key, {})[image] = scores
        self.new.setdefault(key, {})[image] = scores
        self.dirty = True

    def save(self) -> None:
        """Merge this run's new scores into the file as it is now, so that two runs filling
        different rows of the same task (e.g. in two processes) do not drop each other's."""
        if not self.dirty:
            return
        on_disk = json.loads(self.path.read_text())["entries"] if self.path.is_file() else {}
        for key, images in self.new.items():
            # a new version of a row replaces the old one's scores
            stem = key.split("|")[:2]
            for old in [k for k in on_disk if k.split("|")[:2] == stem and k != key]:
                del on_disk[old]
            on_disk.setdefault(key, {}).update(images)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(_cache_text(on_disk))
        tmp.replace(self.path)
        self.dirty = False


def _cache_text(entries: dict[str, dict[str, Scores]]) -> str:
    """Sorted JSON with one image per line: small, and diffs show which images changed."""
    blocks = []
    for key, images in sorted(entries.items()):
        lines = [f"   {json.dumps(i)}: {json.dumps(s)}" for i, s in sorted(images.items())]
        blocks.append(
            f"  {json.dumps(key, ensure_ascii=False)}: {{\n" + ",\n".join(lines) + "\n  }"
        )
    about = (
        "per-image scores of the cached benchmark rows; key = "
        "column|row|row version|metrics version (see benchmarks/harness.py)"
    )
    return (
        f'{{\n "about": {json.dumps(about)},\n "entries": {{\n' + ",\n".join(blocks) + "\n }\n}\n"
    )


def _rounded(scores: Scores) -> Scores:
    # Cached/JSON values: more digits than any table shows, fewer than float noise.
    return {k: round(float(v), 6) for k, v in scores.items()}


def _count_toward_limit(result: RowResult, column: str) -> int:
    return len(result.per_image.get(column, {}))


def _run_one(result: RowResult, case: Case, sample: Sample, score: ScoreFn, keep: bool) -> Scores:
    start = time.perf_counter()
    out = result.row.run(sample)  # type: ignore[misc]
    scores = _rounded((result.row.score or score)(sample, out))
    result.seconds += time.perf_counter() - start
    result.computed += 1
    if keep:
        result.outputs[(case.column, case.image)] = out
    return scores


def evaluate(
    cases: list[Case],
    rows: list[Row],
    score: ScoreFn,
    cache: Cache | None,
    keep: Iterable[tuple[str, str]] = (),
    progress: bool = True,
    cache_only: bool = False,
) -> list[RowResult]:
    """Run every applicable row on every case; a row that raises is reported, not fatal."""
    results = [RowResult(row) for row in rows]
    keep_set = set(keep)
    for case in tqdm(cases, desc="cases", disable=not progress, file=sys.stderr):
        samples: dict[str, Sample] = {}
        kept = (case.column, case.image) in keep_set
        for result in results:
            row = result.row
            if row.run is None or result.error or not row.applies_to(case.column):
                continue
            if row.max_images is not None and _count_toward_limit(result, case.column) >= (
                row.max_images
            ):
                continue
            cached = None
            if cache is not None and row.version is not None and not kept:
                cached = cache.get(case.column, row, case.image)
            if cached is not None:
                result.cached += 1
                scores = cached
            elif cache_only and row.version is not None:
                continue  # --cache-only: report what the cache has, compute nothing slow
            else:
                try:
                    if row.variant not in samples:
                        samples[row.variant] = case.load(row.variant)
                    scores = _run_one(result, case, samples[row.variant], score, kept)
                except Exception as exc:  # report the row as failed, keep the table going
                    result.error = f"{type(exc).__name__}: {exc}"
                    continue
                if cache is not None and row.version is not None:
                    cache.put(case.column, row, case.image, scores)
            result.per_image.setdefault(case.column, {})[case.image] = scores
        if cache is not None:
            cache.save()
    return results


# --------------------------------------------------------------------------- formatting

_FORMATS = {"psnr": "{:.2f}", "ssim": "{:.4f}", "l1": "{:.2f}%"}


def format_value(metric: str, value: float | None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    base = metric.removeprefix("hole_").removeprefix("rgb_")
    if base == "l1":
        value *= 100.0  # shown as a percentage of the 0–255 range
    return _FORMATS.get(base, "{:.4f}").format(value)


def format_cell(scores: Scores, metrics: tuple[str, ...]) -> str:
    if not scores or all(scores.get(m) is None for m in metrics):
        return "—"
    return "/".join(format_value(m, scores.get(m)) for m in metrics)


def columns_of(cases: list[Case], rows: list[Row]) -> list[str]:
    cols = list(dict.fromkeys(c.column for c in cases))
    return cols or list(dict.fromkeys(c for r in rows for c in r.published))


def _label(result: RowResult, view: View, notes: list[str]) -> str:
    label = result.row.label + (f" [{view.suffix}]" if view.suffix else "")
    if result.cached and not result.computed:
        label += " *"
    if result.error:
        notes.append(f"{result.row.label}: not scored — {result.error}")
        label += f" †{len(notes)}"
    return label


def _cell(result: RowResult, column: str, view: View, totals: dict[str, int]) -> str:
    scores, n = result.mean(column)
    text = format_cell(scores, view.metrics)
    total = totals.get(column, 0)
    if result.row.run is not None and 0 < n < total:
        text += f" ({n}/{total})"
    return text


def render_table(
    title: str,
    columns: list[str],
    results: list[RowResult],
    views: list[View],
    totals: dict[str, int] | None = None,
    markdown: bool = False,
) -> str:
    """The fixed-width (or Markdown) table; a cell averaged over fewer images than its column
    has (a partly filled cache, a slow model's subset) shows "(n/total)"."""
    notes: list[str] = []
    header = ["method", *columns]
    body: list[list[str]] = []
    for view in views:
        body.append([f"— {'/'.join(view.metrics)} —"] + [""] * len(columns))
        for result in results:
            if result.row.kind == "calibration" and view is not views[0]:
                continue
            cells = [_cell(result, c, view, totals or {}) for c in columns]
            # footnotes (errors) are numbered once, in the first section
            label = _label(result, view, notes if view is views[0] else [])
            body.append([label, *cells])
    if markdown:
        lines = [f"**{title}**", "", "| " + " | ".join(header) + " |"]
        lines.append("|" + "---|" * len(header))
        lines += ["| " + " | ".join(c.replace("*", "\\*") for c in r) + " |" for r in body]
        lines += ["", *(f"†{i} {n}  " for i, n in enumerate(notes, 1))]
        return "\n".join(lines)
    widths = [max(len(r[i]) for r in [header, *body]) for i in range(len(header))]
    lines = [title, "  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in body]
    lines += [f"†{i} {n}" for i, n in enumerate(notes, 1)]
    return "\n".join(lines)


def calibration_lines(
    results: list[RowResult],
    tolerance: Scores,
    subset: bool = False,
    totals: dict[str, int] | None = None,
) -> tuple[list[str], bool]:
    """Compare the rows that carry expected values with them (columns that were run only).

    ok is False when a value is off by more than `tolerance`; on a subset of the images
    (``--limit``, or fewer than `totals` says the column has) it is shown but cannot fail.
    """
    lines, ok = [], True
    for result in results:
        for column, expected in result.row.expected.items():
            got, n = result.mean(column)
            if not got:
                continue
            partial = subset or n < (totals or {}).get(column, 0)
            parts = []
            for metric, target in expected.items():
                value = got[metric]
                good = abs(value - target) <= tolerance.get(metric, 0.0)
                ok &= good or partial
                verdict = "ok" if good else ("subset" if partial else "OFF")
                parts.append(
                    f"{metric} {value:.4f} vs {target:.4f} ({value - target:+.4f} {verdict})"
                )
            lines.append(f"  {result.row.label} — {column} (n={n}): " + "; ".join(parts))
    return lines, ok


def results_json(
    task: str, columns: list[str], results: list[RowResult], extra: dict[str, Any]
) -> dict[str, Any]:
    rows = []
    for result in results:
        row = result.row
        cells = {}
        for c in columns:
            scores, n = result.mean(c)
            if scores:
                cells[c] = {**scores, "n": n}
        rows.append(
            {
                "label": row.label,
                "key": row.key,
                "kind": row.kind,
                "variant": row.variant,
                "version": row.version,
                "error": result.error,
                "cached_images": result.cached,
                "computed_images": result.computed,
                "seconds": round(result.seconds, 2),
                "mean": cells,
                "expected": row.expected,
                "per_image": result.per_image,
            }
        )
    return {
        "task": task,
        "metrics_version": METRICS_VERSION,
        "columns": columns,
        "rows": rows,
        **extra,
    }
