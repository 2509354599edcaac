"""Working memory per input pixel of a tile, per network and precision: what the tiler's
`pixel_cost` must cover.

`python -m benchmarks.tile_memory [--sizes 128,256] [--networks mwcnn-denoise,esrgan,...]`

Every measurement runs in a fresh subprocess: it loads the network, runs one small warm-up
tile, reads its current RSS, runs one `side`² tile the way the tiler does (channels-last,
`inference_mode`, bf16 autocast where asked, fp32 out) and reports the growth of the peak RSS
(`ru_maxrss`) over that RSS, divided by the tile's input pixels. Real-ESRGAN x4plus is
measured with randomly initialised weights when its file is not installed: memory does not
depend on the weights' values. Numbers, not assertions.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import torch

NETWORKS = ("mwcnn-denoise", "mwcnn-denoise-gray", "esrgan", "realesrgan", "deepfill")
WEIGHTS = Path(__file__).resolve().parents[1] / "weights"


def _rss_bytes() -> int:
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * resource.getpagesize()


def _network(name: str) -> tuple[Callable[[torch.Tensor], torch.Tensor], int]:
    """A forward taking a 1×C×h×w channels-last tile, and the network's input channels."""
    from shared.ml.inference import prepare_for_inference

    cpu = torch.device("cpu")
    if name.startswith("mwcnn"):
        from shared.ml.models.mwcnn import fold_batchnorm, level_from_sigma, load_mwcnn

        mw = prepare_for_inference(fold_batchnorm(load_mwcnn(WEIGHTS / f"{name}.safetensors")), cpu)
        level = level_from_sigma(25.0)
        return (lambda x: mw(x, level)), mw.config.in_channels
    if name in ("esrgan", "realesrgan"):
        from shared.ml.models.esrgan import RRDBNet, load_rrdbnet

        path = WEIGHTS / ("esrgan-psnr.safetensors" if name == "esrgan"
                          else "realesrgan-x4plus.safetensors")
        rrdb = load_rrdbnet(path) if path.is_file() else RRDBNet()  # 23 × 64, ×4
        return prepare_for_inference(rrdb, cpu), 3
    if name == "deepfill":
        from shared.ml.restorers.deepfill import build_deepfill

        fill = build_deepfill(str(WEIGHTS / "deepfill-contextual-attention.safetensors"), cpu)

        def forward(x: torch.Tensor) -> torch.Tensor:
            hole = torch.zeros_like(x[:, :1])
            hole[..., x.shape[-2] // 4 : x.shape[-2] // 2, x.shape[-1] // 4 : x.shape[-1] // 2] = 1
            return fill(x, hole)[1]

        return forward, 3
    raise SystemExit(f"unknown network {name!r}")


def measure(name: str, side: int, bf16: bool) -> dict[str, float]:
    """One measurement in this process (call it in a fresh one)."""
    from shared.ml import accel

    torch.set_num_threads(2)
    forward, channels = _network(name)

    def run(size: int) -> None:
        x = torch.rand(1, channels, size, size).contiguous(memory_format=torch.channels_last)
        with torch.inference_mode(), accel.autocast_for(torch.device("cpu"), enabled=bf16):
            forward(x).float()

    run(32)
    before = _rss_bytes()
    peak_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    run(side)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"growth": peak - before, "per_pixel": (peak - before) / side**2,
            "peak_before": peak_before, "rss_before": before}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="128,256")
    parser.add_argument("--networks", default=",".join(NETWORKS))
    parser.add_argument("--one", help=argparse.SUPPRESS)  # name:side:bf16, in the subprocess
    args = parser.parse_args(argv)
    if args.one:
        name, side, bf16 = args.one.split(":")
        print(json.dumps(measure(name, int(side), bf16 == "1")))
        return 0
    from shared.ml import accel

    sizes = [int(s) for s in args.sizes.split(",")]
    precisions = [False, True] if accel.use_bf16(torch.device("cpu")) else [False]
    print(f"cpu={accel.cpu_model()} native_bf16={accel.cpu_has_native_bf16()} "
          f"torch={torch.__version__}")
    header = f"{'network':<22}{'precision':<10}" + "".join(f"{f'{s}² KiB/px':>14}" for s in sizes)
    print(header)
    print("-" * len(header))
    for name in args.networks.split(","):
        for bf16 in precisions:
            cells = []
            for side in sizes:
                done = subprocess.run(
                    [sys.executable, "-m", "benchmarks.tile_memory", "--one",
                     f"{name}:{side}:{int(bf16)}"],
                    capture_output=True, text=True, check=True,
                )
                result = json.loads(done.stdout.strip().splitlines()[-1])
                cells.append(f"{result['per_pixel'] / 1024:>14.2f}")
            print(f"{name:<22}{'bf16' if bf16 else 'fp32':<10}" + "".join(cells), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
