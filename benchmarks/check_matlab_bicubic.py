"""Check `training.matlab_resize.imresize` against the benchmark LR images: Set5 and Set14
`LR_bicubic/X4` were made by MATLAB `imresize(hr, 1/4, 'bicubic')` on uint8 HR.

    python -m benchmarks.check_matlab_bicubic [--data ../shared/data]

Prints per-image max/mean absolute difference; exits 1 if any max exceeds one grey level.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from training.matlab_resize import imresize

SCALE = 4
REPO_ROOT = Path(__file__).resolve().parent.parent


def load(path: Path) -> np.ndarray:
    img = Image.open(path)
    return np.asarray(img.convert("RGB") if img.mode not in ("L", "RGB") else img)


def check_set(set_dir: Path) -> list[tuple[str, int, float]]:
    rows = []
    for hr_path in sorted((set_dir / "HR").glob("*.png")):
        lr_path = set_dir / "LR_bicubic" / f"X{SCALE}" / f"{hr_path.stem}x{SCALE}.png"
        hr, lr = load(hr_path), load(lr_path)
        # Crop HR to SCALE × the LR size (some HR sizes are not multiples of 4).
        hr = hr[: lr.shape[0] * SCALE, : lr.shape[1] * SCALE]
        ours = imresize(hr, 1 / SCALE)
        diff = np.abs(ours.astype(np.int16) - lr.astype(np.int16))
        rows.append((f"{set_dir.name}/{hr_path.stem}", int(diff.max()), float(diff.mean())))
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=REPO_ROOT / ".." / "shared" / "data")
    args = parser.parse_args(argv)
    rows = []
    for name in ("Set5", "Set14"):
        rows += check_set(args.data / "testsets" / name)
    print(f"{'image':24s} {'max|d|':>6s} {'mean|d|':>8s}")
    for name, mx, mean in rows:
        print(f"{name:24s} {mx:6d} {mean:8.4f}")
    worst = max(mx for _, mx, _ in rows)
    print(f"worst max abs diff: {worst} over {len(rows)} images")
    return 0 if worst <= 1 else 1


if __name__ == "__main__":
    sys.exit(main())
