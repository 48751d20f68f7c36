"""The tiny sweep that the parallel and the Ray sweep tests both run, and how their rows are compared."""

from __future__ import annotations

from pathlib import Path

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


def sequential_rows(path: Path) -> list[dict]:
    """SPEC's rows trained one after the other in this process with one torch thread (the reference)."""
    import torch

    from lawn.harness.results import read_rows
    from lawn.harness.sweep import SweepSpec, run_sweep

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert run_sweep(SweepSpec.from_dict(SPEC), path) == {"done": 8, "skipped": 0, "total": 8}
    finally:
        torch.set_num_threads(threads)
    return by_key(read_rows(path))
