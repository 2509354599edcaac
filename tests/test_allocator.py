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


SERVICE_THREADS = """
import concurrent.futures, resource
import torch
from shared.platform.bootstrap import configure_process
from shared.platform.config import ModelServiceSettings, load_settings

configure_process("denoise", load_settings(ModelServiceSettings, {}))
torch.set_num_threads(1)
conv = torch.nn.Conv2d(16, 16, 3, padding=1).eval()
image = torch.rand(1, 16, 1024, 1024)  # activations of 64 MiB: more than one heap of an arena

def job():  # on a worker thread, as a service infers off its event loop
    before = resource.getrusage(resource.RUSAGE_THREAD).ru_minflt
    with torch.no_grad():
        conv(conv(image))
    return resource.getrusage(resource.RUSAGE_THREAD).ru_minflt - before

pool = concurrent.futures.ThreadPoolExecutor(4)
faults = []
for n in range(8):
    for _ in range(n % 3):  # other work lands in between, so jobs run on different threads
        pool.submit(lambda: None).result()
    faults.append(pool.submit(job).result())
print(*faults)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_a_model_service_infers_on_any_thread_without_faulting_its_memory_in_again() -> None:
    # Tuned before logging, tracing and metrics start their threads, every inference thread
    # allocates from the main arena, whose freed blocks stay. Tuned after them (measured),
    # the threads took those threads' arenas in turn, which map blocks this large afresh and
    # unmap them when freed: every job faulted ~49,000 pages in again.
    faults = [int(n) for n in subprocess.run(
        [sys.executable, "-c", SERVICE_THREADS], capture_output=True, text=True, check=True,
    ).stdout.split()]
    one_activation_pages = 64 * 1024 * 1024 // 4096
    assert sum(faults[2:]) < one_activation_pages, faults
