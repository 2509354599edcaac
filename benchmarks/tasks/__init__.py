"""Per-task benchmark definitions (data, degradations, rows) for `benchmarks.quality`."""
