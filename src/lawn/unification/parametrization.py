"""Hardening: freeze block kinds and signs and retrain through a ``torch.nn.utils.parametrize`` parametrization.

After ``harden`` a layer's ``weight`` is computed from two stored tensors (``parametrizations.weight.original0`` and
``original1``):

    dense blocks    w = the stored dense values (one learnable value per entry, as before)
    unified block   w_i = max(a, 0)·s_i        (one learnable magnitude a, signs s fixed at harden time)
    pruned block    w = 0                       (nothing stored, nothing learnable)

so any optimizer (momentum, Adam, weight decay) keeps the structure exactly: pruned entries are not parameters at
all and every entry of a unified block is the same magnitude times ±1. The optimizer must be built (again) after
hardening, because the layer's parameters are new tensors.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import torch
from torch import nn
from torch.nn.utils import parametrize

from lawn.unification.blocks import (
    UNIFIED,
    BlockSpec,
    check_fractions,
    choose_kinds,
    rows_to_grid,
    signs_of,
    to_blocks,
)
from lawn.unification.selection import is_hardened, select_weights
from lawn.unification.unified_blocks import UnifiedBlocks


def install(module: nn.Module, kinds: torch.Tensor, signs: torch.Tensor, size: int) -> UnifiedBlocks:
    """Register ``UnifiedBlocks(kinds, signs)`` on ``module.weight``; the stored form comes from the current weight."""
    weight = module.weight
    param = UnifiedBlocks(kinds.to(weight.device), signs.to(weight.device, weight.dtype), tuple(weight.shape), size)
    parametrize.register_parametrization(module, "weight", param)
    return param


def hardened_layers(model: nn.Module) -> Iterator[tuple[str, nn.Module, UnifiedBlocks]]:
    """``(module name, module, parametrization)`` for every hardened weight of ``model``."""
    for name, module in model.named_modules():
        if is_hardened(module):
            param = next(p for p in module.parametrizations.weight if isinstance(p, UnifiedBlocks))
            yield name, module, param


def harden(
    model: nn.Module,
    spec: BlockSpec | None = None,
    unify: float = 0.5,
    prune: float = 0.25,
    params: Iterable[torch.nn.Parameter | str] | None = None,
) -> dict[str, torch.Tensor]:
    """One-shot projection ``W ← Π(W)`` of the selected weights, then freeze kinds and signs (parametrization).

    Returns ``{weight name: kinds}`` (block grids, see ``project``). Nothing is changed if any weight is refused.
    """
    spec = BlockSpec() if spec is None else spec
    check_fractions(unify, prune)
    targets, _ = select_weights(model, spec, params)
    plans = []
    for name, module in targets:
        blocks = to_blocks(module.weight.detach(), spec.size)
        rows = choose_kinds(blocks, unify, prune)
        signs = signs_of(blocks[rows == UNIFIED])
        plans.append((name, module, rows_to_grid(rows, spec.grid_shape(module.weight.shape)), signs))
    out = {}
    for name, module, kinds, signs in plans:
        install(module, kinds, signs, spec.size)
        out[f"{name}.weight" if name else "weight"] = kinds
    return out
