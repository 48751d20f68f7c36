"""Fresh seeds at a pilot's choice: run a sweep's grid only at the points its pilot selected on validation.

A study may tune on a pilot (the same spec's grid on seeds of its own) and then train fresh seeds at the
chosen hyper-parameters only. ``PilotSelected(spec, pilot_rows)`` is the sweep ``spec`` restricted, in every
setting (the config without seed, device and the tuned axes, as :mod:`lawn.harness.selection` groups rows),
to the grid point the pilot's rows select there (best mean validation metric over the pilot's seeds). The
verdicts then pair those fresh seeds (``lawn report RESULTS --pilot PILOT``), so the seeds that chose a
point never also judge it.

``edges`` names each choice that sits at the smallest or largest value of a numeric axis of its grid: the
optimum is not bracketed there, and the verdicts will say so; extend that axis first (``lawn sweep`` prints them).
"""

from __future__ import annotations

import json
from typing import Any

from lawn._checks import is_number
from lawn.harness.config import RunConfig, with_late_defaults
from lawn.harness.selection import DEFAULT_TUNED, NOT_SETTING, select
from lawn.harness.sweep import SweepSpec


def setting_key(config: dict[str, Any], tuned: list[str]) -> str:
    """``config`` without its seed, device and ``tuned`` fields, in a row's JSON form (late fields at defaults)."""
    config = with_late_defaults(json.loads(json.dumps(config)))  # a row's JSON form: tuples as lists
    return json.dumps({k: v for k, v in config.items() if k not in NOT_SETTING and k not in tuned}, sort_keys=True)


def _point_key(config: dict[str, Any], tuned: list[str]) -> str:
    """The grid point of ``config``: its tuned fields, in a row's JSON form (as :func:`select` keys them)."""
    config = with_late_defaults(json.loads(json.dumps(config)))
    return json.dumps({k: config.get(k) for k in tuned}, sort_keys=True)


def _points_text(points: set[str]) -> str:
    """A few grid points as ``lr=0.01, wd=0`` lists, for an error message."""
    shown = [", ".join(f"{k}={v}" for k, v in json.loads(p).items()) for p in sorted(points)[:3]]
    return "; ".join(shown) + (f"; … ({len(points)} in all)" if len(points) > 3 else "")


class PilotSelected:
    """``spec``'s runs at the points ``pilot_rows`` selected (``expand()`` as :class:`SweepSpec`'s)."""

    def __init__(self, spec: SweepSpec, pilot_rows: list[dict[str, Any]]) -> None:
        runs = spec.expand()
        # without the tuned fields: a tuned late field (afan_step_size) comes back in s.setting at its default
        selections = {setting_key(s.setting, s.tuned): s for s in select(pilot_rows)}
        pilot_points: dict[str, set[str]] = {}  # setting → the grid points the pilot ran
        for row in pilot_rows:
            tuned = list(row.get("tuned") or DEFAULT_TUNED)
            pilot_points.setdefault(setting_key(row["config"], tuned), set()).add(_point_key(row["config"], tuned))
        grid_points: dict[str, set[str]] = {}  # setting → the spec's grid points
        grids: dict[str, dict[str, list[Any]]] = {}  # setting → tuned axis → its values
        for config, tuned in runs:
            key = setting_key(config.to_dict(), tuned)
            grid_points.setdefault(key, set()).add(_point_key(config.to_dict(), tuned))
            axes = grids.setdefault(key, {})
            for name in tuned:
                if getattr(config, name) not in axes.setdefault(name, []):
                    axes[name].append(getattr(config, name))
        chosen: list[tuple[RunConfig, list[str]]] = []
        for config, tuned in runs:
            key = setting_key(config.to_dict(), tuned)
            selection = selections.get(key)
            if selection is None:
                raise ValueError(
                    f"pilot: no pilot row for the setting of {config.optimizer} + {config.method} at batch "
                    f"{config.batch_size} (and its other fields): run the pilot spec over the same grid first"
                )
            where = f"pilot: {config.optimizer} + {config.method} at batch {config.batch_size}"
            missing = grid_points[key] - pilot_points[key]
            if missing:
                raise ValueError(
                    f"{where}: the pilot covered {len(grid_points[key]) - len(missing)} of the grid's "
                    f"{len(grid_points[key])} points (none at {_points_text(missing)}); finish the pilot first"
                )
            extra = pilot_points[key] - grid_points[key]
            if extra:
                raise ValueError(
                    f"{where}: the pilot also ran points outside this spec's grid ({_points_text(extra)}), so its "
                    "choice was made over another grid; give the spec the pilot ran (or pilot rows of this grid)"
                )
            if all(getattr(config, name) == selection.chosen[name] for name in tuned):
                chosen.append((config, tuned))
        self.spec = spec
        self.pilot_rows = pilot_rows
        self.runs = chosen
        self.edges = sorted(
            {_edge(c, grids[setting_key(c.to_dict(), t)], name) for c, t in chosen for name in t} - {""}
        )

    def expand(self) -> list[tuple[RunConfig, list[str]]]:
        return list(self.runs)


def _edge(config: RunConfig, grid: dict[str, list[Any]], name: str) -> str:
    """A line if ``config``'s value of the tuned axis ``name`` is an end of that numeric axis (else "")."""
    values = grid[name]
    if len(values) < 2 or not all(is_number(v) for v in values):
        return ""
    value = getattr(config, name)
    end = "smallest" if value == min(values) else "largest" if value == max(values) else ""
    if not end:
        return ""
    where = f"{config.optimizer} + {config.method} at batch {config.batch_size}"
    grid_text = ", ".join(f"{v:g}" for v in sorted(values))
    return f"{where}: {name} = {value:g} is the {end} value of its grid [{grid_text}]: optimum not bracketed"
