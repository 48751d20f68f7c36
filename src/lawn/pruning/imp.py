"""Iterative magnitude pruning (IMP): train, prune a fraction of the survivors, reset, repeat.

Round ``r`` (1 … ``rounds``) trains, removes ``rate`` of the surviving weights (:func:`magnitude_masks`,
compounding) and resets the survivors: ``"rewind"`` to ``initial_state`` (lottery tickets; θ_k for late
rewinding), ``"reinit"`` to a fresh draw, or ``"continue"`` (keep the trained weights: iterative prune &
fine-tune). A last training run follows the last round. After ``r`` rounds a fraction ``(1 − rate)^r`` of the
chosen weights survives.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch
from torch import nn

from lawn._checks import is_int
from lawn.pruning.apply import apply_masks
from lawn.pruning.arms import check_state, reinitialize, rewind
from lawn.pruning.masks import check_sparsity, magnitude_masks
from lawn.pruning.report import sparsity_report

RESETS = ("rewind", "reinit", "continue")


def iterative_magnitude_pruning(
    model: nn.Module,
    train: Callable[[nn.Module], Any],
    rounds: int,
    rate: float = 0.2,
    *,
    initial_state: Mapping[str, torch.Tensor] | None = None,
    reset: str = "rewind",
    scope: str = "global",
    params: Iterable[str] | str | None = None,
    seed: int = 0,
    on_round: Callable[[dict[str, Any]], None] | None = None,
) -> list[dict[str, Any]]:
    """Run IMP on ``model`` in place; ``train(model)`` trains it (masks stay on) and returns anything.

    Returns one record per training run: ``{"round", "sparsity", "result", "masks"}`` (round 0 is dense);
    ``on_round`` is called with each record as it ends. ``initial_state`` defaults to ``model``'s state now.
    """
    if not is_int(rounds) or rounds < 1:
        raise ValueError(f"rounds: expected an integer >= 1, got {rounds!r}")
    check_sparsity(rate, "rate")
    if rate == 0:
        raise ValueError("rate: 0 prunes nothing; use a fraction in (0, 1)")
    if reset not in RESETS:
        raise ValueError(f"reset: expected one of {RESETS}, got {reset!r}")
    if initial_state is None:
        initial_state = copy.deepcopy(model.state_dict())
    else:
        check_state(model, initial_state, "initial_state")
    names = list(magnitude_masks(model, 0.0, scope, params))  # checks params / nothing to prune up front
    records: list[dict[str, Any]] = []
    masks: dict[str, torch.Tensor] = {}
    for r in range(rounds + 1):
        result = train(model)
        record = {
            "round": r,
            "sparsity": sparsity_report(model, names)["total"]["sparsity"],
            "result": result,
            "masks": {k: v.clone() for k, v in masks.items()},
        }
        records.append(record)
        if on_round is not None:
            on_round(record)
        if r == rounds:
            break
        masks = magnitude_masks(model, rate, scope, names)
        if reset == "rewind":
            rewind(model, initial_state, masks)
        elif reset == "reinit":
            reinitialize(model, masks, seed=seed + r)
        else:
            apply_masks(model, masks)
    return records
