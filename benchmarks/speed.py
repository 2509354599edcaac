"""Inference speed: Restora's path against eager PyTorch and the peer runtimes users already have.

`python -m benchmarks.speed --task denoise|artifacts|superres|inpaint|all [--sizes 256,512]
[--repeats 3] [--threads N] [--contenders eager,onnxruntime,ncnn,restora,classic]
[--cache-dir DIR] [--json PATH]`

For each installed network of the task, from the registry (MWCNN denoise and JPEG artifacts,
RRDBNet ×4 at 23 blocks × 64 features and at the shipped 4 × 32, the DeepFill generator), rows:
- `eager`: what the papers' test scripts do: the whole image in one eager fp32 NCHW call under
  `torch.no_grad()`;
- `onnxruntime`: the same graph exported with `torch.onnx.export` (cached per weights sha256,
  see benchmarks/speed_graphs.py), on ONNX Runtime's CPU provider, intra-op threads = --threads;
- `ncnn`: ncnn's CPU runtime in fp32 where the network converts: RRDBNet (Real-ESRGAN's own
  x4plus files, the shipped one written in the same layout);
- `restora`: the service's path: `registry.restore` (tiled, channels-last, `inference_mode`,
  bf16 only where the CPU has it natively and it keeps ≥ 50 dB, on the backend RESTORA_BACKEND
  picks: by default PyTorch or ONNX Runtime, whichever its load-time measurement found faster,
  the decision kept under --cache-dir);
- `classic`: the task's classic method (non-local means, bicubic, Telea fill), for scale.
Each contender runs in its own warm process (benchmarks/speed_contenders.py). At every size each
runs once to warm up, which is also the output compared with eager's (PSNR); then --repeats
rounds (more for short calls, up to 25: about 1.5 s of the slowest contender's calls) in which
every contender runs once, the first one moving on by one each round. Per row:
the median seconds, output megapixels per second, the peak RSS of the contender's process at
that size, and the PSNR against eager's output: a faster path counts only at ≥ 50 dB. The last
line names the smallest speedup of Restora's path over eager and, per network, whether
Restora's is the fastest row that counts.

The inputs are photo-like (smooth regions, edges, texture), degraded as the task expects;
DeepFill's hole is a centred square of half the side, so its window is the whole image up to
its 512-px maximum (above it every contender runs the same downscaled window). Optional
packages: `pip install -e '.[bench]'` (`make bench-speed` does). Run it with no other load on
the machine (stop training first), and once with `LD_PRELOAD=libjemalloc.so.2` to see the
allocator's effect. Numbers, not assertions.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import statistics
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import cv2
import numpy as np
import torch

from benchmarks import metrics
from benchmarks.speed_contenders import (
    CONTENDERS,
    LABELS,
    Network,
    Spec,
    Worker,
    WorkerError,
)
from shared.ml import accel, registry
from shared.ml.runtime import ModelRuntime

SIGMA = 25.0
QUALITY = 20
#: The options every row runs with: one noise level, one JPEG quality, ×4.
TASK_OPTIONS: dict[str, dict[str, object]] = {
    "denoise": {"sigma": SIGMA},
    "artifacts": {"quality": QUALITY},
    "superres": {"scale": 4},
    "inpaint": {},
}
#: Input sides: ×4 super-resolution at 512² is a 4-MP output, minutes per call at 23 × 64.
DEFAULT_SIZES = {"superres": "128,256"}
FALLBACK_SIZES = "256,512"
#: A contender's output must be this close to eager's to count as a faster path.
MIN_PSNR_DB = 50.0
# A pause before each timed call, so that every contender starts on idle cores: ONNX Runtime's
# threads (as its users run it: spinning on) busy-wait for a while after each run, and the
# contender after it, in another process, paid for it (the JPEG network's Restora row at 512²:
# 0.078 s right after ONNX Runtime's, 0.044 s alone; 2-core AMD EPYC).
SETTLE_S = 0.3
# Short calls get more rounds: their times swing most (the JPEG network at 256², ~20 ms, gave
# eager 0.023–0.032 s and Restora 0.012–0.024 s across medians of 3 on an idle 2-core EPYC), so
# each size runs until its slowest contender has about this many timed seconds, up to
# MAX_ROUNDS rounds and never under --repeats.
TIMED_S_PER_SIZE = 1.5
MAX_ROUNDS = 25
#: The packages each peer contender needs (the `bench` extra).
PEER_PACKAGES = {"onnxruntime": ("onnxruntime", "onnx"), "ncnn": ("ncnn",)}


# --------------------------------------------------------------------------- inputs


def photo_like(size: int, seed: int = 0) -> np.ndarray:
    """A deterministic size×size RGB image with smooth regions, edges and fine texture."""
    rng = np.random.default_rng(seed)
    cells = rng.integers(0, 256, (size // 16 + 1, size // 16 + 1, 3)).astype(np.float32)
    blocks = np.kron(cells, np.ones((16, 16, 1), np.float32))[:size, :size]
    smooth = cv2.GaussianBlur(blocks, (0, 0), 2.0)
    return np.clip(smooth + rng.normal(0, 6, smooth.shape), 0, 255).round().astype(np.uint8)


def bench_input(task: str, size: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray | None]:
    """The input image of `task` at `size`, degraded as the task expects, and its mask."""
    image = photo_like(size, seed)
    rng = np.random.default_rng(seed + 1)
    if task == "denoise":
        noisy = image + rng.normal(0, SIGMA, image.shape)
        return np.clip(noisy, 0, 255).round().astype(np.uint8), None
    if task == "artifacts":
        ok, encoded = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, QUALITY])
        assert ok
        return np.asarray(cv2.imdecode(encoded, cv2.IMREAD_UNCHANGED), np.uint8), None
    if task == "inpaint":
        mask = np.zeros((size, size), bool)
        mask[size // 4 : 3 * size // 4, size // 4 : 3 * size // 4] = True
        return image, mask
    return image, None


# --------------------------------------------------------------------------- networks


@dataclass(frozen=True)
class Plan:
    """One network's rows: the contenders to run, and why the others are missing."""

    network: Network
    contenders: tuple[str, ...]
    missing: dict[str, str] = field(default_factory=dict)  # contender → why it has no row
    classic: str | None = None  # the classic method's description, where it has a row


