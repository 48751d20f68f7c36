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
    DENSE,
    PRUNED,
    UNIFIED,
    BlockSpec,
    check_fractions,
    choose_kinds,
    from_blocks,
    grid_to_rows,
    rows_to_grid,
    signs_of,
    to_blocks,
)
from lawn.unification.selection import is_hardened, select_weights


class UnifiedBlocks(nn.Module):
    """Parametrization ``(dense values, magnitudes) → weight`` with fixed block kinds and unified signs.

    Buffers (saved in the model's state_dict): ``kinds`` (int8 block grid, ``DENSE/UNIFIED/PRUNED``) and ``signs``
    (``(num_unified, n)`` ±1 in the weight's dtype). ``right_inverse(W)`` gives the closest stored form to ``W``:
    its dense entries and the ``mean|W|`` of each unified block.
    """

    def __init__(self, kinds: torch.Tensor, signs: torch.Tensor, shape: tuple[int, ...], size: int) -> None:
        super().__init__()
        self.shape = tuple(int(s) for s in shape)
        self.size = int(size)
        self.register_buffer("kinds", kinds.to(torch.int8).contiguous())
        self.register_buffer("signs", signs.contiguous())
        self.register_buffer("dense_rows", torch.empty(0, dtype=torch.long), persistent=False)
        self.register_buffer("unified_rows", torch.empty(0, dtype=torch.long), persistent=False)
        self._index_rows()

    def _index_rows(self) -> None:
        rows = grid_to_rows(self.kinds)
        self.dense_rows = torch.nonzero(rows == DENSE).flatten()
        self.unified_rows = torch.nonzero(rows == UNIFIED).flatten()
        self.num_blocks = rows.numel()

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:  # noqa: ANN001
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self._index_rows()  # new kinds from a checkpoint: the row indices follow

    def forward(self, dense: torch.Tensor, magnitudes: torch.Tensor) -> torch.Tensor:
        blocks = dense.new_zeros(self.num_blocks, self.size)
        blocks = blocks.index_put((self.dense_rows,), dense.view(-1, self.size))
        blocks = blocks.index_put((self.unified_rows,), magnitudes.clamp_min(0).unsqueeze(1) * self.signs)
        return from_blocks(blocks, self.shape)

    def right_inverse(self, weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        blocks = to_blocks(weight.detach(), self.size)
        dense = blocks[self.dense_rows].reshape(-1).clone()
        magnitudes = blocks[self.unified_rows].abs().mean(1)
        return dense, magnitudes

    def extra_repr(self) -> str:
        counts = {name: int((self.kinds == k).sum()) for name, k in (("dense", DENSE), ("unified", UNIFIED),
                                                                     ("pruned", PRUNED))}
        return f"shape={self.shape}, size={self.size}, blocks={counts}"


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
