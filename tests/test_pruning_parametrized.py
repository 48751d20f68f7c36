"""Pruning models whose weights are tied (embedding = output head), already parametrized (weight_norm,
spectral_norm), or Hugging Face Conv1D layers."""

import copy

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrizations

import lawn


class TiedLM(nn.Module):
    """embedding → linear → head, the head's weight tied to the embedding (GPT-2 style)."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(20, 8)
        self.mid = nn.Linear(8, 8)
        self.head = nn.Linear(8, 20, bias=False)
        self.head.weight = self.emb.weight

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.mid(self.emb(tokens))))


def _train(model: nn.Module, steps: int = 3) -> None:
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    g = torch.Generator().manual_seed(0)
    for _ in range(steps):
        tokens = torch.randint(0, 20, (4, 5), generator=g)
        opt.zero_grad()
        nn.functional.cross_entropy(model(tokens).flatten(0, 1), tokens.flatten()).backward()
        opt.step()


def test_tied_weight_is_masked_once_and_stays_tied_under_adam():
    torch.manual_seed(0)
    model = TiedLM()
    masks = lawn.pruning.magnitude_masks(model, 0.5, params=["head.weight"])
    lawn.pruning.apply_masks(model, masks)
    _train(model)
    pruned = ~masks["head.weight"]
    assert bool((model.head.weight[pruned] == 0).all())
    assert bool((model.emb.weight[pruned] == 0).all())
    assert torch.equal(model.head.weight, model.emb.weight)
    assert model.head.parametrizations.weight.original is model.emb.parametrizations.weight.original
    lawn.pruning.remove_masks(model)
    assert model.head.weight is model.emb.weight
    assert bool((model.head.weight[pruned] == 0).all())


def test_tied_weight_reports_once_and_is_selectable_by_either_name():
    torch.manual_seed(0)
    model = TiedLM()
    assert lawn.pruning.prunable_weights(model, "all") == ["mid.weight", "head.weight"]
    masks = lawn.pruning.magnitude_masks(model, 0.5, params="all")
    assert set(masks) == {"mid.weight", "head.weight"}
    lawn.pruning.apply_masks(model, masks)
    report = lawn.pruning.sparsity_report(model)
    assert set(report) == {"mid.weight", "head.weight", "total"}  # the tied weight counted once
    assert report["total"]["numel"] == 8 * 8 + 20 * 8
    with pytest.raises(ValueError, match="one tied weight"):
        lawn.pruning.prunable_weights(model, ["emb.weight", "head.weight"])


def test_tied_masks_that_differ_are_refused_and_a_state_dict_round_trips():
    torch.manual_seed(0)
    model = TiedLM()
    mask = torch.rand(20, 8) > 0.5
    with pytest.raises(ValueError, match="masks differ"):
        lawn.pruning.apply_masks(model, {"emb.weight": mask, "head.weight": ~mask})
    assert lawn.pruning.current_masks(model) == {}
    lawn.pruning.apply_masks(model, {"head.weight": mask})
    state = model.state_dict()
    fresh = TiedLM()
    lawn.pruning.apply_masks(fresh, lawn.pruning.masks_from_state_dict(state))  # names both holders, with equal masks
    fresh.load_state_dict(state)
    assert torch.equal(fresh.head.weight, model.head.weight)
    assert fresh.head.parametrizations.weight.original is fresh.emb.parametrizations.weight.original


def _normed(kind: str) -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 10), nn.ReLU(), nn.Linear(10, 10), nn.ReLU(), nn.Linear(10, 3))
    wrap = {"weight_norm": parametrizations.weight_norm, "spectral_norm": parametrizations.spectral_norm}[kind]
    wrap(model[2])
    return model.train()


@pytest.mark.parametrize("kind", ["weight_norm", "spectral_norm"])
def test_reading_masks_of_a_parametrized_model_changes_nothing(kind):
    model = _normed(kind)
    before = copy.deepcopy(model.state_dict())
    masks = lawn.pruning.magnitude_masks(model, 0.5, params="all")
    lawn.pruning.sparsity_report(model)
    assert "2.weight" in masks
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key  # spectral_norm's _u/_v untouched
    assert model[2].parametrizations.weight.training  # its mode restored
    lawn.pruning.apply_masks(model, masks)  # applying runs no power iteration either
    for key, value in before.items():
        if key.endswith(("_u", "_v")):
            assert torch.equal(model.state_dict()[key], value), key


@pytest.mark.parametrize("kind", ["weight_norm", "spectral_norm"])
def test_a_parametrized_weight_is_pruned_and_stays_zero(kind):
    model = _normed(kind)
    initial = copy.deepcopy(model.state_dict())
    masks = lawn.pruning.magnitude_masks(model, 0.5, params="all")
    lawn.pruning.apply_masks(model, masks)
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    for _ in range(3):
        opt.zero_grad()
        model(torch.randn(8, 6)).square().mean().backward()
        opt.step()
    model.eval()
    assert bool((model[2].weight[~masks["2.weight"]] == 0).all())
    with pytest.raises(ValueError, match="bake=False"):
        lawn.pruning.remove_masks(model)
    lawn.pruning.rewind(model, initial)  # keeps the user's parametrization, restores its stored tensors
    assert bool((model[2].weight[~masks["2.weight"]] == 0).all())
    lawn.pruning.remove_masks(model, bake=False)
    assert lawn.pruning.current_masks(model) == {}
    assert len(model[2].parametrizations.weight) == 1


def test_hugging_face_conv1d_counts_as_prunable():
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=50, n_positions=8, bos_token_id=0, eos_token_id=0)
    torch.manual_seed(0)
    model = GPT2LMHeadModel(config)
    names = lawn.pruning.prunable_weights(model, "all")
    assert "transformer.h.0.attn.c_attn.weight" in names
    assert "transformer.h.0.mlp.c_fc.weight" in names
    assert names[-1] == "lm_head.weight"  # the head is tied to the embedding: listed once
    masks = lawn.pruning.magnitude_masks(model, 0.5)
    assert set(masks) == set(names[1:-1])  # the default: all but the first and the last
    lawn.pruning.apply_masks(model, masks)
    report = lawn.pruning.sparsity_report(model, list(masks))
    assert report["total"]["sparsity"] == pytest.approx(0.5, abs=1e-3)


def test_correlation_reads_a_parametrized_model_by_its_weights():
    model = _normed("weight_norm")
    initial = copy.deepcopy(model)
    result = lawn.pruning.weight_correlation(initial, model)
    assert "2.weight" in result["layers"]
    assert result["layers"]["2.weight"]["cosine"] == pytest.approx(1.0)


def test_rewind_and_reinitialize_keep_a_tied_weight_tied():
    torch.manual_seed(0)
    model = TiedLM()
    theta0 = copy.deepcopy(model.state_dict())
    masks = lawn.pruning.magnitude_masks(model, 0.5, params="all")
    lawn.pruning.apply_masks(model, masks)
    _train(model)
    lawn.pruning.rewind(model, theta0)
    assert model.head.parametrizations.weight.original is model.emb.parametrizations.weight.original
    kept = masks["head.weight"]
    assert torch.equal(model.head.weight[kept], theta0["head.weight"][kept])
    lawn.pruning.reinitialize(model, seed=1)
    assert model.head.parametrizations.weight.original is model.emb.parametrizations.weight.original
    assert bool((model.emb.weight[~kept] == 0).all())
