"""The study harness: data sets, models, training runs, sweeps, reports and the ``lawn`` command.

It imports the library (``lawn``); the library never imports it. Everything here is driven by data:
a :class:`~lawn.harness.config.RunConfig` describes one training run, a
:class:`~lawn.harness.sweep.SweepSpec` a grid of them.
"""

from lawn.harness.config import RunConfig
from lawn.harness.sweep import SweepSpec, run_sweep
from lawn.harness.train import train

__all__ = ["RunConfig", "SweepSpec", "run_sweep", "train"]
