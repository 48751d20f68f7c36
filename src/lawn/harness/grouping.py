"""Rows grouped into cells (arm, width, …) that must each hold one setting, seeds apart: the tables' guard.

A table that averages a cell over seeds is wrong if the cell also mixes two grid points; ``group_one_setting``
refuses that, naming the cell and the config fields that differ.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable
from typing import Any

Row = dict[str, Any]


def group_one_setting(
    rows: Iterable[Row],
    cell_of: Callable[[dict[str, Any]], Hashable],
    run_fields: Iterable[str],
    name: Callable[[Any], str],
) -> dict[Hashable, list[Row]]:
    """Rows by ``cell_of(config)``, in first-seen order; configs of one cell may differ only in ``run_fields``.

    ``name(cell)`` labels the cell in the error, which says to pass only the rows at the chosen grid point.
    """
    ignored = set(run_fields)
    groups: dict[Hashable, list[Row]] = {}
    setting: dict[Hashable, dict[str, Any]] = {}
    for row in rows:
        config = row["config"]
        cell = cell_of(config)
        rest = {k: v for k, v in config.items() if k not in ignored}
        first = setting.setdefault(cell, rest)
        if first != rest:
            differing = sorted(k for k in rest.keys() | first.keys() if rest.get(k) != first.get(k))
            raise ValueError(
                f"{name(cell)}: rows of different settings ({', '.join(differing)}); "
                "pass only the rows at the chosen grid point (the fresh seeds' file)"
            )
        groups.setdefault(cell, []).append(row)
    return groups
