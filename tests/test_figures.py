"""The README's results figure: every row has its four tiles, scored against the original."""

from __future__ import annotations

import numpy as np

from benchmarks.figures import Example, figure, panels


def test_a_row_shows_degraded_classic_ours_and_original_with_scores() -> None:
    original = np.tile(np.arange(0, 256, 4, dtype=np.uint8), (64, 1))
    example = Example(
        "darken", original, (slice(8, 40), slice(8, 40)),
        degrade=lambda x: x // 2, classic=lambda x: x * 2, ours=lambda x: x * 2 + 1,
        labels=("dark", "double", "double+1"),
    )
    row = panels(example)
    assert [p.label.split()[0] for p in row] == ["dark", "double", "double+1", "original"]
    assert row[1].label.endswith("dB") and "inf" not in row[2].label
    assert all(p.image.shape == (32, 32) for p in row)
    picture = figure([("darken", row), ("again", row)])
    assert picture.width >= 4 * 64 and picture.height >= 2 * 64


def test_further_methods_sit_between_ours_and_the_original() -> None:
    original = np.tile(np.arange(0, 256, 4, dtype=np.uint8), (64, 1))
    example = Example(
        "darken", original, (slice(8, 40), slice(8, 40)),
        degrade=lambda x: x // 2, classic=lambda x: x * 2, ours=lambda x: x * 2 + 1,
        labels=("dark", "double", "double+1"), others=(("plus2", lambda x: x * 2 + 2),),
    )
    row = panels(example)
    assert [p.label.split()[0] for p in row] == ["dark", "double", "double+1", "plus2", "original"]
    assert row[3].label.endswith("dB")