def _metadata(path: Path) -> dict[str, str]:
    from safetensors import safe_open

    with safe_open(str(path), framework="np") as handle:
        return dict(handle.metadata() or {})


def _mwcnn_network(entry: registry.Restorer, runtime: ModelRuntime) -> Network:
    from shared.ml.models.mwcnn import level_from_quality, level_from_sigma
    from shared.ml.restorers import mwcnn

    levels: tuple[float, ...]
    chroma: Path | None = None
    if entry.task == "artifacts":
        weights, graph = mwcnn.ARTIFACTS_WEIGHTS, "mwcnn"
        levels, what = (level_from_quality(QUALITY),), f"q{QUALITY}"
    else:
        # As the service decides for a colour photo: the colour-plane (or else the gray)
        # network on colour planes where it is installed, else the colour network.
        sigma = SIGMA
        weights = mwcnn.denoiser_for(runtime, bench_input("denoise", 16)[0])
        basis = mwcnn.COLOUR_BASIS
        plane_networks = (mwcnn.DENOISE_PLANES_WEIGHTS, mwcnn.DENOISE_GRAY_WEIGHTS)
        if weights in plane_networks and basis is not None:
            graph, levels = "mwcnn-planes", tuple(level_from_sigma(sigma * g)
                                                   for g in basis.noise_gains)
            what = f"σ{sigma:g}, {weights.removesuffix('.safetensors')} on {basis.name} planes"
            if mwcnn.has_chroma_network(runtime, weights):
                chroma = runtime.weights_path(mwcnn.DENOISE_CHROMA_WEIGHTS)
                what += f", chroma by {chroma.stem}"
        else:
            graph, levels, what = "mwcnn", (level_from_sigma(sigma),), f"σ{sigma:g}"
    path = runtime.weights_path(weights)
    widths = json.loads(_metadata(path)["mwcnn_config"])["widths"]
    return Network(f"mwcnn-{entry.task}", f"MWCNN {entry.task} {'/'.join(map(str, widths))} "
                   f"({what})", entry.task, entry.name, graph, path, multiple=8,
                   levels=levels, options=dict(TASK_OPTIONS[entry.task]), chroma=chroma)


