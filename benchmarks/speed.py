"""Inference speed: Restora's path against the plain reference way of running the same network.

`python -m benchmarks.speed --task denoise [--sizes 256,512] [--repeats 3] [--json PATH]`

Rows, for the task's shipped network (random weights of the shipped shape when none ship):
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

from shared.ml import accel
from shared.ml.catalog import DEFAULT_WEIGHTS_DIR
from shared.ml.inference import LoadedNetwork, prepare_for_inference, run_network

Runner = Callable[[np.ndarray], np.ndarray]


def _mwcnn(task: str) -> tuple[torch.nn.Module, Callable, LoadedNetwork]:
    from services.denoise.networks import ARTIFACTS_WEIGHTS, DENOISE_WEIGHTS, MWCNN_PIXEL_COST
    from shared.ml.models.mwcnn import MWCNN, MWCNNConfig, load_mwcnn

    name = DENOISE_WEIGHTS if task == "denoise" else ARTIFACTS_WEIGHTS
    path = DEFAULT_WEIGHTS_DIR / name
    model = load_mwcnn(path) if path.is_file() else MWCNN(MWCNNConfig(widths=(32, 64, 64)))
    model.eval()
    network = LoadedNetwork(
        prepare_for_inference(model, torch.device("cpu")),
        torch.device("cpu"),
        "bench",
        3,
        1,
        8,
        MWCNN_PIXEL_COST,
    )
    return model, lambda x: model(x, 25 / 255), network


def _esrgan() -> tuple[torch.nn.Module, Callable, LoadedNetwork]:
    from services.superres.networks import PSNR_WEIGHTS, RRDBNET_PIXEL_COST
    from shared.ml.models.esrgan import RRDBNet, load_rrdbnet

    path = DEFAULT_WEIGHTS_DIR / PSNR_WEIGHTS
    model = load_rrdbnet(path) if path.is_file() else RRDBNet(features=32, blocks=4)
    network = LoadedNetwork(
        prepare_for_inference(model, torch.device("cpu")),
        torch.device("cpu"),
        "bench",
        3,
        4,
        1,
        RRDBNET_PIXEL_COST,
    )
    return model, model, network


def _reference(model: torch.nn.Module, forward: Callable, multiple: int) -> Runner:
    def run(image: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(image.astype(np.float32).transpose(2, 0, 1)[None] / 255.0)
        h, w = x.shape[-2:]
        x = torch.nn.functional.pad(x, (0, -w % multiple, 0, -h % multiple), mode="reflect")
        with torch.no_grad():
            y = forward(x.contiguous())
        return y[0].clamp(0, 1).mul(255).round().byte().permute(1, 2, 0).numpy()

    return run


def runners(task: str) -> dict[str, Runner]:
    if task in ("denoise", "artifacts"):
        from services.denoise.classic import nlm_deblock, nlm_denoise

        model, forward, network = _mwcnn(task)
        classic: Runner = (
            (lambda im: nlm_denoise(im, 25))
            if task == "denoise"
            else (lambda im: nlm_deblock(im, 20))
        )
        plain = prepare_plain(model)
        return {
            "reference (eager fp32 NCHW, whole image)": _reference(
                plain, lambda x: plain(x, 25 / 255), 8
            ),
            "restora (tiled, channels-last, inference_mode)": lambda im: run_network(
                network, im, forward
            ),
            "classic (OpenCV NLM)": classic,
        }
    if task == "superres":
        from services.superres.core import bicubic_upscale

        model, _, network = _esrgan()
        plain = prepare_plain(model)
        return {
            "reference (eager fp32 NCHW, whole image)": _reference(plain, plain, 1),
            "restora (tiled, channels-last, inference_mode)": lambda im: run_network(network, im),
            "classic (bicubic)": lambda im: bicubic_upscale(im, 4),
        }
    raise SystemExit(f"no speed benchmark for {task!r} yet")


def prepare_plain(model: torch.nn.Module) -> torch.nn.Module:
    """A separate NCHW copy, so the reference never benefits from our memory format."""
    import copy

    plain = copy.deepcopy(model).eval()
    return plain.to(memory_format=torch.contiguous_format)


def time_runner(run: Runner, image: np.ndarray, repeats: int) -> float:
    run(image)  # warm-up: allocator, oneDNN primitive cache
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run(image)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="denoise")
    parser.add_argument("--sizes", default="256,512")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    sizes = [int(s) for s in args.sizes.split(",")]
    rng = np.random.default_rng(0)
    table = runners(args.task)
    preload = os.environ.get("LD_PRELOAD", "") or "none"
    print(
        f"task={args.task} cpu={accel.cpu_model()} threads={args.threads} "
        f"native_bf16={accel.cpu_has_native_bf16()} LD_PRELOAD={preload}"
    )
    header = f"{'method':<48}" + "".join(f"{f'{s}×{s} (s)':>14}" for s in sizes)
    print(header)
    print("-" * len(header))
    results: dict[str, dict[str, float]] = {}
    for name, run in table.items():
        row = {}
        for size in sizes:
            image = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
            row[str(size)] = time_runner(run, image, args.repeats)
        results[name] = row
        print(f"{name:<48}" + "".join(f"{row[str(s)]:>14.3f}" for s in sizes))
    if args.json:
        args.json.write_text(json.dumps({"task": args.task, "preload": preload, "rows": results}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
