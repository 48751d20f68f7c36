"""``LAWNSchedule``: the paper's three-phase learning-rate schedule, following the LAWN optimizer's switch.

With ``t`` the scheduler's step (0-based, one per optimizer step), ``W`` warm-up steps, the switch after ``s``
applied steps (read from ``optimizer.switch_step``), ``R`` re-warm-up steps, ``T`` total steps, ``a`` =
``rewarmup_from`` and ``f`` = ``final_fraction``, the factor multiplying each group's initial learning rate is

1. warm-up, ``t < W``: ``w(t) = (t + 1) / W``;
2. free phase, ``W ≤ t`` and no switch yet (or ``t < s``): ``1`` (``before_switch="constant"``), or the decay
   curve from ``W`` to ``T`` (``"decay"``); call its value at the switch ``v = c(max(s, W))``;
3. re-warm-up, ``s ≤ t < s + R``: ``v · (a + (1 − a) · (t − s + 1) / R)``: from a fraction of the current value
   back up to it, while the base optimizer's state adapts to the sphere (at the switch the effective step on
   the sphere changes abruptly);
4. decay, from ``D = max(s + R, W)``: ``v · d(p)`` with ``p = (t − D) / (T − D)`` clipped to ``[0, 1]`` and ``d``
   the ``decay`` curve: ``"cosine"`` ``f + (1 − f) · ½ (1 + cos πp)``, ``"linear"`` ``f + (1 − f)(1 − p)``,
   ``"constant"`` ``1``.

**The edge cases.**

* *A switch before the warm-up ends* (``s < W``): the warm-up and the re-warm-up run together and the factor is
  the smaller of the two ramps, ``v · min(w(t), a + (1 − a)(t − s + 1) / R)``, until both are done; the decay
  starts at ``D = max(s + R, W)``. So the factor drops at most once, at the switch (as after a warm-up), then
  rises to its peak and decays: no saw-tooth.
* *A warm-up as long as the run* (``W ≥ T``): the run ends in its warm-up (it never reaches its peak if ``W > T``)
  and never decays: a warning at construction.
* *A fixed switch too late for the shape* (``s ≥ T``: the run never leaves the free phase; ``s + R > T``: the
  re-warm-up does not finish, so there is no decay): a warning at construction.
* *An automatic switch that has not fired* when too few steps are left for the re-warm-up and the decay
  (``t ≥ T − max(R, 1)``): the run ends in the free phase, where the factor is 1 (``before_switch="constant"``:
  no decay at all) or the decay curve (``"decay"``); a warning then, once. ``lawn.AutoSwitch(max_free_steps=...)``
  bounds the free phase.

Before the switch nothing depends on ``s``, so the schedule follows a fixed or an automatic switch alike. Its
``state_dict`` holds its step count, and the switch comes from the optimizer's own checkpoint, so a resumed run
continues exactly. It is a ``torch.optim.lr_scheduler.LRScheduler``: plain loops, Lightning
(``{"scheduler": s, "interval": "step"}``) and the HF Trainer (``optimizers=(opt, s)``) take it.
"""

from __future__ import annotations

import math
import warnings

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler

from lawn._checks import is_int, is_number
from lawn.constraint._warn import warn_at_caller

DECAYS = ("cosine", "linear", "constant")
BEFORE_SWITCH = ("constant", "decay")


def _curve(progress: float, decay: str, final_fraction: float) -> float:
    p = min(1.0, max(0.0, progress))
    if decay == "cosine":
        return final_fraction + (1.0 - final_fraction) * 0.5 * (1.0 + math.cos(math.pi * p))
    if decay == "linear":
        return final_fraction + (1.0 - final_fraction) * (1.0 - p)
    return 1.0


