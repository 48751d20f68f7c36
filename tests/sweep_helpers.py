"""The tiny sweep that the parallel and the Ray sweep tests both run, and how their rows are compared."""

from __future__ import annotations

# 8 runs of one epoch on 120 digits: Adam, plain and LAWN, 2 learning rates, 2 seeds
SPEC = {
    "base": {"dataset": "digits", "train_limit": 120, "test_limit": 60, "width": 4, "epochs": 1},
    "optimizers": ["adam"],
    "methods": ["plain", "lawn"],
    "batch_sizes": [32],
    "lrs": [1e-3, 1e-2],
    "seeds": [0, 1],
}


def by_key(rows: list[dict]) -> list[dict]:
    """Rows without their timing, in key order (parallel sweeps append in the order runs end)."""
    return sorted(({k: v for k, v in row.items() if k != "timing"} for row in rows), key=lambda r: r["key"])
