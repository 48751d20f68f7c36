"""Validation-based selection: one reported number per (setting, method), chosen fairly.

Rows are grouped into *settings* by their config without ``seed``, ``device`` and the row's tuned axes
(``tuned``, e.g. ``lr`` and ``weight_decay``); a row written before a field existed counts as having its
default (:func:`lawn.harness.config.with_late_defaults`), so old and new ``normalization="bn"`` rows agree.
Within a setting, each grid point's score is the mean over seeds of the last-epoch validation metric; the
point with the best score is chosen (ties: the first in sorted order), and the reported number is the test
metric at that point: mean ± sample std over its seeds.
A diverged seed counts as metric 0 in both the score and the reported mean (and is counted in
``diverged``), so instability is penalised rather than hidden.
"""

from __future__ import annotations

import json
import statistics
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

from lawn.harness.config import with_late_defaults

DEFAULT_TUNED = ("lr", "weight_decay")
NOT_SETTING = ("seed", "device")


@dataclass
class Selection:
    setting: dict[str, Any]  # the config fields shared by every row of the setting
    tuned: list[str]
    grid_size: int
    chosen: dict[str, Any]  # tuned axis → chosen value
    metric: str
    val_mean: float
    test_mean: float
    test_std: float
    seeds: int
    diverged: int
    rows: list[dict[str, Any]]  # the rows at the chosen point, by seed
    test_auc_mean: float | None = None
    test_auc_std: float | None = None


def _value(row: dict[str, Any], key: str) -> float:
    value = row.get(key)
    return 0.0 if row.get("diverged") or value is None else float(value)


def _mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def select(rows: list[dict[str, Any]]) -> list[Selection]:
    """One :class:`Selection` per setting, in a stable order."""
    settings: dict[str, dict[str, list[dict[str, Any]]]] = defaultdict(lambda: defaultdict(list))
    shared: dict[str, tuple[dict[str, Any], list[str]]] = {}
    for row in rows:
        tuned = list(row.get("tuned") or DEFAULT_TUNED)
        config = with_late_defaults(row["config"])
        setting = {k: v for k, v in config.items() if k not in NOT_SETTING and k not in tuned}
        setting_key = json.dumps(setting, sort_keys=True)
        point_key = json.dumps({k: config.get(k) for k in tuned}, sort_keys=True)
        settings[setting_key][point_key].append(row)
        shared[setting_key] = (setting, tuned)

    selections = []
    for setting_key in sorted(settings):
        setting, tuned = shared[setting_key]
        points = settings[setting_key]
        scored = sorted(
            ((statistics.fmean(_value(r, "val_metric") for r in rs), pk) for pk, rs in points.items()),
            key=lambda item: (-item[0], item[1]),
        )
        val_mean, best = scored[0]
        chosen_rows = sorted(points[best], key=lambda r: r["config"]["seed"])
        test_mean, test_std = _mean_std([_value(r, "test_metric") for r in chosen_rows])
        selection = Selection(
            setting=setting,
            tuned=tuned,
            grid_size=len(points),
            chosen=json.loads(best),
            metric=chosen_rows[0].get("metric", "accuracy"),
            val_mean=val_mean,
            test_mean=test_mean,
            test_std=test_std,
            seeds=len(chosen_rows),
            diverged=sum(bool(r.get("diverged")) for r in chosen_rows),
            rows=chosen_rows,
        )
        if any("test_auc" in r for r in chosen_rows):
            selection.test_auc_mean, selection.test_auc_std = _mean_std([_value(r, "test_auc") for r in chosen_rows])
        selections.append(selection)
    return selections
