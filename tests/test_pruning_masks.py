"""magnitude_masks: exact counts, global vs layer scope, compounding; apply/remove/report; bad input."""

import pytest
import torch

import lawn
from pruning_helpers import make_net


def test_default_selection_skips_first_and_last_layer():
    assert lawn.pruning.prunable_weights(make_net()) == ["conv2.weight", "fc1.weight"]
    assert lawn.pruning.prunable_weights(make_net(), "all") == [
        "conv1.weight",
        "conv2.weight",
        "fc1.weight",
        "fc2.weight",
    ]


@pytest.mark.parametrize("sparsity", [0.0, 0.5, 0.8, 0.95])
def test_global_masks_prune_exactly_the_smallest(sparsity):
    model = make_net()
    masks = lawn.pruning.magnitude_masks(model, sparsity)
    weights = torch.cat([model.conv2.weight.flatten(), model.fc1.weight.flatten()]).abs()
    keep = torch.cat([masks["conv2.weight"].flatten(), masks["fc1.weight"].flatten()])
    assert int((~keep).sum()) == round(sparsity * weights.numel())
    if sparsity > 0:
        assert weights[keep].min() >= weights[~keep].max()  # one threshold for the whole selection


def test_layer_scope_prunes_each_tensor_to_the_sparsity():
    model = make_net()
    masks = lawn.pruning.magnitude_masks(model, 0.75, scope="layer")
    for name, mask in masks.items():
        w = dict(model.named_parameters())[name].abs()
        assert int((~mask).sum()) == round(0.75 * w.numel())
        assert w[mask].min() >= w[~mask].max()


def test_apply_masks_and_report_and_remove():
    model = make_net()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    masks = lawn.pruning.magnitude_masks(model, 0.8)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # computing masks changes nothing
    lawn.pruning.apply_masks(model, masks)
    for name, mask in masks.items():
        w = dict(lawn.pruning._names.effective_tensors(model))[name]
        assert torch.equal(w == 0, ~mask) or bool((w[~mask] == 0).all())
        assert torch.equal(w[mask], before[name][mask])  # survivors keep their values
    report = lawn.pruning.sparsity_report(model)
    selected = sum(m.numel() for m in masks.values())
    assert report["total"]["zeros"] == round(0.8 * selected)
    assert report["conv1.weight"]["zeros"] == 0
    assert set(lawn.pruning.current_masks(model)) == set(masks)
    lawn.pruning.remove_masks(model)
    assert lawn.pruning.current_masks(model) == {}
    assert "conv2.weight" in dict(model.named_parameters())
    assert lawn.pruning.sparsity_report(model)["total"]["zeros"] == report["total"]["zeros"]


def test_pruning_a_pruned_model_compounds_on_the_survivors():
    model = make_net()
    lawn.pruning.apply_masks(model, lawn.pruning.magnitude_masks(model, 0.5))
    second = lawn.pruning.magnitude_masks(model, 0.5)  # half of the survivors
    n = sum(m.numel() for m in second.values())
    assert int(sum((~m).sum() for m in second.values())) == round(0.5 * n) + round(0.5 * (n - round(0.5 * n)))
    first = {k: v.clone() for k, v in lawn.pruning.current_masks(model).items()}
    assert all(not (second[k] & ~first[k]).any() for k in first)  # never revives a pruned weight
    lawn.pruning.apply_masks(model, second)
    assert lawn.pruning.sparsity_report(model, list(second))["total"]["sparsity"] == pytest.approx(0.75, abs=0.01)
    # an independent mask compounds: old ∧ new
    other = {k: torch.rand(v.shape) > 0.5 for k, v in second.items()}
    expected = {k: second[k] & other[k] for k in second}
    lawn.pruning.apply_masks(model, other)
    assert all(torch.equal(lawn.pruning.current_masks(model)[k], expected[k]) for k in expected)


def _state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize(
    ("masks", "error", "culprit"),
    [
        ({"nope.weight": torch.ones(3, dtype=torch.bool)}, ValueError, "nope.weight"),
        ({"fc1.weight": torch.ones(3, 3, dtype=torch.bool)}, ValueError, "fc1.weight"),
        ({"fc1.weight": torch.ones(20, 96)}, TypeError, "torch.bool"),
        ({}, ValueError, "nothing to prune"),
    ],
)
def test_bad_masks_are_refused_and_the_model_untouched(masks, error, culprit):
    model = make_net()
    good = {"conv2.weight": torch.zeros(6, 4, 3, 3, dtype=torch.bool)}
    before = _state(model)
    with pytest.raises(error, match=culprit):
        lawn.pruning.apply_masks(model, {**good, **masks} if masks else masks)
    after = model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)


@pytest.mark.parametrize("sparsity", [-0.1, 1.0, 1.5, float("nan"), "0.5", True])
def test_bad_sparsity_is_refused(sparsity):
    with pytest.raises(ValueError, match="sparsity"):
        lawn.pruning.magnitude_masks(make_net(), sparsity)


def test_nothing_to_prune_and_bad_scope_and_params():
    tiny = torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.Linear(3, 2))
    with pytest.raises(ValueError, match="nothing to prune"):
        lawn.pruning.magnitude_masks(tiny, 0.5)
    with pytest.raises(ValueError, match="scope"):
        lawn.pruning.magnitude_masks(make_net(), 0.5, scope="row")
    with pytest.raises(ValueError, match="fc9.weight"):
        lawn.pruning.magnitude_masks(make_net(), 0.5, params=["fc9.weight"])
    masks = lawn.pruning.magnitude_masks(tiny, 0.5, params=["0.weight", "0.bias"])  # any tensor, by name
    assert set(masks) == {"0.weight", "0.bias"}
