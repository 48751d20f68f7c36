"""``UnifiedBlocks``: the parametrization ``(dense values, magnitudes) → weight`` of a hardened layer (see
:mod:`lawn.unification.parametrization` for how it is installed and retrained)."""

from __future__ import annotations

import torch
from torch import nn

from lawn.unification.blocks import DENSE, PRUNED, UNIFIED, from_blocks, grid_to_rows, to_blocks


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
        self.register_buffer("source_rows", torch.empty(0, dtype=torch.long), persistent=False)
        self._index_rows()

    def _index_rows(self) -> None:
        rows = grid_to_rows(self.kinds)
        self.dense_rows = torch.nonzero(rows == DENSE).flatten()
        self.unified_rows = torch.nonzero(rows == UNIFIED).flatten()
        self.num_blocks = rows.numel()
        # block row r of the weight is row source_rows[r] of [dense rows; unified rows; one zero row]
        filled = torch.cat([self.dense_rows, self.unified_rows])
        source = torch.full((self.num_blocks,), len(filled), dtype=torch.long, device=rows.device)
        source[filled] = torch.arange(len(filled), device=rows.device)
        self.source_rows = source

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:  # noqa: ANN001
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self._index_rows()  # new kinds from a checkpoint: the row indices follow

    def forward(self, dense: torch.Tensor, magnitudes: torch.Tensor) -> torch.Tensor:
        """One gather: row ``r`` of the blocks is row ``source_rows[r]`` of ``[dense; max(a, 0)·s; 0]`` (the same
        weight and gradients as :meth:`reference_forward`, in less time: ``benchmarks/harness_step.py``)."""
        values = torch.cat(
            [
                dense.view(-1, self.size),
                magnitudes.clamp_min(0).unsqueeze(1) * self.signs,
                dense.new_zeros(1, self.size),
            ]
        )
        return from_blocks(values.index_select(0, self.source_rows), self.shape)

    def reference_forward(self, dense: torch.Tensor, magnitudes: torch.Tensor) -> torch.Tensor:
        """The definition, block kind by block kind: zeros, dense rows written, unified rows written."""
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
        counts = {
            name: int((self.kinds == k).sum())
            for name, k in (("dense", DENSE), ("unified", UNIFIED), ("pruned", PRUNED))
        }
        return f"shape={self.shape}, size={self.size}, blocks={counts}"
