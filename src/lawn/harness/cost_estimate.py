"""What the runs still to do will cost, read from the timings of rows already written.

A study is planned against its compute budget, and guesses go wrong (extreme learning rates were once assumed to
diverge and stop early; a net left at chance accuracy has a finite loss and trains every epoch). So the estimate
uses the rows themselves: every pending run belongs to a *cost class*, the fields that set how long a run takes
(:data:`COST_FIELDS`; tuned values such as ``lr`` are not among them), and costs the median ``timing.seconds`` of
the written rows of its class that trained on the same kind of device (``timing.device``: a CPU row says nothing
of a GPU run). A pending run with no such row is counted apart and never guessed. A median is robust to one
stalled run but not to a cost that depends on the tuned value (a run at chance accuracy, or one whose weights
decay into subnormal floats, may be many times slower than one that learns). So a pending run whose every field
but ``seed`` matches written rows (a fresh seed of a pilot's configuration) costs the median of those rows instead:

    total = Σ_{pending run r} median{ seconds(row) : row = r but for its seed }   if there is such a row,
                              median{ seconds(row) : row ∈ class(r) }            otherwise
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from lawn.harness.pilot import setting_key

COST_FIELDS = ("dataset", "model", "width", "epochs", "batch_size", "optimizer", "method")


@dataclass(frozen=True)
class CostEstimate:
    seconds: float  # summed over the pending runs that have a class with rows
    estimated: int  # pending runs whose class has rows
    unknown: int  # pending runs whose class has none: not in ``seconds``
    rows_used: int  # the timed rows of the classes that priced a pending run
    same_config: int = 0  # of ``estimated``: priced by rows of their own configuration at another seed

    def describe(self, workers: int) -> str:
        """One line for a dry run: CPU-hours of the estimated runs and wall hours with ``workers`` at once."""
        if not self.estimated:
            return (
                f"cost: none of the {self.unknown} run(s) left has a written row of its kind with a timing "
                "(same " + ", ".join(COST_FIELDS) + " and kind of device): time one run first"
            )
        hours = self.seconds / 3600
        text = (
            f"cost of the {self.estimated} run(s) with timed rows of their kind: ≈ {hours:.1f} CPU-hours "
            f"(≈ {hours / max(1, workers):.1f} h of wall time with {workers} worker(s)), the median seconds of "
            f"{self.rows_used} written rows on this kind of device with the same {', '.join(COST_FIELDS)}"
        )
        if self.same_config:
            text += f" ({self.same_config} of them by rows of their own configuration at another seed)"
        if self.unknown:
            text += f"; {self.unknown} run(s) have no such row and are not estimated"
        return text


def _cost_class(config: dict[str, Any]) -> tuple[str, ...]:
    return tuple(str(config.get(field)) for field in COST_FIELDS)


def _device_kind(device: object) -> str:
    return str(device).split(":")[0]


def estimate_cost(
    pending: Iterable[dict[str, Any]], rows: Iterable[dict[str, Any]], device: str = "cpu"
) -> CostEstimate:
    """Sum over the ``pending`` configs of the median over the ``rows`` (results rows, with ``config`` and ``timing``)
    that trained on ``device``'s kind (``cuda:1`` counts ``cuda:0`` rows): of the rows of the same configuration at
    other seeds where there are any, else of the rows of the same cost class."""
    seconds: dict[tuple[str, ...], list[float]] = defaultdict(list)
    by_run: dict[str, list[float]] = defaultdict(list)
    for row in rows:
        timing = row.get("timing") or {}
        if _device_kind(timing.get("device")) != _device_kind(device):
            continue
        if isinstance(timing.get("seconds"), (int, float)):
            seconds[_cost_class(row["config"])].append(float(timing["seconds"]))
            by_run[setting_key(row["config"], [])].append(float(timing["seconds"]))
    medians = {cls: statistics.median(values) for cls, values in seconds.items()}
    total, estimated, unknown, same, used = 0.0, 0, 0, 0, set()
    for config in pending:
        cls, own = _cost_class(config), by_run.get(setting_key(config, []))
        if own:
            total += statistics.median(own)
            same += 1
        elif cls in medians:
            total += medians[cls]
        else:
            unknown += 1
            continue
        estimated += 1
        used.add(cls)
    return CostEstimate(total, estimated, unknown, sum(len(seconds[cls]) for cls in used), same)