def _rrdbnet_network(entry: registry.Restorer, runtime: ModelRuntime) -> Network:
    from shared.ml import x4plus
    from shared.ml.restorers import esrgan

    official = entry.name == "realesrgan"
    path = runtime.weights_path(x4plus.WEIGHTS if official else esrgan.PSNR_WEIGHTS)
    config = json.loads(_metadata(path)["rrdbnet_config"])
    label = (f"RRDBNet ×4 {config['blocks']} blocks × {config['features']} features "
             f"({entry.name})")
    return Network(f"rrdbnet-{entry.name}", label, entry.task, entry.name, "rrdbnet", path,
                   scale=4, options=dict(TASK_OPTIONS[entry.task]),
                   ncnn="x4plus" if official else "written")


def _deepfill_network(entry: registry.Restorer, runtime: ModelRuntime) -> Network:
    from shared.ml.models.deepfill_contextual_attention import SIZE_MULTIPLE
    from shared.ml.restorers import deepfill

    path = runtime.weights_path(deepfill.WEIGHTS)
    meta = _metadata(path)
    return Network("deepfill", f"DeepFill v1 generator, width {meta.get('width', '?')} "
                   f"({entry.name})", entry.task, entry.name, "deepfill", path,
                   multiple=SIZE_MULTIPLE, prefill=meta.get("prefill") == "telea",
                   max_side=deepfill.DEEPFILL_MAX_SIDE)


NETWORK_OF = {"mwcnn": _mwcnn_network, "realesrgan": _rrdbnet_network,
              "esrgan": _rrdbnet_network, "deepfill": _deepfill_network}


def _missing_peers(network: Network, wanted: Sequence[str]) -> dict[str, str]:
    """Why a wanted peer contender has no row for `network` (absent: it has one)."""
    why = {}
    for contender, packages in PEER_PACKAGES.items():
        if contender not in wanted:
            continue
        absent = [p for p in packages if importlib.util.find_spec(p) is None]
        if absent:
            why[contender] = f"not installed ({', '.join(absent)}): pip install -e '.[bench]'"
    if "ncnn" in wanted and network.ncnn is None:
        why["ncnn"] = "no ncnn form of this graph here (RRDBNet only)"
    return why


def plans(task: str, runtime: ModelRuntime, wanted: Sequence[str]) -> list[Plan]:
    """The networks of `task` installed in `runtime`, with their contenders (registry order);
    the classic method joins the first network's rows."""
    if task not in TASK_OPTIONS:
        raise SystemExit(f"no speed benchmark for {task!r} (one of {', '.join(TASK_OPTIONS)})")
    result: list[Plan] = []
    classic: str | None = None
    for entry in registry.restorers(task):
        if entry.slow or not entry.available(runtime.weights_dir):
            continue
        if not entry.weights:
            classic = entry.description
            continue
        network = NETWORK_OF[entry.name](entry, runtime)
        missing = _missing_peers(network, wanted)
        contenders = tuple(c for c in CONTENDERS
                           if c in wanted and c != "classic" and c not in missing)
        result.append(Plan(network, contenders, missing))
    if classic is not None and "classic" in wanted and result:
        first = result[0]
        result[0] = Plan(first.network, (*first.contenders, "classic"), first.missing, classic)
    return result


# --------------------------------------------------------------------------- measuring


@dataclass(frozen=True)
class Row:
    """One contender at one size."""

    network: str
    contender: str
    label: str
    size: int
    times: tuple[float, ...] = ()
    output_pixels: int = 0
    peak_rss: int | None = None
    psnr: float | None = None  # against eager's output (inf: identical)
    note: str = ""  # why it has no numbers

    @property
    def seconds(self) -> float | None:
        return statistics.median(self.times) if self.times else None

    @property
    def megapixels_per_second(self) -> float | None:
        seconds = self.seconds
        return self.output_pixels / 1e6 / seconds if seconds else None

    @property
    def counts(self) -> bool:
        """A faster path counts only when its output is within MIN_PSNR_DB of eager's."""
        return self.seconds is not None and self.psnr is not None and self.psnr >= MIN_PSNR_DB


def rotated(names: Sequence[str], round_index: int) -> list[str]:
    """The order of one round: each round starts one contender further on, so none always
    runs right after the same neighbour (caches, turbo, a neighbour's lingering threads)."""
    if not names:
        return []
    start = round_index % len(names)
    return [*names[start:], *names[:start]]


def _label(plan: Plan, contender: str) -> str:
    if contender == "classic":
        return f"classic ({plan.classic})"
    return LABELS[contender]


