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
from typing import TYPE_CHECKING, Any

import torch

from lawn._checks import is_int
from lawn.constraint._dtensor import full
from lawn.constraint.keys import INNERMOST

if TYPE_CHECKING:  # type hints only
    from lawn.constraint.keys import Keys

AUTO = "auto"
# the innermost constraint's param_groups keys (an outer one's carry its own prefix: lawn.constraint.keys)
EVERY_KEY = INNERMOST.auto_check_every
THRESHOLD_KEY = INNERMOST.auto_threshold
MAX_KEY = INNERMOST.auto_max_free_steps
LAST_KEY = INNERMOST.auto_last_log_norm
PEAK_KEY = INNERMOST.auto_peak_growth


@dataclass(frozen=True)
class AutoSwitch:
    """The automatic switch's constants (see the module docstring); ``free_steps="auto"`` is ``AutoSwitch()``.

    A switch rule (:mod:`lawn.constraint.switch`): its constants and memory live in ``param_groups`` under the
    constraint's own prefix.

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
        if bound is not None and (not is_int(bound) or bound < 1):
            raise ValueError(f"AutoSwitch.max_free_steps: must be None or an int >= 1, got {bound!r}")

    @property
    def setting(self) -> str:
        """What ``free_steps`` reads back: ``"auto"``."""
        return AUTO

    @property
    def at_construction(self) -> bool:
        """Never switches when the constraint is built."""
        return False

    def entries(self, keys: Keys, params: list[torch.Tensor]) -> dict[str, Any]:
        """The ``param_groups`` entries of this rule, its memory started at the current weights."""
        return {
            keys.free_steps: AUTO,
            keys.auto_check_every: self.check_every,
            keys.auto_threshold: float(self.threshold),
            keys.auto_max_free_steps: self.max_free_steps,
            keys.auto_last_log_norm: log_norm(params),
            keys.auto_peak_growth: 0.0,
        }

    @classmethod
    def from_group(cls, group: dict[str, Any], keys: Keys) -> AutoSwitch:
        """The rule whose constants ``group`` holds (after a checkpoint was loaded)."""
        return cls(group[keys.auto_check_every], group[keys.auto_threshold], group[keys.auto_max_free_steps])

    def overdue(self, steps: int) -> bool:
        """Whether ``max_free_steps`` has passed (read without side effects, e.g. at a load)."""
        return self.max_free_steps is not None and steps >= self.max_free_steps

    def due(self, groups: list[dict[str, Any]], keys: Keys, steps: int, params: list[torch.Tensor]) -> bool:
        """After applied step ``steps``: does the rule say switch now? At a check, its memory is updated in every
        group of ``groups`` (``param_groups``); between checks it returns ``False`` without touching a tensor.

        A norm that is not finite says switch, so that ``freeze()`` names the culprit.
        """
        first = groups[0]
        bound = first[keys.auto_max_free_steps]
        if bound is not None and steps >= bound:
            return True
        if steps % first[keys.auto_check_every] != 0:
            return False
        current = log_norm(params)
        if math.isnan(current) or current == math.inf:
            return True
        last = first[keys.auto_last_log_norm]
        growth = current - last if math.isfinite(last) else 0.0
        peak = max(first[keys.auto_peak_growth], growth) if math.isfinite(current) else first[keys.auto_peak_growth]
        for group in groups:
            group[keys.auto_last_log_norm], group[keys.auto_peak_growth] = current, peak
        return peak > 0.0 and growth <= first[keys.auto_threshold] * peak


@torch.no_grad()
def log_norm(params: list[torch.Tensor]) -> float:
    """``log sqrt(Σ ‖W‖²)`` over ``params`` in fp64 (one host sync); ``-inf`` when they are all zero."""
    total = sum(full(p.detach().double().pow(2).sum()).cpu() for p in params)
    value = float(total)
    if math.isnan(value) or value == math.inf:
        return value
    return 0.5 * math.log(value) if value > 0 else -math.inf
