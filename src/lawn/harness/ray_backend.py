"""A sweep's runs as Ray tasks, on a Ray cluster or a local Ray instance (the optional extra ``lawn[ray]``).

Only ``lawn sweep --ray`` imports this module. Each run is one task requesting ``cpus_per_run`` CPUs and
``gpus_per_run`` GPUs (fractions share a GPU: 0.25 puts four runs on one). The task receives the run's
config (plain data), loads the data set on its node, trains with ``threads`` torch threads and returns the
row; the driver writes it. A task that raises or whose worker dies fails its run only (no automatic retry:
the next resume of the sweep retries it). At most as many runs are in flight as the cluster's resources
fit (read again at every step, so an autoscaling cluster's new nodes are used), or ``max_in_flight``.

Address: ``None`` → ``$RAY_ADDRESS`` if set, else a new local instance (``init_options`` such as
``num_cpus`` apply to it); ``"auto"`` → the cluster this machine belongs to; ``"ray://head:10001"`` → Ray Client.
"""

from __future__ import annotations

import contextlib
import math
import os
import signal
import threading
from typing import Any

import ray

from lawn.harness.config import RunConfig
from lawn.harness.parallel import Outcome


def _train_task(fields: dict[str, Any], threads: int) -> dict[str, Any]:
    """Runs on a Ray worker: train one config and return its row."""
    import torch

    from lawn.harness.train import train

    torch.set_num_threads(threads)
    return train(RunConfig.from_dict(fields), progress=False)


class RayBackend:
    """Runs as Ray tasks; ``ray.init`` happens here, on the first ``capacity()``, unless Ray is already up."""

    def __init__(
        self,
        address: str | None = None,
        *,
        cpus_per_run: float = 1.0,
        gpus_per_run: float = 0.0,
        threads: int | None = None,
        max_in_flight: int | None = None,
        init_options: dict[str, Any] | None = None,
    ) -> None:
        if not cpus_per_run > 0:
            raise ValueError(f"--cpus-per-run: must be > 0, got {cpus_per_run}")
        if not gpus_per_run >= 0:
            raise ValueError(f"--gpus-per-run: must be >= 0, got {gpus_per_run}")
        if gpus_per_run > 1 and gpus_per_run != int(gpus_per_run):
            raise ValueError(f"--gpus-per-run: a fraction must be below 1 (Ray's rule), got {gpus_per_run}")
        if max_in_flight is not None and max_in_flight < 1:
            raise ValueError(f"--jobs: must be >= 1, got {max_in_flight}")
        self.address = address if address is not None else os.environ.get("RAY_ADDRESS") or "local"
        self.cpus_per_run = cpus_per_run
        self.gpus_per_run = gpus_per_run
        self.threads = threads if threads is not None else max(1, math.floor(cpus_per_run))
        self.max_in_flight = max_in_flight
        self.init_options = dict(init_options or {})
        self._started = False
        self._remote: Any = None
        self._in_flight: dict[Any, int] = {}

    @property
    def device(self) -> str:
        """The device every run uses: the task's own GPU when it asks for one (Ray sets its visible GPUs)."""
        return "cuda" if self.gpus_per_run > 0 else "cpu"

    def _connect(self) -> None:
        if self._remote is not None:
            return
        if not ray.is_initialized():
            options = {"include_dashboard": False, **self.init_options} if self.address == "local" else {}
            main_thread = threading.current_thread() is threading.main_thread()
            sigterm = signal.getsignal(signal.SIGTERM) if main_thread else None
            ray.init(address=self.address, **options)
            if sigterm is not None:  # ray.init replaces it with an exit; keep the caller's (a clean stop)
                signal.signal(signal.SIGTERM, sigterm)
            self._started = True
        self._check_resources()
        self._remote = ray.remote(_train_task).options(
            num_cpus=self.cpus_per_run, num_gpus=self.gpus_per_run, max_retries=0
        )

    def _check_resources(self) -> None:
        """Refuse a per-run GPU request on a cluster without GPUs: Ray would queue the tasks forever."""
        if self.gpus_per_run <= 0:
            return
        gpus = ray.cluster_resources().get("GPU", 0.0)
        if gpus < self.gpus_per_run:
            self.close(cancel=True)
            raise ValueError(
                f"--gpus-per-run {self.gpus_per_run:g}: the Ray cluster ({self.address}) has {gpus:g} GPU(s), so no "
                "run could start; use --gpus-per-run 0 to train on CPUs, or start Ray where GPUs are (on an "
                "autoscaling cluster, bring a GPU node up first)"
            )

    def slots(self) -> int:
        """How many runs the cluster fits at once now (at least 1: tasks queue until resources appear)."""
        self._connect()
        resources = ray.cluster_resources()
        fit = resources.get("CPU", 0.0) / self.cpus_per_run
        if self.gpus_per_run > 0:
            fit = min(fit, resources.get("GPU", 0.0) / self.gpus_per_run)
        fit = max(1, math.floor(fit + 1e-9))
        return fit if self.max_in_flight is None else min(fit, self.max_in_flight)

    def capacity(self) -> int:
        return max(0, self.slots() - len(self._in_flight))

    def submit(self, tag: int, config: RunConfig) -> str:
        self._connect()
        config = config.replace(device=self.device)
        self._in_flight[self._remote.remote(config.to_dict(), self.threads)] = tag
        return f"ray task ({self.cpus_per_run:g} CPU, {self.gpus_per_run:g} GPU)"

    def wait(self, timeout: float | None) -> list[Outcome]:
        if not self._in_flight:
            return []
        ready, _ = ray.wait(list(self._in_flight), num_returns=1, timeout=timeout)
        if ready:  # collect everything else already finished too
            ready, _ = ray.wait(list(self._in_flight), num_returns=len(self._in_flight), timeout=0)
        outcomes = []
        for ref in ready:
            tag = self._in_flight.pop(ref)
            try:
                outcomes.append(Outcome(tag, row=ray.get(ref)))
            except ray.exceptions.RayError as err:
                outcomes.append(Outcome(tag, error=f"{type(err).__name__}: {err}"))
        return outcomes

    def close(self, cancel: bool) -> None:
        """Cancel in-flight tasks when asked; shut down the Ray instance this backend started (or disconnect)."""
        if cancel:
            for ref in self._in_flight:
                with contextlib.suppress(Exception):  # already finished, or the cluster is gone
                    ray.cancel(ref, force=True)
        self._in_flight.clear()
        if self._started:
            ray.shutdown()
            self._started = False
        self._remote = None
