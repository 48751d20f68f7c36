"""``lawn demo``: Adam vs Adam+LAWN at a small and a large batch size on a real data set, in minutes on CPU.

Default: Fashion-MNIST (from ``/usr/share/datasets/fashion-mnist``, Debian package ``dataset-fashion-mnist``)
when present, else MNIST-1D (generated locally); a 10 000-example training pool (10 % of it carved off for
validation), 5 000 test examples, the BN MLP, 15 epochs, batch sizes 128 and 2048 with the square-root
learning-rate scaling rule, learning-rate grid {1e-3, 3e-3} for both methods, 3 seeds, LAWN's free phase
the first 20 % of the steps. Everything is an ordinary sweep: the results file resumes like any other.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lawn.harness.data_files import FASHION_MNIST_DIR
from lawn.harness.sweep import SweepSpec

DATASETS = ("auto", "fashion_mnist", "mnist", "mnist1d", "digits", "cifar10")
DEFAULTS: dict[str, Any] = {
    "epochs": 15,
    "seeds": 3,
    "batch_sizes": [128, 2048],
    "lrs": [1e-3, 3e-3],
    "train_limit": 10_000,
    "test_limit": 5_000,
}


def pick_dataset(dataset: str, data_dir: str | None) -> tuple[str, str | None, str | None]:
    """``(dataset, data_dir, notice)``: ``"auto"`` is Fashion-MNIST if its files are there, else MNIST-1D."""
    if dataset != "auto":
        return dataset, data_dir, None
    directory = Path(data_dir or FASHION_MNIST_DIR)
    if directory.is_dir():
        return "fashion_mnist", data_dir, None
    notice = (
        f"Fashion-MNIST not found at {directory} (install it with `apt-get install dataset-fashion-mnist` "
        "or pass --data-dir); the demo uses MNIST-1D instead."
    )
    return "mnist1d", None, notice


def demo_spec(
    dataset: str,
    data_dir: str | None,
    *,
    epochs: int,
    seeds: int,
    batch_sizes: list[int],
    lrs: list[float],
    train_limit: int | None,
    test_limit: int | None,
) -> SweepSpec:
    base: dict[str, Any] = {
        "dataset": dataset,
        "model": "mlp",
        "width": 32,
        "epochs": epochs,
        "lr_scaling": "sqrt",
        "base_batch_size": 128,
        "schedule": "cosine",
        "warmup_fraction": 0.05,
        "free_fraction": 0.2,
        "train_limit": train_limit,
        "test_limit": test_limit,
    }
    if data_dir is not None:
        base["data_dir"] = data_dir
    return SweepSpec.from_dict(
        {
            "base": base,
            "optimizers": ["adam"],
            "methods": ["plain", "lawn"],
            "batch_sizes": batch_sizes,
            "lrs": lrs,
            "seeds": list(range(seeds)),
        }
    )
