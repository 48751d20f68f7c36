"""rewind (incl. late rewinding), reinitialize, prune & fine-tune, IMP; their bad inputs leave the model alone."""

import copy

import pytest
import torch

import lawn
from pruning_helpers import make_net, train_steps


def _sgd(model):
    return torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)


def _trained_and_masks(sparsity=0.8):
    model = make_net()
    initial = copy.deepcopy(model.state_dict())
    opt = _sgd(model)
    train_steps(model, opt, 2)
    late = copy.deepcopy(model.state_dict())
    train_steps(model, opt, 6)
    return model, initial, late, lawn.pruning.magnitude_masks(model, sparsity)


@pytest.mark.parametrize("which", ["initial", "late"])
def test_rewind_restores_the_saved_values_on_the_mask(which):
    model, initial, late, masks = _trained_and_masks()
    target = initial if which == "initial" else late
    lawn.pruning.rewind(model, target, masks)
    weights = lawn.pruning._names.effective_tensors(model)
    for name, mask in masks.items():
        assert torch.equal(weights[name][mask], target[name][mask])
        assert bool((weights[name][~mask] == 0).all())
    assert torch.equal(model.conv1.weight, target["conv1.weight"])  # unpruned parameters rewound too
    assert torch.equal(model.bn.running_mean, target["bn.running_mean"])  # and buffers
    # rewinding a masked model to a state saved from the masked model works (unpruned names)
    lawn.pruning.rewind(model, copy.deepcopy(model.state_dict()))
    assert set(lawn.pruning.current_masks(model)) == set(masks)


def test_rewind_refuses_another_architecture_and_leaves_the_model():
    model, initial, _, masks = _trained_and_masks()
    before = copy.deepcopy(model.state_dict())
    other = torch.nn.Sequential(torch.nn.Linear(3, 4))
    with pytest.raises(ValueError, match="initial_state"):
        lawn.pruning.rewind(model, other.state_dict(), masks)
    wrong_shape = dict(initial, **{"fc1.weight": torch.zeros(5, 5)})
    with pytest.raises(ValueError, match="fc1.weight"):
        lawn.pruning.rewind(model, wrong_shape, masks)
    with pytest.raises(ValueError, match="masks"):
        lawn.pruning.rewind(model, initial, {"fc7.weight": torch.ones(2, dtype=torch.bool)})
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_reinitialize_draws_fresh_weights_with_the_models_own_scheme():
    model, initial, _, masks = _trained_and_masks()
    rng = torch.get_rng_state()
    lawn.pruning.reinitialize(model, masks, seed=7)
    assert torch.equal(torch.get_rng_state(), rng)  # global random state untouched
    weights = lawn.pruning._names.effective_tensors(model)
    for name, mask in masks.items():
        assert bool((weights[name][~mask] == 0).all())
        assert not torch.equal(weights[name][mask], initial[name][mask])
    # same seed → same draw; the draw follows each module's reset_parameters (kaiming-uniform bound for conv)
    other, _, _, _ = _trained_and_masks()
    lawn.pruning.reinitialize(other, masks, seed=7)
    for (k, a), (_, b) in zip(model.state_dict().items(), other.state_dict().items()):
        assert torch.equal(a, b), k
    bound = 1 / (model.conv2.in_channels * 9) ** 0.5
    assert float(weights["conv2.weight"].detach().abs().max()) <= bound + 1e-7
    assert torch.equal(model.bn.running_var, torch.ones(6))
    # a factory gives the model's construction-time init instead
    lawn.pruning.reinitialize(model, masks, seed=3, factory=lambda: make_net(seed=3))
    assert torch.equal(model.conv1.weight, make_net(seed=3).conv1.weight)


def test_prune_and_finetune_keeps_trained_survivors_and_passes_the_schedule():
    model, _, _, masks = _trained_and_masks()
    trained = {k: v.clone() for k, v in model.state_dict().items()}
    seen = {}

    def train(m, schedule):
        weights = lawn.pruning._names.effective_tensors(m)
        seen["start"] = {k: weights[k][masks[k]].clone() for k in masks}
        seen["schedule"] = schedule
        train_steps(m, torch.optim.SGD(m.parameters(), lr=schedule[0]), 3)
        return "done"

    assert lawn.pruning.prune_and_finetune(model, masks, train, [0.01, 0.001]) == "done"
    assert seen["schedule"] == [0.01, 0.001]
    for k, m in masks.items():
        assert torch.equal(seen["start"][k], trained[k][m])
        assert bool((lawn.pruning._names.effective_tensors(model)[k][~m] == 0).all())


def test_imp_compounds_and_rewinds_each_round():
    model = make_net()
    initial = copy.deepcopy(model.state_dict())
    starts = []

    def train(m):
        starts.append({k: v.clone() for k, v in lawn.pruning._names.effective_tensors(m).items()})
        train_steps(m, _sgd(m), 3)
        return float(m.fc1.weight.detach().abs().sum())

    records = lawn.pruning.iterative_magnitude_pruning(model, train, rounds=3, rate=0.5, initial_state=initial)
    assert [r["round"] for r in records] == [0, 1, 2, 3]
    assert [r["sparsity"] for r in records] == pytest.approx([0, 0.5, 0.75, 0.875], abs=0.01)
    for start, record in zip(starts[1:], records[1:]):
        for k, mask in record["masks"].items():
            assert torch.equal(start[k][mask], initial[k][mask])  # every round starts from θ0 on the mask
    for a, b in zip(records[1:], records[2:]):
        assert all(not (b["masks"][k] & ~a["masks"][k]).any() for k in a["masks"])  # nested masks
    with pytest.raises(ValueError, match="reset"):
        lawn.pruning.iterative_magnitude_pruning(make_net(), train, rounds=1, reset="bogus")
    with pytest.raises(ValueError, match="rate"):
        lawn.pruning.iterative_magnitude_pruning(make_net(), train, rounds=1, rate=1.0)
