"""Freed memory stays in the heap for the next tile (shared/ml/allocator.py)."""

from __future__ import annotations

import subprocess
import sys

import pytest

CHURN = """
import resource, sys
import numpy as np
from shared.ml.allocator import keep_freed_memory
applied = keep_freed_memory() if sys.argv[1] == "reuse" else False
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(20):  # a tile's activations: 64 MiB written, then freed
    block = np.empty(64 * 1024 * 1024, dtype=np.uint8)
    block.fill(1)
    del block
print(applied, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _page_faults(mode: str) -> tuple[bool, int]:
    out = subprocess.run([sys.executable, "-c", CHURN, mode], capture_output=True, text=True,
                         check=True).stdout.split()
    return out[0] == "True", int(out[1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_freed_blocks_are_reused_instead_of_faulted_in_again() -> None:
    applied, reused = _page_faults("reuse")
    assert applied
    _, default = _page_faults("default")
    # by default every block is mapped and faulted in anew (how many faults a block costs
    # depends on the kernel's page size and huge pages); reused, only the first one is
    assert default > 5 * reused, (default, reused)
