"""What a job will cost, estimated from the image's size before a pixel is decoded.

The unit is the registry's: about a second of a 2-core CPU. A job costs its restorer's
`cost_per_megapixel` times the megapixels the restorer works on (after a `max_side` shrink;
superres counts its output; a restorer working on a bounded window stops growing there), times
8 for the ensemble, times the share of its default iterations asked for, plus the handling every
job pays per input megapixel (decoding, converting, encoding the result and its renditions).
A chain of fixes costs the sum of its steps (each on the previous step's output: superres,
which multiplies the pixels, is always last, so every step before it works on the input size).
Pure: the gateway refuses a job over its budget with it, and says what `max_side` would fit.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

from shared.ml.imaging import shrunk_size
from shared.ml.registry import MAX_SIDE_RANGE, Restorer

#: Decoding, converting and encoding, per input megapixel (every task pays it).
HANDLING_COST_PER_MEGAPIXEL = 0.4
#: `ensemble=true` runs the network over 8 flips/rotations.
ENSEMBLE_PASSES = 8
#: The tasks whose work grows with their output: superres makes scale² as many pixels.
OUTPUT_SIZED_TASKS = frozenset({"superres"})


@dataclass(frozen=True)
class CostEstimate:
    units: float
    size: tuple[int, int]  # (width, height) the job starts from, after `max_side`
    work_megapixels: float  # what the restorer works on (superres: its output)


@dataclass(frozen=True)
class JobShape:
    """What the estimate needs to know of a job besides its restorer."""

    size: tuple[int, int]  # (width, height) of the upload
    scale: int = 1
    max_side: int | None = None
    ensemble: bool = False
    iterations: int | None = None


#: One restorer, or a chain's restorers in order.
Steps = Restorer | Sequence[Restorer]


def _steps(restorer: Steps) -> tuple[Restorer, ...]:
    return (restorer,) if isinstance(restorer, Restorer) else tuple(restorer)


def estimate(restorer: Steps, job: JobShape) -> CostEstimate:
    """The cost of a job (a chain's: the sum over its steps, ensemble where a step offers it)."""
    if not isinstance(restorer, Restorer):
        steps = _steps(restorer)
        if len(steps) == 1:
            return estimate(steps[0], job)
        parts = [estimate(r, replace(job, ensemble=job.ensemble and r.ensemble)) for r in steps]
        return CostEstimate(
            sum(p.units for p in parts), parts[0].size, sum(p.work_megapixels for p in parts)
        )
    width, height = shrunk_size(job.size, job.max_side)
    input_mp = width * height / 1e6
    work_mp = input_mp * (job.scale**2 if restorer.task in OUTPUT_SIZED_TASKS else 1)
    if restorer.cost_max_side is not None:
        work_mp = min(work_mp, restorer.cost_max_side**2 / 1e6)
    units = work_mp * restorer.cost_per_megapixel
    if restorer.default_iterations and job.iterations:
        units *= job.iterations / restorer.default_iterations
    if job.ensemble:
        units *= ENSEMBLE_PASSES
    units += input_mp * HANDLING_COST_PER_MEGAPIXEL
    return CostEstimate(units, (width, height), work_mp)


def largest_max_side(restorer: Steps, job: JobShape, budget: float) -> int | None:
    """The largest `max_side` whose job fits `budget`, or None when even the smallest does not.

    The cost never shrinks as `max_side` grows, so a binary search over the allowed range
    finds it in a few steps (at most log2 of the range).
    """
    low = MAX_SIDE_RANGE[0]
    high = min(MAX_SIDE_RANGE[1], max(job.size), job.max_side or MAX_SIDE_RANGE[1])
    if estimate(restorer, replace(job, max_side=low)).units > budget:
        return None
    while low < high:  # invariant: `low` fits
        middle = (low + high + 1) // 2
        if estimate(restorer, replace(job, max_side=middle)).units <= budget:
            low = middle
        else:
            high = middle - 1
    return low


def largest_iterations(
    restorer: Steps, job: JobShape, budget: float, bounds: tuple[int, int]
) -> int | None:
    """For a restorer fitted per image: the most iterations within `budget` (None: none fit)."""
    if not any(r.default_iterations for r in _steps(restorer)):
        return None
    low, high = bounds
    if estimate(restorer, replace(job, iterations=low)).units > budget:
        return None
    while low < high:
        middle = (low + high + 1) // 2
        if estimate(restorer, replace(job, iterations=middle)).units <= budget:
            low = middle
        else:
            high = middle - 1
    return low
