"""A :class:`~lawn.harness.config.RunConfig` checked against the registries.

``config.py`` is plain data and parsing; the registries (data sets, models, optimizers, methods, normalizations)
import it for their type hints. This module sits above both: it checks that every name in a config is registered,
that the pieces fit together, and resolves ``model = "auto"`` to the data set's default model. Every entry point
that runs a config (``lawn run``, sweeps, :func:`lawn.harness.train.train`) goes through :func:`checked`.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from lawn.harness import datasets, methods, models, normalization, optimizers
from lawn.harness.config import RunConfig, did_you_mean, load_mapping


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(message)


def _known(field: str, value: str, registry: Any) -> None:
    _check(
        value in registry,
        f"{field}: unknown {value!r}{did_you_mean(value, registry)}; choose from {', '.join(sorted(registry))}",
    )


def checked(config: RunConfig) -> RunConfig:
    """``config`` with ``model="auto"`` resolved, or a ``ValueError`` naming the field that does not fit."""
    _known("dataset", config.dataset, datasets.DATASETS)
    datasets.check_config(config)
    if config.model == "auto":
        config = dataclasses.replace(config, model=datasets.DATASETS[config.dataset].default_model)
    _known("model", config.model, models.MODELS)
    models.check_compatible(config.model, config.dataset)
    _known("optimizer", config.optimizer, optimizers.OPTIMIZERS)
    _known("method", config.method, methods.METHODS)
    _check(
        config.weight_decay == 0.0 or methods.METHODS[config.method].uses_weight_decay,
        f"weight_decay: method {config.method!r} trains without weight decay, got weight_decay={config.weight_decay}",
    )
    normalization.check_config(config)
    methods.check_config(config)
    classification = datasets.DATASETS[config.dataset].task != "ranking"
    _check(
        config.eval_noise_std == 0.0
        or (math.isfinite(config.eval_noise_std) and config.eval_noise_std > 0 and classification),
        f"eval_noise_std: a number >= 0, for classification data sets only, got {config.eval_noise_std}",
    )
    _check(
        config.batch_size >= 2 or not (models.MODELS[config.model].batchnorm or config.normalization == "mimicnorm"),
        f"batch_size: 1 cannot train model {config.model!r}: BatchNorm needs at least 2 examples per batch "
        "(use batch_size >= 2)",
    )
    return config


def run_config(fields: Mapping[str, Any]) -> RunConfig:
    """``RunConfig.from_dict(fields)``, checked against the registries."""
    return checked(RunConfig.from_dict(dict(fields)))


def load_run_config(path: str | Path) -> RunConfig:
    """Read a JSON or TOML run config (never evaluated) and check it."""
    return run_config(load_mapping(path))
