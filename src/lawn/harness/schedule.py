"""Learning-rate schedule: batch-size scaling, linear warm-up, then cosine or step decay.

With ``W`` warm-up steps out of ``T`` and ``t`` counted from 0, the factor multiplying the learning rate is
``(t + 1) / W`` for ``t < W``, then with progress ``p = (t − W) / (T − W)``:
cosine ``½ (1 + cos(π p))``; step ``γ^k`` with ``k`` the number of milestones (fractions of ``T``) passed;
constant ``1``.

With ``rewarmup_fraction > 0`` a LAWN optimizer (other methods have no switch: they keep the schedule above)
gets :class:`lawn.LAWNSchedule` instead (the paper's three
phases): the same warm-up, then ``1`` until LAWN's switch, a re-warm-up over ``round(rewarmup_fraction × T)``
steps from 0.1 of the value back to it, then the ``schedule``'s decay (cosine to 0, or constant) to ``T``.

``rewarmup_all = True`` is the schedule control: every other method gets the same three-phase shape, its
re-warm-up at step ``round(free_fraction × T)``, where a LAWN method with that ``free_fraction`` switches
(``lawn.lawn_schedule_factor`` with that switch step), so a baseline and LAWN differ only in the constraint.
"""

from __future__ import annotations

import math

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR, LRScheduler

import lawn
from lawn.harness.config import RunConfig
from lawn.schedule import lawn_schedule_factor

_EXPONENT = {"none": 0.0, "linear": 1.0, "sqrt": 0.5}


def scaled_lr(config: RunConfig) -> float:
    """``lr × (batch_size / base_batch_size)^p``, ``p`` given by ``lr_scaling``."""
    return config.lr * (config.batch_size / config.base_batch_size) ** _EXPONENT[config.lr_scaling]


def warmup_steps(config: RunConfig, total_steps: int) -> int:
    return int(round(config.warmup_fraction * total_steps))


def lr_factor(
    step: int,
    total_steps: int,
    warmup: int,
    kind: str,
    milestones: tuple[float, ...] = (),
    gamma: float = 0.1,
) -> float:
    """The schedule's multiplier at optimizer step ``step`` (0-based)."""
    if step < warmup:
        return (step + 1) / warmup
    if kind == "constant":
        return 1.0
    if kind == "cosine":
        progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    if kind == "step":
        passed = sum(step >= m * total_steps for m in milestones)
        return gamma**passed
    raise ValueError(f"schedule: unknown kind {kind!r}")


def build_scheduler(optimizer: Optimizer, config: RunConfig, total_steps: int) -> LRScheduler:
    warmup = warmup_steps(config, total_steps)
    if config.rewarmup_fraction > 0.0 and isinstance(optimizer, lawn.LAWN):
        return lawn.LAWNSchedule(
            optimizer,
            total_steps,
            warmup_steps=warmup,
            rewarmup_steps=max(1, int(round(config.rewarmup_fraction * total_steps))),
            decay=config.schedule,
        )
    if config.rewarmup_all and config.rewarmup_fraction > 0.0:
        switch = int(round(config.free_fraction * total_steps))
        rewarmup = max(1, int(round(config.rewarmup_fraction * total_steps)))
        return LambdaLR(
            optimizer,
            lambda step: lawn_schedule_factor(
                step, total_steps, switch, warmup_steps=warmup, rewarmup_steps=rewarmup, decay=config.schedule
            ),
        )
    return LambdaLR(
        optimizer,
        lambda step: lr_factor(
            step, total_steps, warmup, config.schedule, tuple(config.step_milestones), config.step_gamma
        ),
    )