def _files(plan: Plan, contender: str, cache_dir: Path) -> tuple[Path, ...]:
    from benchmarks import speed_graphs

    if contender == "onnxruntime":
        return (speed_graphs.onnx_file(plan.network, cache_dir),)
    if contender == "ncnn":
        return speed_graphs.ncnn_files(plan.network, cache_dir)
    return ()


def start_workers(plan: Plan, threads: int, weights_dir: Path, cache_dir: Path,
                  notes: dict[str, str], cpu_time: bool = False) -> dict[str, Worker]:
    """One warm worker per contender; a contender that cannot start gets a note instead."""
    workers: dict[str, Worker] = {}
    for contender in plan.contenders:
        try:
            files = _files(plan, contender, cache_dir)
            spec = Spec(contender, plan.network, threads, weights_dir, files, cache_dir,
                        cpu_time)
            workers[contender] = Worker(spec)
        except (WorkerError, OSError, RuntimeError, ValueError) as err:
            notes[contender] = f"failed to start: {err}"
    return workers


def _psnr(reference: np.ndarray | None, output: np.ndarray) -> float | None:
    if reference is None or reference.shape != output.shape:
        return None
    return metrics.psnr(reference, output)


@dataclass
class Tally:
    """What one contender gave at one size: its warm-up output, round times and peak RSS."""

    output: np.ndarray
    peak_rss: int
    times: list[float] = field(default_factory=list)


def _drop(workers: dict[str, Worker], name: str, err: WorkerError, notes: dict[str, str]) -> None:
    notes[name] = f"failed: {err}"
    workers.pop(name).close()


def rounds_for(call_seconds: Iterable[float], repeats: int) -> int:
    """Rounds for one size: enough for TIMED_S_PER_SIZE of the slowest contender's calls,
    between `repeats` and MAX_ROUNDS."""
    slowest = max(call_seconds, default=0.0)
    wanted = math.ceil(TIMED_S_PER_SIZE / slowest) if slowest > 0 else MAX_ROUNDS
    return max(repeats, min(MAX_ROUNDS, wanted))


def measure_size(workers: dict[str, Worker], task: str, size: int, repeats: int,
                 notes: dict[str, str]) -> dict[str, Tally]:
    """One size, every contender warm: its peak RSS reset, a warm-up call each (its output
    kept for the PSNR), then interleaved rounds of one call each: `repeats`, or more where the
    calls are short (:func:`rounds_for`)."""
    image, mask = bench_input(task, size)
    tallies: dict[str, Tally] = {}
    warm_up_s: dict[str, float] = {}
    for name in list(workers):
        try:
            workers[name].reset_peak()
            first = workers[name].run(image, mask, keep=True)
        except WorkerError as err:
            _drop(workers, name, err, notes)
            continue
        assert first.output is not None
        tallies[name] = Tally(first.output, first.peak_rss)
        warm_up_s[name] = first.seconds
    for round_index in range(rounds_for(warm_up_s.values(), repeats)):
        for name in rotated([n for n in tallies if n in workers], round_index):
            time.sleep(SETTLE_S)
            try:
                call = workers[name].run(image, mask)
            except WorkerError as err:
                _drop(workers, name, err, notes)
                continue
            tallies[name].times.append(call.seconds)
            tallies[name].peak_rss = max(tallies[name].peak_rss, call.peak_rss)
    return {name: tally for name, tally in tallies.items() if name in workers}


def size_rows(plan: Plan, size: int, tallies: dict[str, Tally], notes: dict[str, str],
              ) -> list[Row]:
    """The table's rows of one size: numbers where a contender ran, else why not."""
    eager = tallies.get("eager")
    reference = eager.output if eager else None
    rows = []
    for contender in CONTENDERS:
        label, tally = _label(plan, contender), tallies.get(contender)
        if tally is not None:
            pixels = tally.output.shape[0] * tally.output.shape[1]
            rows.append(Row(plan.network.label, contender, label, size, tuple(tally.times),
                            pixels, tally.peak_rss, _psnr(reference, tally.output)))
        elif contender in plan.contenders or contender in plan.missing:
            why = notes.get(contender) or plan.missing.get(contender) or "did not run"
            rows.append(Row(plan.network.label, contender, label, size, note=why))
    return rows


