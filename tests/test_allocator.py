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
faults = []

def churn():
    for _ in range(10):  # a tile's activations: 96 MiB written, then freed
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        block = np.empty(96 * 1024 * 1024, dtype=np.uint8)
        block.fill(1)
        del block
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)

if sys.argv[2] == "thread":  # as a service runs inference, off its event loop
    worker = threading.Thread(target=churn)
    worker.start()
    worker.join()
else:
    churn()
print(applied, faults[0], sum(faults[1:]))
"""


def _page_faults(mode: str, where: str) -> tuple[bool, int, int]:
    """Whether the tuning applied, the faults of the first block, those of the nine after it."""
    out = subprocess.run([sys.executable, "-c", CHURN, mode, where],
                         capture_output=True, text=True, check=True).stdout.split()
    return out[0] == "True", int(out[1]), int(out[2])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
@pytest.mark.parametrize("where", ["main", "thread"])
def test_freed_blocks_are_reused_instead_of_faulted_in_again(where: str) -> None:
    # How many faults a block costs depends on the page size and on huge pages being free, so
    # each run compares its later blocks with its own first one.
    applied, first, later = _page_faults("reuse", where)
    assert applied
    assert later < first, (first, later)  # reused: the nine later blocks together cost < one
    _, first, later = _page_faults("default", where)
    assert later > 5 * first, (first, later)  # by default each is mapped and faulted anew
