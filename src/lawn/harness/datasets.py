"""The data sets, by name, all offline: files on disk or generated from a seed.

Every classification set comes out the same way: a training pool (optionally a ``train_limit`` subset, drawn
with ``data_seed``), a validation split carved from that pool (``val_fraction``), and the test set
(optionally a ``test_limit`` subset). Pixels are scaled to [0, 1] and standardised per channel with the
training split's mean and std. The validation split depends only on ``data_seed``, so every method and seed
is selected on the same examples.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from lawn.harness import data_files
from lawn.harness.config import RunConfig
from lawn.harness.ranking import RankingData, make_ranking_data


@dataclass
class ClassificationData:
    """Tensors of one classification data set after splitting and normalisation (float32 x, int64 y)."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    num_classes: int
    task: str = field(default="classification", init=False)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x_train.shape[1:])

    @property
    def train_size(self) -> int:
        return len(self.y_train)


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    task: str  # "classification" | "ranking"
    default_model: str
    load: Callable[[RunConfig], Any]
    options: dict[str, Any] = field(default_factory=dict)
    reads_files: bool = False
    default_dir: str | None = None
    check_files: Callable[[str], None] | None = None  # raises FileNotFoundError naming what is missing in a dir


# ---------------------------------------------------------------------- shared splitting / normalising
def split_classification(
    x_pool: np.ndarray,
    y_pool: np.ndarray,
    x_test: np.ndarray,
    y_test: np.ndarray,
    config: RunConfig,
    scale: float,
) -> ClassificationData:
    """Subset, carve validation, scale by ``1/scale``, standardise per channel (dim 1) with train stats."""
    rng = np.random.default_rng(config.data_seed)
    order = rng.permutation(len(y_pool))
    if config.train_limit is not None:
        order = order[: config.train_limit]
    n_val = max(1, int(round(config.val_fraction * len(order))))
    if len(order) - n_val < 2:
        raise ValueError(f"train_limit/val_fraction: only {len(order) - n_val} training examples left")
    val_idx, train_idx = order[:n_val], order[n_val:]
    test_order = rng.permutation(len(y_test))
    if config.test_limit is not None:
        test_order = test_order[: config.test_limit]

    def prep(x: np.ndarray) -> np.ndarray:
        x = x.astype(np.float32) / scale
        return x[:, None] if x.ndim == 3 else x  # N×H×W → N×1×H×W

    x_train, x_val, x_te = prep(x_pool[train_idx]), prep(x_pool[val_idx]), prep(x_test[test_order])
    axes = (0, *range(2, x_train.ndim))
    mean = x_train.mean(axis=axes, keepdims=True)
    std = x_train.std(axis=axes, keepdims=True) + 1e-6
    labels = np.concatenate([y_pool, y_test]).astype(np.int64)

    def t(x: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(x))

    return ClassificationData(
        x_train=t((x_train - mean) / std),
        y_train=t(y_pool[train_idx].astype(np.int64)),
        x_val=t((x_val - mean) / std),
        y_val=t(y_pool[val_idx].astype(np.int64)),
        x_test=t((x_te - mean) / std),
        y_test=t(y_test[test_order].astype(np.int64)),
        num_classes=int(labels.max()) + 1,
    )


# ---------------------------------------------------------------------- the loaders
def _directory(config: RunConfig) -> str:
    spec = DATASETS[config.dataset]
    directory = config.data_dir or spec.default_dir
    if directory is None:
        raise ValueError(f"data_dir: dataset {config.dataset!r} needs a directory of its files")
    return directory


def _load_idx(config: RunConfig) -> ClassificationData:
    a = data_files.load_idx_dir(_directory(config))
    return split_classification(a["train_images"], a["train_labels"], a["test_images"], a["test_labels"], config, 255.0)


def _load_cifar10(config: RunConfig) -> ClassificationData:
    a = data_files.load_cifar10_dir(_directory(config))
    return split_classification(a["train_images"], a["train_labels"], a["test_images"], a["test_labels"], config, 255.0)