def lawn_schedule_factor(
    step: int,
    total_steps: int,
    switch_step: int | None,
    *,
    warmup_steps: int = 0,
    rewarmup_steps: int = 0,
    decay: str = "cosine",
    rewarmup_from: float = 0.1,
    final_fraction: float = 0.0,
    before_switch: str = "constant",
) -> float:
    """The multiplier at scheduler step ``step`` (0-based) when the switch came after ``switch_step`` steps."""
    warm = (step + 1) / warmup_steps if step < warmup_steps else 1.0

    def free(t: int) -> float:
        if before_switch == "constant":
            return 1.0
        return _curve((t - warmup_steps) / max(1, total_steps - warmup_steps), decay, final_fraction)

    if switch_step is None or step < switch_step:
        return warm * free(step)
    value = free(max(switch_step, warmup_steps))
    since = step - switch_step
    start = max(switch_step + rewarmup_steps, warmup_steps)  # the decay starts when both ramps are done
    if step < start:
        rewarm = rewarmup_from + (1.0 - rewarmup_from) * (since + 1) / rewarmup_steps if since < rewarmup_steps else 1
        return value * min(warm, rewarm)
    return value * _curve((step - start) / max(1, total_steps - start), decay, final_fraction)


class LAWNSchedule(LRScheduler):
    """Warm-up, free phase, re-warm-up at LAWN's switch, decay (the formula is in the module docstring).

    Args:
        optimizer: a :class:`lawn.LAWN` (anything with a ``switch_step`` attribute: ``None`` before the switch).
        total_steps: the run's optimizer steps ``T``; the decay ends there at ``final_fraction``.
        warmup_steps: ``W``, the first warm-up (0: none).
        rewarmup_steps: ``R``, the re-warm-up after the switch (0: none, a one-warm-up schedule that decays
            from the switch on).
        decay: ``"cosine"``, ``"linear"`` or ``"constant"`` after the re-warm-up.
        rewarmup_from: ``a``, the fraction of the current value the re-warm-up starts from, in ``[0, 1]``.
        final_fraction: ``f``, the fraction left at ``total_steps``, in ``[0, 1]``.
        before_switch: ``"constant"`` (the paper's: 1 until the switch) or ``"decay"`` (the decay curve over
            ``[W, T]`` until the switch, then everything scaled by its value there).
        last_epoch: as for every ``LRScheduler`` (-1: a fresh schedule).

    The scheduler must be stepped once per optimizer step. The edge cases (a switch inside the warm-up, a
    warm-up as long as the run, a switch that comes too late or never) and their warnings: the module docstring.
    """

    def __init__(
        self,
        optimizer: Optimizer,
        total_steps: int,
        warmup_steps: int = 0,
        rewarmup_steps: int = 0,
        decay: str = "cosine",
        *,
        rewarmup_from: float = 0.1,
        final_fraction: float = 0.0,
        before_switch: str = "constant",
        last_epoch: int = -1,
    ) -> None:
        if not hasattr(optimizer, "switch_step"):
            raise TypeError(
                f"optimizer: LAWNSchedule follows LAWN's switch; got {type(optimizer).__name__}, which has no "
                "switch_step (wrap it: lawn.LAWN(base, params, free_steps=...))"
            )
        for name, value in (
            ("total_steps", total_steps),
            ("warmup_steps", warmup_steps),
            ("rewarmup_steps", rewarmup_steps),
        ):
            if not is_int(value) or value < 0:
                raise ValueError(f"{name}: expected an int >= 0, got {value!r}")
        if total_steps < 1:
            raise ValueError(f"total_steps: must be >= 1, got {total_steps}")
        if decay not in DECAYS:
            raise ValueError(f"decay: expected one of {DECAYS}, got {decay!r}")
        if before_switch not in BEFORE_SWITCH:
            raise ValueError(f"before_switch: expected one of {BEFORE_SWITCH}, got {before_switch!r}")
        for name, value in (("rewarmup_from", rewarmup_from), ("final_fraction", final_fraction)):
            if not is_number(value) or not 0.0 <= value <= 1.0:
                raise ValueError(f"{name}: expected a number in [0, 1], got {value!r}")
        _warn_about_the_shape(optimizer, total_steps, warmup_steps, rewarmup_steps)
        self.total_steps = total_steps
        self.warmup_steps = warmup_steps
        self.rewarmup_steps = rewarmup_steps
        self.decay = decay
        self.rewarmup_from = float(rewarmup_from)
        self.final_fraction = float(final_fraction)
        self.before_switch = before_switch
        self._warned_no_switch = False
        super().__init__(optimizer, last_epoch)

    def factor(self, step: int) -> float:
        """The multiplier at ``step`` given what the optimizer says about its switch now."""
        return lawn_schedule_factor(
            step,
            self.total_steps,
            self.optimizer.switch_step,  # type: ignore[attr-defined]
            warmup_steps=self.warmup_steps,
            rewarmup_steps=self.rewarmup_steps,
            decay=self.decay,
            rewarmup_from=self.rewarmup_from,
            final_fraction=self.final_fraction,
            before_switch=self.before_switch,
        )

    def get_lr(self) -> list[float]:  # type: ignore[override]
        self._warn_if_the_switch_is_too_late()
        factor = self.factor(self.last_epoch)
        return [base_lr * factor for base_lr in self.base_lrs]

    def _warn_if_the_switch_is_too_late(self) -> None:
        """Once: an automatic switch that has not fired when too few steps are left for the re-warm-up and the
        decay (see the module docstring)."""
        if self._warned_no_switch or self.last_epoch < self.total_steps - max(self.rewarmup_steps, 1):
            return
        if getattr(self.optimizer, "free_steps_setting", None) != "auto" or self.optimizer.switch_step is not None:
            return
        self._warned_no_switch = True
        ending = "without decaying (before_switch='constant')" if self.before_switch == "constant" else "in it"
        warn_at_caller(
            f"LAWNSchedule: the automatic switch has not fired by step {self.last_epoch} of total_steps="
            f"{self.total_steps}, too late for the re-warm-up ({self.rewarmup_steps} steps) and the decay: the run "
            f"ends in the free phase, {ending}. Bound the free phase with "
            "lawn.AutoSwitch(max_free_steps=...) (e.g. a fraction of total_steps)",
            UserWarning,
        )

    def state_dict(self) -> dict:
        state = super().state_dict()
        state.pop("_warned_no_switch", None)  # not part of the schedule: a resumed run may warn again
        return state


