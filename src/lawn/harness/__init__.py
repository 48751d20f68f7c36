"""The study harness: data sets, models, training runs, sweeps, reports and the ``lawn`` command.

It imports the library (``lawn``); the library never imports it. Everything here is driven by data:
a :class:`~lawn.harness.config.RunConfig` describes one training run, a
:class:`~lawn.harness.sweep.SweepSpec` a grid of them. Every training goes through one loop,
:func:`~lawn.harness.train.fit` (:func:`~lawn.harness.train.build` makes what a config's run needs).

The names below are loaded on first use, so importing one submodule (or running ``lawn --help``) does not import
them all, and no submodule depends on this package's ``__init__``.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "RunConfig": "lawn.harness.config",
    "SweepSpec": "lawn.harness.sweep",
    "build": "lawn.harness.train",
    "fit": "lawn.harness.train",
    "run_sweep": "lawn.harness.sweep",
    "train": "lawn.harness.train",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'lawn.harness' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
