"""lawn.unification.project: block layout, exactness in the single cases (brute force), greedy with both, bad input."""

from __future__ import annotations

import itertools

import pytest
import torch

from lawn.unification import DENSE, PRUNED, UNIFIED, BlockSpec, project
from lawn.unification.blocks import block_counts


def _blocks_of(w: torch.Tensor, n: int) -> list[torch.Tensor]:
    """Blocks by the definition: w[o, j*n:(j+1)*n, *k] for every (o, j, *k), in grid order (o, j, *k)."""
    grid = (w.shape[0], w.shape[1] // n, *w.shape[2:])
    return [w[(idx[0], slice(idx[1] * n, (idx[1] + 1) * n), *idx[2:])] for idx in itertools.product(*map(range, grid))]


def _best_unified(v: torch.Tensor) -> tuple[float, torch.Tensor]:
    """Brute force over all sign patterns s, a = max(0, <v, s>/n): the closest a·s to v."""
    best = (float("inf"), v)
    for signs in itertools.product((-1.0, 1.0), repeat=v.numel()):
        s = torch.tensor(signs, dtype=torch.float64)
        a = max(0.0, float(v.double() @ s) / v.numel())
        err = float(((v.double() - a * s) ** 2).sum())
        if err < best[0] - 1e-12:
            best = (err, a * s)
    return best


def _cost(blocks: list[torch.Tensor], kinds: tuple[int, ...]) -> float:
    total = 0.0
    for v, k in zip(blocks, kinds, strict=True):
        if k == PRUNED:
            total += float((v.double() ** 2).sum())
        elif k == UNIFIED:
            total += _best_unified(v)[0]
    return total


def _brute_force(blocks: list[torch.Tensor], n_prune: int, n_unify: int) -> float:
    """Smallest squared distance over every assignment with exactly these counts."""
    best = float("inf")
    idx = range(len(blocks))
    for pruned in itertools.combinations(idx, n_prune):
        rest = [i for i in idx if i not in pruned]
        for unified in itertools.combinations(rest, n_unify):
            kinds = tuple(PRUNED if i in pruned else UNIFIED if i in unified else DENSE for i in idx)
            best = min(best, _cost(blocks, kinds))
    return best


@pytest.mark.parametrize("shape", [(3, 8), (2, 4, 3), (2, 8, 2, 1)])
def test_kinds_follow_the_block_layout(shape: tuple[int, ...]) -> None:
    w = torch.randn(*shape, generator=torch.Generator().manual_seed(0))
    projected, kinds = project(w, BlockSpec(4), unify=0.5, prune=0.25)
    assert kinds.shape == (shape[0], shape[1] // 4, *shape[2:]) and kinds.dtype == torch.int8
    for v, p, k in zip(_blocks_of(w, 4), _blocks_of(projected, 4), kinds.flatten().tolist(), strict=True):
        if k == DENSE:
            assert torch.equal(p, v)
        elif k == PRUNED:
            assert torch.equal(p, torch.zeros_like(v))
        else:
            assert torch.allclose(p.abs(), v.abs().mean().expand(4)) and torch.equal(p.sign(), v.sign())
    n_prune, n_unify = block_counts(kinds.numel(), 0.5, 0.25)
    assert int((kinds == PRUNED).sum()) == n_prune and int((kinds == UNIFIED).sum()) == n_unify


def test_unified_block_is_the_exact_closest_shared_magnitude_block() -> None:
    gen = torch.Generator().manual_seed(1)
    for _ in range(20):
        v = torch.randn(1, 4, generator=gen)
        projected, kinds = project(v, BlockSpec(4), unify=1.0, prune=0.0)
        err, best = _best_unified(v[0])
        assert int(kinds.item()) == UNIFIED
        assert torch.allclose(projected[0].double(), best, atol=1e-6)
        assert abs(float(((projected - v).double() ** 2).sum()) - err) < 1e-6


@pytest.mark.parametrize("unify,prune", [(0.0, 0.25), (0.0, 0.5), (0.5, 0.0), (0.75, 0.0), (1.0, 0.0), (0.0, 1.0)])
@pytest.mark.parametrize("seed", range(4))
def test_single_cases_are_exact(unify: float, prune: float, seed: int) -> None:
    w = torch.randn(2, 6, generator=torch.Generator().manual_seed(seed)) * torch.tensor([1.0, 0.1, 3.0] * 2)
    projected, kinds = project(w, BlockSpec(3), unify=unify, prune=prune)
    blocks = _blocks_of(w, 3)
    n_prune, n_unify = block_counts(len(blocks), unify, prune)
    ours = float(((projected - w).double() ** 2).sum())
    assert ours == pytest.approx(_brute_force(blocks, n_prune, n_unify), abs=1e-6)


def test_both_is_greedy_feasible_and_not_worse_than_brute_force_allows() -> None:
    """With both fractions the projection is greedy: feasible, never below the optimum, and sometimes above it."""
    gaps = []
    for seed in range(30):
        w = torch.randn(1, 12, generator=torch.Generator().manual_seed(seed)) * torch.tensor([1.0, 1.0, 1.0, 0.3] * 3)
        projected, kinds = project(w, BlockSpec(3), unify=0.25, prune=0.5)
        assert int((kinds == PRUNED).sum()) == 2 and int((kinds == UNIFIED).sum()) == 1
        ours = float(((projected - w).double() ** 2).sum())
        best = _brute_force(_blocks_of(w, 3), 2, 1)
        assert ours >= best - 1e-6
        gaps.append(ours - best)
    assert max(gaps) > 1e-6, "expected the greedy order to miss the joint optimum on some draw"


def test_input_is_not_modified_and_zero_fractions_are_identity() -> None:
    w = torch.randn(4, 8, 3)
    before = w.clone()
    projected, kinds = project(w, BlockSpec(2), unify=0.0, prune=0.0)
    assert torch.equal(w, before) and torch.equal(projected, w) and bool((kinds == DENSE).all())
    projected, _ = project(w, BlockSpec(2), unify=0.5, prune=0.5)
    assert torch.equal(w, before) and not torch.equal(projected, w)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"unify": -0.1}, "unify=-0.1"),
        ({"prune": 1.5}, "prune=1.5"),
        ({"unify": 0.7, "prune": 0.4}, "sum to at most 1"),
        ({"unify": "half"}, "unify='half'"),
    ],
)
def test_bad_fractions_name_the_culprit(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        project(torch.randn(4, 8), BlockSpec(4), **kwargs)


def test_bad_shapes_and_specs() -> None:
    with pytest.raises(ValueError, match="block size 3 does not divide its input dimension 8"):
        project(torch.randn(4, 8), BlockSpec(3))
    with pytest.raises(ValueError, match="no input dimension"):
        project(torch.randn(8), BlockSpec(4))
    with pytest.raises(ValueError, match="not floating point"):
        project(torch.ones(4, 8, dtype=torch.int64), BlockSpec(4))
    for size in (0, -2, 2.5, True):
        with pytest.raises(ValueError, match="size must be a positive int"):
            BlockSpec(size)
    with pytest.raises(TypeError, match="spec: expected a BlockSpec"):
        project(torch.randn(4, 8), 4)
