"""Fresh seeds at a pilot's choice: run a sweep's grid only at the points its pilot selected on validation.

A study may tune on a pilot (the same spec's grid on seeds of its own) and then train fresh seeds at the
chosen hyper-parameters only. ``PilotSelected(spec, pilot_rows)`` is the sweep ``spec`` restricted, in every
setting (the config without seed, device and the tuned axes, as :mod:`lawn.harness.selection` groups rows),
to the grid point the pilot's rows select there (best mean validation metric over the pilot's seeds). The
verdicts then pair those fresh seeds (``lawn report RESULTS --pilot PILOT``), so the seeds that chose a
point never also judge it.
"""

from __future__ import annotations

import json
from typing import Any

from lawn.harness.config import RunConfig, with_late_defaults
from lawn.harness.selection import NOT_SETTING, select
from lawn.harness.sweep import SweepSpec


def _setting_key(config: dict[str, Any], tuned: list[str]) -> str:
    config = with_late_defaults(json.loads(json.dumps(config)))  # a row's JSON form: tuples as lists
    return json.dumps({k: v for k, v in config.items() if k not in NOT_SETTING and k not in tuned}, sort_keys=True)


class PilotSelected:
    """``spec``'s runs at the points ``pilot_rows`` selected (``expand()`` as :class:`SweepSpec`'s)."""

    def __init__(self, spec: SweepSpec, pilot_rows: list[dict[str, Any]]) -> None:
        runs = spec.expand()
        # without the tuned fields: a tuned late field (afan_step_size) comes back in s.setting at its default
        selections = {_setting_key(s.setting, s.tuned): s for s in select(pilot_rows)}
        grid_sizes: dict[str, int] = {}
        for config, tuned in runs:
            key = _setting_key(config.to_dict(), tuned)
            grid_sizes[key] = grid_sizes.get(key, 0) + (config.seed == spec.seeds[0])
        chosen: list[tuple[RunConfig, list[str]]] = []
        for config, tuned in runs:
            key = _setting_key(config.to_dict(), tuned)
            selection = selections.get(key)
            if selection is None:
                raise ValueError(
                    f"pilot: no pilot row for the setting of {config.optimizer} + {config.method} at batch "
                    f"{config.batch_size} (and its other fields): run the pilot spec over the same grid first"
                )
            if selection.grid_size != grid_sizes[key]:
                raise ValueError(
                    f"pilot: {config.optimizer} + {config.method} at batch {config.batch_size}: the pilot covered "
                    f"{selection.grid_size} of the grid's {grid_sizes[key]} points; finish the pilot first"
                )
            if all(getattr(config, name) == selection.chosen[name] for name in tuned):
                chosen.append((config, tuned))
        self.spec = spec
        self.runs = chosen

    def expand(self) -> list[tuple[RunConfig, list[str]]]:
        return list(self.runs)
