"""UnifiedBlocks' one-gather forward agrees with its reference (zeros, then each kind written) bit for bit: the
weight, the gradients of both stored tensors, and a few optimizer steps; also after a state dict with other kinds."""

from __future__ import annotations

import copy

import pytest
import torch

from lawn import unification as U
from lawn.unification.unified_blocks import UnifiedBlocks
from unification_helpers import small_convnet

torch.set_num_threads(1)


def _blocks(model: torch.nn.Module) -> list[UnifiedBlocks]:
    return [p for _, _, p in U.hardened_layers(model)]


def _use_reference(model: torch.nn.Module) -> None:
    for p in _blocks(model):
        p.forward = p.reference_forward  # an instance attribute: nn.Module.__call__ uses it


@pytest.mark.parametrize(("unify", "prune"), [(0.45, 0.45), (0.0, 0.0), (1.0, 0.0), (0.0, 1.0), (0.3, 0.2)])
def test_weight_and_gradients_equal_the_reference(unify: float, prune: float) -> None:
    model = small_convnet(1)
    U.harden(model, U.BlockSpec(2), unify=unify, prune=prune)
    assert _blocks(model)
    for p in _blocks(model):
        dense = torch.randn(p.dense_rows.numel() * p.size, requires_grad=True)
        mags = torch.randn(p.unified_rows.numel(), requires_grad=True)  # negative ones exercise the clamp
        ref_dense, ref_mags = dense.detach().clone().requires_grad_(), mags.detach().clone().requires_grad_()
        fast, ref = p(dense, mags), p.reference_forward(ref_dense, ref_mags)
        assert torch.equal(fast, ref) and fast.shape == ref.shape
        upstream = torch.randn_like(ref)
        fast.backward(upstream)
        ref.backward(upstream)
        assert torch.equal(dense.grad, ref_dense.grad) and torch.equal(mags.grad, ref_mags.grad)


def test_training_steps_match_the_reference_step_by_step() -> None:
    fast = small_convnet(2)
    U.harden(fast, U.BlockSpec(2), unify=0.4, prune=0.4)
    ref = copy.deepcopy(fast)
    _use_reference(ref)
    optimizers = [torch.optim.Adam(m.parameters(), lr=1e-2) for m in (fast, ref)]
    generator = torch.Generator().manual_seed(0)
    for _ in range(5):
        x, y = torch.randn(16, 1, 8, 8, generator=generator), torch.randint(0, 3, (16,), generator=generator)
        for model, optimizer in zip((fast, ref), optimizers):
            optimizer.zero_grad()
            torch.nn.functional.cross_entropy(model(x), y).backward()
            optimizer.step()
        for (name, a), (_, b) in zip(fast.named_parameters(), ref.named_parameters()):
            assert torch.equal(a, b), name


def test_a_loaded_state_dict_with_kinds_at_other_places_moves_the_gather_too() -> None:
    source = small_convnet(3)
    U.harden(source, U.BlockSpec(2), unify=0.4, prune=0.4)
    target = small_convnet(4)  # other weights: the same counts of each kind, at other places
    U.harden(target, U.BlockSpec(2), unify=0.4, prune=0.4)
    assert any(not torch.equal(a.source_rows, b.source_rows) for a, b in zip(_blocks(source), _blocks(target)))
    target.load_state_dict(source.state_dict())
    x = torch.randn(4, 1, 8, 8)
    ref = copy.deepcopy(target)
    _use_reference(ref)
    source.eval(), target.eval(), ref.eval()
    assert torch.equal(target(x), ref(x)) and torch.equal(target(x), source(x))
