"""Micro-structured blocks and the Euclidean projection onto "unified / pruned / dense" blocks.

A weight of shape ``(out, in, *kernel)`` (Linear, Conv1d/2d/3d, grouped convs alike) is tiled into blocks of ``n``
consecutive entries along the input dimension (dim 1) at one output channel and one kernel position: block
``(o, j, *k)`` holds ``w[o, j·n:(j+1)·n, *k]``. The block grid has the weight's shape with dim 1 divided by ``n``.

Each block is one of three kinds:

- **dense**: kept as it is;
- **unified**: ``w_i = a·s_i`` with one magnitude ``a ≥ 0`` and fixed signs ``s_i ∈ {±1}``. The closest unified block
  to ``v`` has ``s = sign(v)`` and ``a = mean|v|``; its squared error is ``‖v‖² − n·mean(|v|)² = n·Var(|v|)``;
- **pruned**: all zeros, squared error ``‖v‖²``.

``project`` prunes the ``round(prune·B)`` blocks of smallest ``‖v‖²`` and then, among the rest, unifies the
``round((prune + unify)·B) − round(prune·B)`` blocks of smallest ``n·Var(|v|)`` (fractions are of all ``B`` blocks of
the layer). Each step alone is the exact Euclidean projection (the cost is a sum of per-block costs, so the cheapest
``k`` blocks are optimal); with both fractions non-zero the two steps are greedy and can miss the joint optimum.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from lawn._checks import is_number

DENSE, UNIFIED, PRUNED = 0, 1, 2
KIND_NAMES = {DENSE: "dense", UNIFIED: "unified", PRUNED: "pruned"}


@dataclass(frozen=True)
class BlockSpec:
    """Blocks of ``size`` consecutive input-channel entries (dim 1) of one output channel at one kernel position.

    The size must divide the input dimension (no padding): layers where it does not are refused when named and
    skipped when a whole model is scanned (see ``select_weights``).
    """

    size: int = 4

    def __post_init__(self) -> None:
        if isinstance(self.size, bool) or not isinstance(self.size, int) or self.size < 1:
            raise ValueError(f"BlockSpec(size={self.size!r}): size must be a positive int, e.g. BlockSpec(size=4)")

    def fits(self, weight: torch.Tensor) -> bool:
        """Whether ``weight`` (at least 2-D) can be tiled: ``size`` divides ``weight.shape[1]``."""
        return weight.dim() >= 2 and weight.shape[1] % self.size == 0

    def check(self, weight: torch.Tensor, name: str = "weight") -> None:
        """Raise a ValueError naming ``name`` when ``weight`` cannot be tiled into blocks."""
        if not isinstance(weight, torch.Tensor):
            raise TypeError(f"{name}: expected a tensor, got {type(weight).__name__}")
        if weight.dim() < 2:
            raise ValueError(
                f"{name}: shape {tuple(weight.shape)} has no input dimension; blocks need a 2-D or "
                "higher weight (Linear or Conv), not a bias or norm scale"
            )
        if not weight.is_floating_point():
            raise ValueError(f"{name}: dtype {weight.dtype} is not floating point")
        if weight.shape[1] % self.size:
            raise ValueError(
                f"{name}: block size {self.size} does not divide its input dimension {weight.shape[1]} "
                f"(shape {tuple(weight.shape)}); use a BlockSpec size that divides it, or leave this weight out "
                "(blocks are never padded)"
            )

    def grid_shape(self, shape: torch.Size | tuple[int, ...]) -> tuple[int, ...]:
        """Shape of the block grid (and of the kinds tensor) of a weight of ``shape``."""
        return (shape[0], shape[1] // self.size, *shape[2:])


def to_blocks(weight: torch.Tensor, size: int) -> torch.Tensor:
    """``(out, in, *k)`` → ``(B, size)``, rows in the order of ``grid.movedim(1, -1).reshape(-1)``."""
    return weight.movedim(1, -1).reshape(-1, size)


def from_blocks(blocks: torch.Tensor, shape: torch.Size | tuple[int, ...]) -> torch.Tensor:
    """Inverse of ``to_blocks`` for a weight of ``shape``."""
    moved = (shape[0], *shape[2:], shape[1])
    return blocks.reshape(moved).movedim(-1, 1)


def grid_to_rows(grid: torch.Tensor) -> torch.Tensor:
    """A block-grid tensor (``spec.grid_shape``) → one entry per row of ``to_blocks``."""
    return grid.movedim(1, -1).reshape(-1)


def rows_to_grid(rows: torch.Tensor, grid_shape: tuple[int, ...]) -> torch.Tensor:
    """Inverse of ``grid_to_rows``."""
    moved = (grid_shape[0], *grid_shape[2:], grid_shape[1])
    return rows.reshape(moved).movedim(-1, 1)


def check_fractions(unify: float, prune: float) -> None:
    """Fractions of blocks: each in [0, 1], together at most 1."""
    for name, value in (("unify", unify), ("prune", prune)):
        if not is_number(value) or not 0.0 <= float(value) <= 1.0:
            raise ValueError(f"{name}={value!r}: a fraction of blocks must be a number in [0, 1]")
    if float(unify) + float(prune) > 1.0 + 1e-12:
        raise ValueError(
            f"unify={unify} + prune={prune} = {unify + prune:g} > 1: the fractions share the blocks of "
            "a layer; lower one of them so they sum to at most 1"
        )


def block_counts(num_blocks: int, unify: float, prune: float) -> tuple[int, int]:
    """(pruned, unified) block counts: ``round(prune·B)`` and ``round((prune + unify)·B) − round(prune·B)``."""
    n_prune = int(float(prune) * num_blocks + 0.5)
    n_both = min(num_blocks, int((float(prune) + float(unify)) * num_blocks + 0.5))
    return n_prune, max(0, n_both - n_prune)


def block_errors(blocks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Squared projection errors per block (fp64 for a stable ranking): (pruned ``‖v‖²``, unified ``n·Var|v|``)."""
    v = blocks.detach().double()
    sq = (v * v).sum(1)
    unify_err = sq - v.abs().sum(1) ** 2 / v.shape[1]
    return sq, unify_err.clamp_min(0)


