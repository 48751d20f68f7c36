"""A :class:`~lawn.harness.config.RunConfig` checked against the registries.

``config.py`` is plain data and parsing; the registries (data sets, models, optimizers, methods, normalizations)
import it for their type hints. This module sits above both: it checks that every name in a config is registered,
that the pieces fit together, and resolves ``model = "auto"`` to the data set's default model. Every entry point
that runs a config (``lawn run``, sweeps, :func:`lawn.harness.train.train`) goes through :func:`checked`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from lawn.harness import datasets, methods, models, normalization, optimizers
from lawn.harness.config import RunConfig, load_mapping


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(message)


def checked(config: RunConfig) -> RunConfig:
    """``config`` with ``model="auto"`` resolved, or a ``ValueError`` naming the field that does not fit."""
    _check(
        config.dataset in datasets.DATASETS,
        f"dataset: unknown {config.dataset!r}; choose from {sorted(datasets.DATASETS)}",
    )
    datasets.check_config(config)
    if config.model == "auto":
        config = dataclasses.replace(config, model=datasets.DATASETS[config.dataset].default_model)
    _check(
        config.model in models.MODELS, f"model: unknown {config.model!r}; choose from {sorted(models.MODELS)}"
    )
    models.check_compatible(config.model, config.dataset)
    _check(
        config.optimizer in optimizers.OPTIMIZERS,
        f"optimizer: unknown {config.optimizer!r}; choose from {sorted(optimizers.OPTIMIZERS)}",
    )
    _check(
        config.method in methods.METHODS,
        f"method: unknown {config.method!r}; choose from {sorted(methods.METHODS)}",
    )
    _check(
        config.weight_decay == 0.0 or methods.METHODS[config.method].uses_weight_decay,
        f"weight_decay: method {config.method!r} trains without weight decay, got weight_decay={config.weight_decay}",
    )
    normalization.check_config(config)
    return config


def run_config(fields: Mapping[str, Any]) -> RunConfig:
    """``RunConfig.from_dict(fields)``, checked against the registries."""
    return checked(RunConfig.from_dict(dict(fields)))


def load_run_config(path: str | Path) -> RunConfig:
    """Read a JSON or TOML run config (never evaluated) and check it."""
    return run_config(load_mapping(path))
