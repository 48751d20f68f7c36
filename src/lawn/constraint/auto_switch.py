"""``free_steps="auto"``: switch to the constrained phase once the constrained norms stop growing fast.

**The criterion.** Every ``check_every`` applied steps, take the total norm of the constrained weights,
``n_k = sqrt(Σ_W ‖W‖²)`` (one reduction and one host sync per check, none in between), and its growth over the
last window in log scale, ``r_k = log(n_k / n_{k−1})``. Keep the peak ``r* = max_j r_j``. Switch at the first
check where

    r* > 0   and   r_k ≤ threshold · r*,

i.e. once the norms grow at most ``threshold`` times as fast as they ever did.

**Why this.** Without a constraint, cross-entropy drives the logit scale up in two regimes: while the network
fits the data, the weights grow fast (the gradient has a large radial part, ``⟨g, W⟩ < 0``); once most
examples are fit, the norm keeps creeping up only logarithmically, and it is this slow inflation of the logits
that flattens the loss and stalls learning, which LAWN exists to stop. The switch belongs at the end of the
first regime: the norms have "reached a sufficient norm" when their growth rate has fallen well below its
peak. Measured in log scale and relative to its own peak, the rule is free of the weights' scale, the
learning rate and the layer sizes: there is no norm threshold to tune. The peak also protects the warm-up:
while the learning rate ramps up the growth rate rises, so the rule cannot fire there. If the norms never grow
(``r* ≤ 0``: a learning rate of zero, weights that shrink), it never fires and the run stays free: there is
then no logit growth to stop.

Its constants: ``threshold`` (0 < threshold < 1) and ``check_every`` (the window). The defaults were chosen on
the validation split of the study in docs/results.md ("LAWN as the paper runs it"); ``max_free_steps`` bounds
the free phase from above if given.

**Determinism and checkpoints.** The rule reads only the weights, in a fixed order, at fixed steps; its
memory (``n`` at the last check and the peak ``r*``) is two Python floats in ``param_groups``, so the standard
``state_dict`` carries it and a resume before, at or after the switch continues bit-identically.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from lawn.constraint._dtensor import full

AUTO = "auto"
# param_groups keys (scalars survive a checkpoint there)
EVERY_KEY = "lawn_auto_check_every"
THRESHOLD_KEY = "lawn_auto_threshold"
MAX_KEY = "lawn_auto_max_free_steps"
LAST_KEY = "lawn_auto_last_log_norm"
PEAK_KEY = "lawn_auto_peak_growth"


@dataclass(frozen=True)
class AutoSwitch:
    """The automatic switch's constants (see the module docstring); ``free_steps="auto"`` is ``AutoSwitch()``.

    Args:
        check_every: applied steps between two checks (the window of the growth rate).
        threshold: switch when the window's growth of ``log ‖W‖`` is at most this fraction of its peak.
        max_free_steps: switch at this step at the latest (``None``: no bound).
    """

    check_every: int = 50
    threshold: float = 0.3
    max_free_steps: int | None = None

    def __post_init__(self) -> None:
        if isinstance(self.check_every, bool) or not isinstance(self.check_every, int) or self.check_every < 1:
            raise ValueError(f"AutoSwitch.check_every: must be an int >= 1, got {self.check_every!r}")
        if not (isinstance(self.threshold, int | float) and 0.0 < self.threshold < 1.0):
            raise ValueError(f"AutoSwitch.threshold: must be a number in (0, 1), got {self.threshold!r}")
        bound = self.max_free_steps
        if bound is not None and (isinstance(bound, bool) or not isinstance(bound, int) or bound < 1):
            raise ValueError(f"AutoSwitch.max_free_steps: must be None or an int >= 1, got {bound!r}")


def resolve(free_steps: Any) -> AutoSwitch | None:
    """``"auto"`` → ``AutoSwitch()``; an ``AutoSwitch`` → itself; anything else (a step count) → ``None``."""
    if isinstance(free_steps, AutoSwitch):
        return free_steps
    if isinstance(free_steps, str):
        if free_steps != AUTO:
            raise ValueError(f"free_steps: expected an int, 'auto' or a lawn.AutoSwitch, got {free_steps!r}")
        return AutoSwitch()
    return None


def options(auto: AutoSwitch, params: list[torch.Tensor]) -> dict[str, Any]:
    """The ``param_groups`` entries of an automatic switch, its memory started at the current weights."""
    return {
        EVERY_KEY: auto.check_every,
        THRESHOLD_KEY: float(auto.threshold),
        MAX_KEY: auto.max_free_steps,
        LAST_KEY: log_norm(params),
        PEAK_KEY: 0.0,
    }


@torch.no_grad()
def log_norm(params: list[torch.Tensor]) -> float:
    """``log sqrt(Σ ‖W‖²)`` over ``params`` in fp64 (one host sync); ``-inf`` when they are all zero."""
    total = sum(full(p.detach().double().pow(2).sum()).cpu() for p in params)
    value = float(total)
    if math.isnan(value) or value == math.inf:
        return value
    return 0.5 * math.log(value) if value > 0 else -math.inf


def switch_due(groups: list[dict[str, Any]], steps: int, params: list[torch.Tensor]) -> bool:
    """After applied step ``steps``: does the rule say switch now? At a check, its memory is updated in every
    group of ``groups`` (``param_groups``); between checks it returns ``False`` without touching a tensor.

    A norm that is not finite says switch, so that ``freeze()`` names the culprit.
    """
    first = groups[0]
    bound = first[MAX_KEY]
    if bound is not None and steps >= bound:
        return True
    if steps % first[EVERY_KEY] != 0:
        return False
    current = log_norm(params)
    if math.isnan(current) or current == math.inf:
        return True
    growth = current - first[LAST_KEY] if math.isfinite(first[LAST_KEY]) else 0.0
    peak = max(first[PEAK_KEY], growth) if math.isfinite(current) else first[PEAK_KEY]
    for group in groups:
        group[LAST_KEY], group[PEAK_KEY] = current, peak
    return peak > 0.0 and growth <= first[THRESHOLD_KEY] * peak