def choose_kinds(blocks: torch.Tensor, unify: float, prune: float) -> torch.Tensor:
    """Kinds (int8, one per row of ``blocks``) of the projection described in the module docstring."""
    num_blocks = blocks.shape[0]
    n_prune, n_unify = block_counts(num_blocks, unify, prune)
    prune_err, unify_err = block_errors(blocks)
    kinds = torch.full((num_blocks,), DENSE, dtype=torch.int8, device=blocks.device)
    if n_prune:
        idx = torch.argsort(prune_err, stable=True)[:n_prune]
        kinds[idx] = PRUNED
    if n_unify:
        candidates = unify_err.masked_fill(kinds == PRUNED, float("inf"))
        idx = torch.argsort(candidates, stable=True)[:n_unify]
        kinds[idx] = UNIFIED
    return kinds


def signs_of(blocks: torch.Tensor) -> torch.Tensor:
    """±1 signs of the entries (``+1`` for zeros), in the blocks' dtype."""
    one = torch.ones((), dtype=blocks.dtype, device=blocks.device)
    return torch.where(blocks < 0, -one, one)


def project_blocks(blocks: torch.Tensor, kinds: torch.Tensor) -> torch.Tensor:
    """Closest point with the given kinds: dense rows as they are, unified rows ``mean|v|·sign(v)``, pruned rows 0."""
    magnitude = blocks.abs().mean(1, keepdim=True)
    unified = magnitude * signs_of(blocks)
    out = torch.where((kinds == UNIFIED).unsqueeze(1), unified, blocks)
    return out.masked_fill((kinds == PRUNED).unsqueeze(1), 0.0)


def project(
    weight: torch.Tensor, spec: BlockSpec | None = None, unify: float = 0.5, prune: float = 0.25
) -> tuple[torch.Tensor, torch.Tensor]:
    """Euclidean projection of ``weight`` onto the set with ``unify``/``prune`` fractions of unified/pruned blocks.

    Returns ``(projected, kinds)``: a new tensor (``weight`` is not modified) and an int8 tensor of block kinds
    (``DENSE = 0``, ``UNIFIED = 1``, ``PRUNED = 2``) shaped like the block grid, ``(out, in // n, *kernel)``.
    Exact when only one fraction is non-zero; greedy (prune first, then unify) when both are.
    """
    spec = BlockSpec() if spec is None else spec
    if not isinstance(spec, BlockSpec):
        raise TypeError(f"spec: expected a BlockSpec, got {type(spec).__name__}")
    spec.check(weight)
    check_fractions(unify, prune)
    with torch.no_grad():
        blocks = to_blocks(weight.detach(), spec.size)
        kinds = choose_kinds(blocks, unify, prune)
        projected = from_blocks(project_blocks(blocks, kinds), weight.shape).contiguous()
    return projected, rows_to_grid(kinds, spec.grid_shape(weight.shape)).contiguous()
