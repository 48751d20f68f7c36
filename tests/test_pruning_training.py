"""Masked weights stay exactly zero: SGD-momentum and Adam (with state from dense training), checkpoints,
torch.compile."""

import io

import pytest
import torch

import lawn
from pruning_helpers import batch, make_net, train_steps

OPTIMIZERS = {
    "sgd_momentum": lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, weight_decay=1e-3),
    "adam": lambda p: torch.optim.Adam(p, lr=0.05),
    "adamw": lambda p: torch.optim.AdamW(p, lr=0.05, weight_decay=0.1),
}


def _pruned_zero(model, masks) -> bool:
    weights = lawn.pruning._names.effective_tensors(model)
    return all(bool((weights[k][~m] == 0).all()) for k, m in masks.items())


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_zeros_survive_training_even_with_dense_optimizer_state(name):
    model = make_net()
    opt = OPTIMIZERS[name](model.parameters())
    train_steps(model, opt, 5)  # momentum / Adam moments now non-zero everywhere
    masks = lawn.pruning.magnitude_masks(model, 0.9)
    lawn.pruning.apply_masks(model, masks)  # the same Parameter objects stay in the optimizer
    survivors_before = {k: lawn.pruning._names.effective_tensors(model)[k][m].clone() for k, m in masks.items()}
    train_steps(model, opt, 10)
    assert _pruned_zero(model, masks)
    after = lawn.pruning._names.effective_tensors(model)
    assert any(not torch.equal(after[k][m], survivors_before[k]) for k, m in masks.items())  # it did train
    lawn.pruning.remove_masks(model)
    assert _pruned_zero(model, masks)  # baked: plain parameters with zeros in place


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_optimizer_made_after_pruning_never_moves_the_stored_zeros(name):
    model = make_net()
    masks = lawn.pruning.magnitude_masks(model, 0.7)
    lawn.pruning.apply_masks(model, masks)
    opt = OPTIMIZERS[name](model.parameters())
    train_steps(model, opt, 8)
    for k, m in masks.items():
        stored = model.get_submodule(k.rsplit(".", 1)[0]).parametrizations.weight.original
        assert bool((stored[~m] == 0).all())
        assert bool((stored.grad[~m] == 0).all())
    state = [s for s in opt.state.values() if s]
    for key in ("momentum_buffer", "exp_avg", "exp_avg_sq"):
        for k, m in masks.items():
            stored = model.get_submodule(k.rsplit(".", 1)[0]).parametrizations.weight.original
            if key in opt.state[stored]:
                assert bool((opt.state[stored][key][~m] == 0).all())
    assert state


def test_checkpoint_round_trip_with_optimizer_state(tmp_path):
    model = make_net()
    masks = lawn.pruning.magnitude_masks(model, 0.8)
    lawn.pruning.apply_masks(model, masks)
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    train_steps(model, opt, 3)
    path = tmp_path / "ckpt.pt"
    torch.save({"model": model.state_dict(), "opt": opt.state_dict()}, path)
    saved = torch.load(path, weights_only=True)
    fresh = make_net(seed=1)
    lawn.pruning.apply_masks(fresh, lawn.pruning.masks_from_state_dict(saved["model"]))
    fresh.load_state_dict(saved["model"])
    fresh_opt = torch.optim.Adam(fresh.parameters(), lr=0.05)
    fresh_opt.load_state_dict(saved["opt"])
    assert all(torch.equal(lawn.pruning.current_masks(fresh)[k], masks[k]) for k in masks)
    train_steps(model, opt, 4)
    train_steps(fresh, fresh_opt, 4)
    for (k, a), (_, b) in zip(model.state_dict().items(), fresh.state_dict().items()):
        assert torch.equal(a, b), k  # resumed training is identical
    assert _pruned_zero(fresh, masks)
    # the baked, plain model loads into an unpruned architecture
    buffer = io.BytesIO()
    torch.save(lawn.pruning.remove_masks(fresh).state_dict(), buffer)
    plain = make_net()
    plain.load_state_dict(torch.load(io.BytesIO(buffer.getvalue()), weights_only=True))
    assert _pruned_zero(plain, masks)


def test_torch_compile_keeps_zeros_and_matches_eager():
    torch._dynamo.reset()
    eager, compiled_model = make_net(), make_net()
    masks = lawn.pruning.magnitude_masks(eager, 0.9)
    for m in (eager, compiled_model):
        lawn.pruning.apply_masks(m, masks)
    compiled = torch.compile(compiled_model, backend="aot_eager")
    train_steps(eager, torch.optim.SGD(eager.parameters(), lr=0.1, momentum=0.9), 4)
    train_steps(compiled_model, torch.optim.SGD(compiled_model.parameters(), lr=0.1, momentum=0.9), 4, compiled)
    assert _pruned_zero(compiled_model, masks)
    x, _ = batch(99)
    eager.eval()
    compiled_model.eval()
    torch.testing.assert_close(compiled(x), eager(x), rtol=1e-5, atol=1e-6)
