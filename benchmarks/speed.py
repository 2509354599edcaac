"""Inference speed: Restora's path against the plain reference way of running the same network.

`python -m benchmarks.speed --task denoise [--sizes 256,512] [--repeats 3] [--threads N]
[--cpu-time] [--json PATH]`

Rows, from the registry, for each installed network of the task (named by its model) and its
classic method:
- `reference`: what the papers' test scripts do: the whole image in one eager fp32 NCHW call
  under `torch.no_grad()`;
- `restora`: the service's path: `inference_mode`, channels-last, the shared tiler with
  memory-sized tiles, bf16 only where the CPU has it natively (and it keeps ≥ 50 dB);
- `classic`: the task's classic method, for scale.
Run it with no other load on the machine (stop training first), and once with
`LD_PRELOAD=libjemalloc.so.2` to see the allocator's effect. Numbers, not assertions.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from shared.ml import accel, registry
from shared.ml.restorers.common import RestoreJob
from shared.ml.runtime import ModelRuntime

Runner = Callable[[np.ndarray], np.ndarray]
#: The options every row runs with: one noise level, one JPEG quality, ×4.
TASK_OPTIONS: dict[str, dict[str, object]] = {
    "denoise": {"sigma": 25.0},
    "artifacts": {"quality": 20},
    "superres": {"scale": 4},
}


Forward = Callable[[torch.Tensor], torch.Tensor]
NAME_WIDTH = 62  # "realesrgan: restora (tiled, channels-last, inference_mode)"


def _eager_network(
    runtime: ModelRuntime, task: str, model: str
) -> tuple[torch.nn.Module, Callable[[torch.nn.Module], Forward], int]:
    """`model`'s loaded network, how to call a module like it, and its size multiple."""
    if task == "superres":
        from shared.ml.restorers import esrgan, realesrgan

        loader = realesrgan.load_network if model == "realesrgan" else esrgan.load_network
        return loader(runtime).module, lambda m: m, 1
    from shared.ml.models.mwcnn import level_from_quality, level_from_sigma
    from shared.ml.restorers import mwcnn

    weights = mwcnn.DENOISE_WEIGHTS if task == "denoise" else mwcnn.ARTIFACTS_WEIGHTS
    level = level_from_sigma(25.0) if task == "denoise" else level_from_quality(20)
    return mwcnn.load_network(runtime, weights).module, lambda m: lambda x: m(x, level), 8


def _reference(forward: Forward, multiple: int) -> Runner:
    def run(image: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(image.astype(np.float32).transpose(2, 0, 1)[None] / 255.0)
        h, w = x.shape[-2:]
        x = torch.nn.functional.pad(x, (0, -w % multiple, 0, -h % multiple), mode="reflect")
        with torch.no_grad():
            y = forward(x.contiguous())
        return y[0].clamp(0, 1).mul(255).round().byte().permute(1, 2, 0).numpy()

    return run


def _through_registry(runtime: ModelRuntime, task: str, model: str) -> Runner:
    options = TASK_OPTIONS[task]
    return lambda im: registry.restore(runtime, task, model, RestoreJob(im, **options)).pixels


def runners(task: str) -> dict[str, Runner]:
    """Rows for `task`: each installed network (eager reference and Restora's path, named by
    the model: superres has realesrgan's 23 × 64 RRDBNet and esrgan's 4 × 32) and its classic
    method, all from the registry."""
    if task not in TASK_OPTIONS:
        raise SystemExit(f"no speed benchmark for {task!r} yet")
    runtime = ModelRuntime(registry.SHIPPED_WEIGHTS_DIR, torch.device("cpu"))
    rows: dict[str, Runner] = {}
    for entry in registry.restorers(task):
        if entry.slow or not entry.available(runtime.weights_dir):
            continue
        if not entry.weights:
            rows[f"classic ({entry.description})"] = _through_registry(runtime, task, entry.name)
            continue
        module, forward_of, multiple = _eager_network(runtime, task, entry.name)
        plain = prepare_plain(module)
        rows[f"{entry.name}: reference (eager fp32 NCHW, whole image)"] = _reference(
            forward_of(plain), multiple)
        rows[f"{entry.name}: restora (tiled, channels-last, inference_mode)"] = (
            _through_registry(runtime, task, entry.name))
    return rows


def prepare_plain(model: torch.nn.Module) -> torch.nn.Module:
    """A separate NCHW copy, so the reference never benefits from our memory format."""
    import copy

    plain = copy.deepcopy(model).eval()
    return plain.to(memory_format=torch.contiguous_format)


def time_runner(
    run: Runner, image: np.ndarray, repeats: int, clock: Callable[[], float] = time.perf_counter
) -> float:
    run(image)  # warm-up: allocator, oneDNN primitive cache
    times = []
    for _ in range(repeats):
        start = clock()
        run(image)
        times.append(clock() - start)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="denoise")
    parser.add_argument("--sizes", default="256,512")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--json", type=Path)
    parser.add_argument(
        "--cpu-time",
        action="store_true",
        help="CPU seconds of this process instead of wall-clock ones: with --threads 1, what "
        "the work costs even on a machine busy with other jobs (e.g. the registry's costs)",
    )
    args = parser.parse_args(argv)
    clock = time.process_time if args.cpu_time else time.perf_counter
    torch.set_num_threads(args.threads)
    sizes = [int(s) for s in args.sizes.split(",")]
    rng = np.random.default_rng(0)
    table = runners(args.task)
    preload = os.environ.get("LD_PRELOAD", "") or "none"
    print(
        f"task={args.task} cpu={accel.cpu_model()} threads={args.threads} "
        f"native_bf16={accel.cpu_has_native_bf16()} LD_PRELOAD={preload} "
        f"clock={'cpu' if args.cpu_time else 'wall'}"
    )
    header = f"{'method':<{NAME_WIDTH}}" + "".join(f"{f'{s}×{s} (s)':>14}" for s in sizes)
    print(header)
    print("-" * len(header))
    results: dict[str, dict[str, float]] = {}
    for name, run in table.items():
        row = {}
        for size in sizes:
            image = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
            row[str(size)] = time_runner(run, image, args.repeats, clock)
        results[name] = row
        print(f"{name:<{NAME_WIDTH}}" + "".join(f"{row[str(s)]:>14.3f}" for s in sizes))
    if args.json:
        args.json.write_text(json.dumps({"task": args.task, "preload": preload,
                                         "threads": args.threads, "cpu_time": args.cpu_time,
                                         "rows": results}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