def _load_digits(config: RunConfig) -> ClassificationData:
    """scikit-learn's 1797 8×8 digits (bundled with scikit-learn); a fixed 20 % is the test set."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images, labels = digits.images, digits.target
    order = np.random.default_rng(10_000 + config.data_seed).permutation(len(labels))
    n_test = int(round(0.2 * len(labels)))
    test, pool = order[:n_test], order[n_test:]
    return split_classification(images[pool], labels[pool], images[test], labels[test], config, 16.0)


def _load_mnist1d(config: RunConfig) -> ClassificationData:
    """MNIST-1D generated with ``mnist1d.data.make_dataset`` (never downloaded); its own 80/20 split."""
    from mnist1d.data import get_dataset_args, make_dataset

    options = {**DATASETS["mnist1d"].options, **config.data_options}
    args = get_dataset_args()
    args.num_samples = int(options["num_samples"])
    args.seed = int(options["seed"])
    state = np.random.get_state()  # make_dataset reseeds numpy's global generator; leave it as it was
    try:
        raw = make_dataset(args)
    finally:
        np.random.set_state(state)
    # already standardised by make_dataset; scale 1 and re-standardise (a no-op up to the split)
    return split_classification(raw["x"], raw["y"], raw["x_test"], raw["y_test"], config, 1.0)


def _load_ranking(config: RunConfig) -> RankingData:
    options = {**DATASETS["ranking"].options, **config.data_options}
    return make_ranking_data(seed=config.data_seed, **options)


DATASETS: dict[str, DatasetSpec] = {
    spec.name: spec
    for spec in [
        DatasetSpec(
            "fashion_mnist",
            "classification",
            "resnet",
            _load_idx,
            reads_files=True,
            default_dir=data_files.FASHION_MNIST_DIR,
            check_files=data_files.check_idx_dir,
        ),
        DatasetSpec(
            "mnist", "classification", "resnet", _load_idx, reads_files=True, check_files=data_files.check_idx_dir
        ),
        DatasetSpec(
            "cifar10",
            "classification",
            "resnet",
            _load_cifar10,
            reads_files=True,
            check_files=data_files.check_cifar10_dir,
        ),
        DatasetSpec("mnist1d", "classification", "cnn1d", _load_mnist1d, {"num_samples": 5000, "seed": 42}),
        DatasetSpec("digits", "classification", "mlp", _load_digits),
        DatasetSpec(
            "ranking",
            "ranking",
            "ncf",
            _load_ranking,
            {
                "users": 1000,
                "items": 500,
                "factors": 8,
                "positives_per_user": 20,
                "eval_negatives": 99,
                "temperature": 0.5,
                "popularity": 0.5,
            },
        ),
    ]
}


def check_config(config: RunConfig) -> None:
    """Data-related fields that make sense for ``config.dataset`` only (the name is known)."""
    spec = DATASETS[config.dataset]
    unknown = sorted(set(config.data_options) - set(spec.options))
    if unknown:
        known = sorted(spec.options) or "none"
        raise ValueError(f"data_options: {unknown} unknown for dataset {spec.name!r} (known: {known})")
    if config.data_dir is not None and not spec.reads_files:
        raise ValueError(f"data_dir: dataset {spec.name!r} is generated, it reads no files")
    if spec.task == "ranking" and (config.train_limit is not None or config.test_limit is not None):
        raise ValueError("train_limit/test_limit: not supported for the ranking task (use data_options)")


def check_files(config: RunConfig) -> None:
    """Raise ``FileNotFoundError`` naming what is missing when ``config``'s data files are not there (reads none)."""
    spec = DATASETS[config.dataset]
    if spec.check_files is not None:
        spec.check_files(_directory(config))


def data_key(config: RunConfig) -> str:
    fields = ("dataset", "data_dir", "data_options", "train_limit", "test_limit", "val_fraction", "data_seed")
    return json.dumps({f: getattr(config, f) for f in fields}, sort_keys=True)


@functools.lru_cache(maxsize=4)
def _cached(key: str) -> Any:
    fields = json.loads(key)
    config = RunConfig.from_dict(fields)
    return DATASETS[config.dataset].load(config)


def load_data(config: RunConfig) -> ClassificationData | RankingData:
    """The data of ``config`` (cached by the data fields, so a sweep loads each data set once)."""
    if config.dataset not in DATASETS:
        raise ValueError(f"dataset: unknown {config.dataset!r}; choose from {sorted(DATASETS)}")
    return _cached(data_key(config))
