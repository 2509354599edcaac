"""Freed memory stays in the heap for the next tile (shared/ml/allocator.py)."""

from __future__ import annotations

import subprocess
import sys

import pytest

CHURN = """
import resource, sys, threading
import numpy as np
from shared.ml.allocator import keep_freed_memory
applied = keep_freed_memory() if sys.argv[1] == "reuse" else False
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt

def churn():
    for _ in range(int(sys.argv[3])):  # a tile's activations: 96 MiB written, then freed
        block = np.empty(96 * 1024 * 1024, dtype=np.uint8)
        block.fill(1)
        del block

if sys.argv[2] == "thread":  # as a service runs inference, off its event loop
    worker = threading.Thread(target=churn)
    worker.start()
    worker.join()
else:
    churn()
print(applied, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _page_faults(mode: str, where: str, blocks: int) -> tuple[bool, int]:
    out = subprocess.run([sys.executable, "-c", CHURN, mode, where, str(blocks)],
                         capture_output=True, text=True, check=True).stdout.split()
    return out[0] == "True", int(out[1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
@pytest.mark.parametrize("where", ["main", "thread"])
def test_freed_blocks_are_reused_instead_of_faulted_in_again(where: str) -> None:
    applied, reused_2 = _page_faults("reuse", where, 2)
    _, reused_20 = _page_faults("reuse", where, 20)
    assert applied
    # reused, only the first block is faulted in, however many follow (how many faults a
    # block costs depends on the kernel's page size and huge pages)
    assert reused_20 < 1.5 * reused_2, (reused_2, reused_20)
    _, default_2 = _page_faults("default", where, 2)
    _, default_20 = _page_faults("default", where, 20)
    assert default_20 > 5 * default_2, (default_2, default_20)  # by default, every one anew