def _warn_about_the_shape(optimizer: Optimizer, total_steps: int, warmup_steps: int, rewarmup_steps: int) -> None:
    """Warn at construction where the run cannot have the schedule's shape (see the module docstring)."""
    problems = []
    if warmup_steps and warmup_steps >= total_steps:
        problems.append(
            f"warmup_steps={warmup_steps} >= total_steps={total_steps}: the run ends in its warm-up"
            + (" before reaching the peak" if warmup_steps > total_steps else "")
            + " and never decays. Set warmup_steps well below total_steps (e.g. total_steps // 20)"
        )
    free = getattr(optimizer, "free_steps_setting", None)
    if isinstance(free, int) and optimizer.switch_step is None:  # type: ignore[attr-defined]
        if free >= total_steps:
            problems.append(
                f"the LAWN optimizer switches after free_steps={free} steps but the schedule ends at "
                f"total_steps={total_steps}: the run never leaves the free phase. Set free_steps below "
                "total_steps (e.g. a fraction of it) or free_steps='auto'"
            )
        elif free + rewarmup_steps > total_steps:
            problems.append(
                f"the switch after free_steps={free} steps leaves {total_steps - free} of total_steps={total_steps} "
                f"for a re-warm-up of rewarmup_steps={rewarmup_steps}: it does not finish and nothing decays. "
                "Switch earlier or shorten the re-warm-up"
            )
    for problem in problems:
        warnings.warn(f"LAWNSchedule: {problem}", UserWarning, stacklevel=3)