def measure(plan: Plan, sizes: Sequence[int], repeats: int, threads: int, weights_dir: Path,
            cache_dir: Path, cpu_time: bool = False) -> list[Row]:
    """Every contender of `plan` at every size, each in its own warm worker."""
    notes: dict[str, str] = {}
    workers = start_workers(plan, threads, weights_dir, cache_dir, notes, cpu_time)
    rows: list[Row] = []
    try:
        for size in sizes:
            tallies = measure_size(workers, plan.network.task, size, repeats, notes)
            rows += size_rows(plan, size, tallies, notes)
    finally:
        for worker in workers.values():
            worker.close()
    return rows


# --------------------------------------------------------------------------- the table


NUMBERS = (f"{'size':>6}{'median s':>10}{'out MP/s':>10}{'peak RSS MiB':>14}{'PSNR dB':>12}"
           f"{'×eager':>8}")


def _speedup(row: Row, eager: Row | None) -> float | None:
    """eager's seconds ÷ the row's: how many times faster than eager it is."""
    if eager is None or eager.seconds is None or not row.seconds:
        return None
    return eager.seconds / row.seconds


def _psnr_cell(row: Row) -> str:
    if row.contender == "eager":
        return "ref"
    if row.psnr is None:
        return "-"
    mark = "≥50" if row.counts else "<50"
    return "inf ≥50" if row.psnr == float("inf") else f"{row.psnr:.1f} {mark}"


def format_row(row: Row, eager: Row | None, width: int = 44) -> str:
    head = f"{row.label:<{width}}{f'{row.size}²':>6}"
    if row.seconds is None:
        return f"{head}  n/a: {row.note}"
    speedup = _speedup(row, eager)
    rss = f"{row.peak_rss / 2**20:.0f}" if row.peak_rss else "-"
    return (f"{head}{row.seconds:>10.3f}{row.megapixels_per_second or 0:>10.3f}{rss:>14}"
            f"{_psnr_cell(row):>12}{f'{speedup:.2f}' if speedup else '-':>8}")


def format_network(label: str, rows: Sequence[Row]) -> list[str]:
    """One network's block of the table: a title, a header, a row per contender and size."""
    width = max([len("contender"), *(len(r.label) for r in rows)]) + 2
    header = f"{'contender':<{width}}{NUMBERS}"
    lines = [f"== {label}", header, "-" * len(header)]
    for row in rows:
        eager = next((r for r in rows if r.size == row.size and r.contender == "eager"), None)
        lines.append(format_row(row, eager, width))
    return lines


def _by_network_and_size(rows: Sequence[Row]) -> dict[tuple[str, int], list[Row]]:
    groups: dict[tuple[str, int], list[Row]] = {}
    for row in rows:
        groups.setdefault((row.network, row.size), []).append(row)
    return groups


def _fastest_verdict(network: str, cells: list[tuple[int, list[Row]]]) -> str:
    """`network: Restora fastest at every size`, or where another counted row beat it."""
    beaten = []
    for size, group in cells:
        restora = next((r for r in group if r.contender == "restora"), None)
        if restora is None or restora.seconds is None:
            beaten.append(f"{size}²: no Restora row")
            continue
        if not restora.counts:
            beaten.append(f"{size}²: Restora below {MIN_PSNR_DB:g} dB")
            continue
        rivals = [r for r in group if r.counts and r.contender != "restora"
                  and r.seconds is not None and r.seconds < restora.seconds]
        if rivals:
            best = min(rivals, key=lambda r: r.seconds or 0.0)
            assert best.seconds is not None
            beaten.append(f"{size}²: {best.label} ({restora.seconds / best.seconds:.2f}× "
                          "faster than Restora)")
    return f"{network}: " + ("Restora fastest at every size" if not beaten
                             else "not fastest: " + ", ".join(beaten))


