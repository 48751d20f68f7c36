"""A constraint's options and base optimizer, checked before anything is built: each bad value is refused with a
``TypeError`` / ``ValueError`` naming it and saying what to do, and nothing has changed then."""

from __future__ import annotations

import inspect
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from torch.optim import Optimizer

from lawn._checks import is_int, is_number
from lawn.constraint.keys import Keys
from lawn.constraint.reference import GRANULARITIES, Granularity

#: target norms must lie here: the fp32 sums of squares in the fast paths are then exact in range
MIN_TARGET, MAX_TARGET = 1e-12, 1e12
#: ``target_scale`` must lie here
MIN_TARGET_SCALE, MAX_TARGET_SCALE = 1e-6, 1e6


def require(condition: bool, message: str, error: type[Exception] = ValueError) -> None:
    if not condition:
        raise error(message)


def positive_finite(x: Any) -> bool:
    return is_number(x) and math.isfinite(x) and x > 0


@dataclass(frozen=True)
class Options:
    """Every option of a constraint but its switch rule (:mod:`lawn.constraint.switch`), checked on creation."""

    granularity: Granularity = "tensor"
    project_gradient: bool = True
    target_norm: float | None = None
    target_scale: float = 1.0
    retract_every: int = 1
    foreach: bool | None = None
    compiled: bool = False
    fused: bool | None = None

    def __post_init__(self) -> None:
        require(
            self.granularity in GRANULARITIES,
            f"granularity: expected one of {GRANULARITIES}, got {self.granularity!r}",
        )
        require(
            isinstance(self.project_gradient, bool),
            f"project_gradient: expected a bool, got {self.project_gradient!r}",
            TypeError,
        )
        scale = self.target_scale
        require(
            positive_finite(scale) and MIN_TARGET_SCALE <= scale <= MAX_TARGET_SCALE,
            f"target_scale: must be a number in [{MIN_TARGET_SCALE:g}, {MAX_TARGET_SCALE:g}], got {scale!r}",
        )
        target = self.target_norm
        require(
            target is None or (positive_finite(target) and MIN_TARGET <= target <= MAX_TARGET),
            f"target_norm: must be None or a number in [{MIN_TARGET:g}, {MAX_TARGET:g}], got {target!r}",
        )
        require(is_int(self.retract_every), f"retract_every: expected an int, got {self.retract_every!r}", TypeError)
        require(self.retract_every >= 1, f"retract_every: must be >= 1, got {self.retract_every}")
        self._check_paths()

    def _check_paths(self) -> None:
        foreach, compiled, fused = self.foreach, self.compiled, self.fused
        require(
            foreach is None or isinstance(foreach, bool),
            f"foreach: expected None or a bool, got {foreach!r}",
            TypeError,
        )
        require(isinstance(compiled, bool), f"compiled: expected a bool, got {compiled!r}", TypeError)
        require(not (compiled and foreach is False), "compiled=True runs the fused path: leave foreach unset")
        require(fused is None or isinstance(fused, bool), f"fused: expected None or a bool, got {fused!r}", TypeError)
        require(not (fused and foreach is False), "fused=True runs the fused kernel: leave foreach unset")
        require(not (fused and compiled), "fused and compiled: choose one of the two fast paths")

    def entries(self, keys: Any) -> dict[str, Any]:
        """The options' ``param_groups`` entries (but ``free_steps``: the switch rule's)."""
        return {
            keys.granularity: self.granularity,
            keys.project_gradient: self.project_gradient,
            keys.fixed_target: self.target_norm,
            keys.target_scale: float(self.target_scale),
            keys.retract_every: self.retract_every,
        }


def needs_closure(base: Optimizer) -> bool:
    """Whether ``base.step`` re-evaluates the closure itself: a required ``closure`` argument (L-BFGS), or the
    two-step ``first_step`` / ``second_step`` protocol of sharpness-aware optimizers (SAM and its variants)."""
    if callable(getattr(base, "first_step", None)) and callable(getattr(base, "second_step", None)):
        return True
    try:
        closure = inspect.signature(type(base).step).parameters.get("closure")
    except (TypeError, ValueError):
        return False
    return closure is not None and closure.default is inspect.Parameter.empty


def check_base(base: Any, wrapper: Any) -> None:
    """``base`` is an optimizer a constraint can wrap; ``wrapper``: the live constraint already wrapping it."""
    require(
        isinstance(base, Optimizer),
        f"base: expected a torch.optim.Optimizer, got {type(base).__name__}",
        TypeError,
    )
    require(
        not needs_closure(base),
        f"base: {type(base).__name__} re-evaluates the closure inside its step (L-BFGS, SAM); LAWN projects "
        "the gradient once before the base step, which such optimizers would bypass: use another optimizer",
    )
    require(
        wrapper is None,
        f"base: {type(base).__name__} is already wrapped by {type(wrapper).__name__}; "
        "two wrappers side by side would both step it. To combine two constraints, wrap that wrapper: "
        "LAWN(WRS(base, ...), tail, ...)",
    )


def group_options(group: Mapping[str, Any], keys: Keys) -> Options:
    """The :class:`Options` a param group's ``<prefix><name>`` entries hold (raises as :class:`Options` does)."""
    return Options(
        granularity=group[keys.granularity],
        project_gradient=group[keys.project_gradient],
        target_norm=group[keys.fixed_target],
        target_scale=group[keys.target_scale],
        retract_every=group[keys.retract_every],
    )
