"""When a constraint switches from the free phase to the constrained one: a switch rule.

Two rules, each an object with the same three parts:

* :class:`FixedSwitch` ``(steps)``: switch after ``steps`` applied optimizer steps (``free_steps=1000``; 0 switches
  when the constraint is built);
* :class:`lawn.AutoSwitch` (``free_steps="auto"``): switch once the constrained norms stop growing fast
  (:mod:`lawn.constraint.auto_switch`).

``entries(keys, params)`` are the rule's ``param_groups`` entries (under the constraint's own prefix: its setting
in ``<prefix>free_steps``, an int or ``"auto"``, and the automatic rule's constants and memory); ``due(groups,
keys, steps, params)`` says, after each applied step, whether to switch now (the automatic rule updates its
memory there); ``overdue(steps)`` whether the switch should have come already (read without side effects, at a
load); :func:`from_group` rebuilds the rule a checkpoint holds. The engine counts steps, asks the rule, and records
the step it switched at (``<prefix>switch_step``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from lawn.constraint.auto_switch import AUTO, AutoSwitch
from lawn.constraint.keys import Keys

__all__ = ["AutoSwitch", "FixedSwitch", "SwitchRule", "from_group", "resolve"]


@dataclass(frozen=True)
class FixedSwitch:
    """Switch after ``steps`` applied optimizer steps (0: when the constraint is built)."""

    steps: int

    def __post_init__(self) -> None:
        if isinstance(self.steps, bool) or not isinstance(self.steps, int):
            raise TypeError(f"free_steps: expected an int, 'auto' or a lawn.AutoSwitch, got {self.steps!r}")
        if self.steps < 0:
            raise ValueError(f"free_steps: must be >= 0, got {self.steps}")

    @property
    def setting(self) -> int:
        """What ``free_steps`` reads back: the step count."""
        return self.steps

    @property
    def at_construction(self) -> bool:
        """Switches when the constraint is built (``free_steps=0``)."""
        return self.steps == 0

    def entries(self, keys: Keys, params: list[torch.Tensor]) -> dict[str, Any]:
        return {keys.free_steps: self.steps}

    def due(self, groups: list[dict[str, Any]], keys: Keys, steps: int, params: list[torch.Tensor]) -> bool:
        return self.overdue(steps)

    def overdue(self, steps: int) -> bool:
        """Whether the switch should have come by ``steps`` (read without side effects, e.g. at a load)."""
        return steps >= self.steps


SwitchRule = FixedSwitch | AutoSwitch


def resolve(free_steps: Any) -> SwitchRule:
    """The rule a ``free_steps`` argument asks for: an int, ``"auto"`` or a :class:`lawn.AutoSwitch`."""
    if isinstance(free_steps, AutoSwitch):
        return free_steps
    if isinstance(free_steps, str):
        if free_steps != AUTO:
            raise ValueError(f"free_steps: expected an int, 'auto' or a lawn.AutoSwitch, got {free_steps!r}")
        return AutoSwitch()
    return FixedSwitch(free_steps)


def from_group(group: dict[str, Any], keys: Keys) -> SwitchRule:
    """The rule ``group`` holds (a loaded checkpoint's options win, as for ``lr``)."""
    if group[keys.free_steps] == AUTO:
        return AutoSwitch.from_group(group, keys)
    return FixedSwitch(group[keys.free_steps])
