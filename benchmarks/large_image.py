"""Peak memory and kernel-time share of one large restoration through the registry.

`python -m benchmarks.large_image [--task superres --model esrgan --size 1500x1000]`

Runs the restoration once in this process (network loaded first, outside the measurement
window for time) and prints the peak RSS (`ru_maxrss`), user and system CPU seconds, the
system share, and the minor/major page faults of the restoration itself. Numbers, not
assertions; the time split, not the wall time, is what to compare on a busy machine.
"""

from __future__ import annotations

import argparse
import resource

import numpy as np
import torch

from shared.ml import registry
from shared.ml.allocator import keep_freed_memory
from shared.ml.restorers.common import RestoreJob
from shared.ml.runtime import ModelRuntime

OPTIONS: dict[str, dict[str, object]] = {
    "superres": {"scale": 4},
    "denoise": {"sigma": 25.0},
    "artifacts": {"quality": 20},
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="superres")
    parser.add_argument("--model", default="esrgan")
    parser.add_argument("--size", default="1500x1000", help="WIDTHxHEIGHT of the input")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--tile-budget-mb", type=int, default=0,
                        help="as RESTORA_TILE_BUDGET_MB (0: a share of free memory)")
    parser.add_argument("--no-reuse-memory", action="store_true",
                        help="leave glibc's malloc as it is (RESTORA_REUSE_MEMORY=false)")
    args = parser.parse_args(argv)
    reuse = not args.no_reuse_memory and keep_freed_memory()
    torch.set_num_threads(args.threads)
    width, height = (int(v) for v in args.size.split("x"))
    runtime = ModelRuntime(registry.SHIPPED_WEIGHTS_DIR, torch.device("cpu"),
                           tile_budget_mb=args.tile_budget_mb)
    rng = np.random.default_rng(0)
    # A smooth photo-like image (noise would be just as large, but less like a photo).
    base = rng.integers(0, 256, (height // 16 + 2, width // 16 + 2, 3)).astype(np.float32)
    image = np.kron(base, np.ones((16, 16, 1), np.float32))[:height, :width].astype(np.uint8)
    # Warm-up on a small image: the network loads and the precision probe runs outside.
    registry.restore(runtime, args.task, args.model, RestoreJob(image[:64, :64],
                                                                **OPTIONS[args.task]))
    before = resource.getrusage(resource.RUSAGE_SELF)
    out = registry.restore(runtime, args.task, args.model,
                           RestoreJob(image, **OPTIONS[args.task])).pixels
    after = resource.getrusage(resource.RUSAGE_SELF)
    user, system = after.ru_utime - before.ru_utime, after.ru_stime - before.ru_stime
    print(f"{args.task}/{args.model} {width}×{height} → {out.shape[1]}×{out.shape[0]} "
          f"({out.shape[0] * out.shape[1] / 1e6:.1f} MP); freed memory reused: {reuse}; "
          f"tile budget {args.tile_budget_mb or 'from free memory'} MB")
    print(f"peak RSS {after.ru_maxrss / 1024:.0f} MiB; user {user:.1f} s, system {system:.1f} s "
          f"(system share {system / (user + system):.1%}); page faults minor "
          f"{after.ru_minflt - before.ru_minflt}, major {after.ru_majflt - before.ru_majflt}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