def summarize(rows: Sequence[Row]) -> str:
    """The table's last line: the smallest speedup of Restora's path over eager (eager s ÷
    Restora s, over every network and size) and, per network, whether Restora's row is the
    fastest of the rows at ≥ MIN_PSNR_DB (eager's counts: it is the reference)."""
    groups = _by_network_and_size(rows)
    speedups = []
    for (network, size), group in groups.items():
        eager = next((r for r in group if r.contender == "eager"), None)
        restora = next((r for r in group if r.contender == "restora"), None)
        if restora is not None and (ratio := _speedup(restora, eager)) is not None:
            speedups.append((ratio, network, size))
    if speedups:
        ratio, network, size = min(speedups)
        head = f"smallest Restora speedup over eager: {ratio:.2f}× ({network}, {size}²)"
    else:
        head = "smallest Restora speedup over eager: - (no eager and Restora rows)"
    per_network: dict[str, list[tuple[int, list[Row]]]] = {}
    for (network, size), group in groups.items():
        per_network.setdefault(network, []).append((size, group))
    verdicts = [_fastest_verdict(network, cells) for network, cells in per_network.items()]
    return f"{head}; fastest row at ≥ {MIN_PSNR_DB:g} dB: " + "; ".join(verdicts)


def result_json(row: Row) -> dict[str, object]:
    """One row for --json: its fields and derived numbers (an identical output's PSNR is
    "inf", which strict JSON has no number for)."""
    psnr = "inf" if row.psnr == float("inf") else row.psnr
    return {**asdict(row), "psnr": psnr, "seconds": row.seconds, "counts": row.counts,
            "megapixels_per_second": row.megapixels_per_second}


def legacy_rows(rows: Sequence[Row]) -> dict[str, dict[str, float]]:
    """`{"network / contender": {"size": median seconds}}`: the JSON's former `rows`."""
    out: dict[str, dict[str, float]] = {}
    for row in rows:
        if row.seconds is not None:
            out.setdefault(f"{row.network} / {row.label}", {})[str(row.size)] = row.seconds
    return out


# --------------------------------------------------------------------------- main


def _tasks(text: str) -> list[str]:
    tasks = list(TASK_OPTIONS) if text == "all" else text.split(",")
    for task in tasks:
        if task not in TASK_OPTIONS:
            raise SystemExit(f"no speed benchmark for {task!r} (one of "
                             f"{', '.join(TASK_OPTIONS)}, or all)")
    return tasks


def _contenders(text: str) -> list[str]:
    wanted = text.split(",")
    unknown = set(wanted) - set(CONTENDERS)
    if unknown:
        raise SystemExit(f"unknown contenders {sorted(unknown)} (of {', '.join(CONTENDERS)})")
    return wanted


def main(argv: list[str] | None = None) -> int:
    from benchmarks.speed_graphs import default_cache_dir

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="denoise", help="a task, a comma list, or all")
    parser.add_argument("--sizes", help=f"input sides (default {FALLBACK_SIZES}; superres "
                                        f"{DEFAULT_SIZES['superres']})")
    parser.add_argument("--repeats", type=int, default=3, help="timed rounds per size")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--contenders", default=",".join(CONTENDERS))
    parser.add_argument("--cache-dir", type=Path, default=default_cache_dir(),
                        help="where exports are kept (onnx/, ncnn/)")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--cpu-time", action="store_true",
                        help="CPU seconds of each worker instead of wall-clock ones: with "
                             "--threads 1, what the work costs on a machine busy with other jobs")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)  # this process only exports; the workers measure
    wanted = _contenders(args.contenders)
    runtime = ModelRuntime(registry.SHIPPED_WEIGHTS_DIR, torch.device("cpu"))
    preload = os.environ.get("LD_PRELOAD", "") or "none"
    print(f"cpu={accel.cpu_model()} threads={args.threads} "
          f"native_bf16={accel.cpu_has_native_bf16()} LD_PRELOAD={preload} "
          f"repeats={args.repeats} torch={torch.__version__} "
          f"clock={'cpu' if args.cpu_time else 'wall'}", flush=True)
    rows: list[Row] = []
    for task in _tasks(args.task):
        sizes = [int(s) for s in (args.sizes or DEFAULT_SIZES.get(task, FALLBACK_SIZES))
                 .split(",")]
        for plan in plans(task, runtime, wanted):
            measured = measure(plan, sizes, args.repeats, args.threads, runtime.weights_dir,
                               args.cache_dir, args.cpu_time)
            print("\n".join(format_network(plan.network.label, measured)), flush=True)
            rows += measured
    summary = summarize(rows)
    print(summary)
    if args.json:
        args.json.write_text(json.dumps({
            "task": args.task, "preload": preload, "threads": args.threads,
            "repeats": args.repeats, "cpu": accel.cpu_model(), "rows": legacy_rows(rows),
            "results": [result_json(r) for r in rows],
            "summary": summary,
        }, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
