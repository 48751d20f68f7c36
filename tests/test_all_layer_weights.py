"""lawn.all_layer_weights: every trainable weight with >= 2 dims, once each, ready for lawn.LAWN."""

import pytest
import torch
from torch import nn

import lawn
from lawn_helpers import BNNet, batches, train_step


class Mixed(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(10, 4)
        self.conv = nn.Conv1d(4, 4, 3, padding=1)
        self.norm = nn.LayerNorm(4)
        self.head = nn.Linear(4, 10)
        self.head.weight = self.embed.weight  # tied: one parameter, two names
        self.frozen = nn.Linear(4, 4)
        self.frozen.weight.requires_grad_(False)
        self.scale = nn.Parameter(torch.ones(4))


def test_every_weight_with_two_dims_once():
    names = [name for name, _ in lawn.all_layer_weights(Mixed())]
    assert names == ["embed.weight", "conv.weight"]  # head.weight is embed.weight; frozen, biases, norms are out


def test_bn_net_all_layers_versus_the_tail():
    model = BNNet()
    every = dict(lawn.all_layer_weights(model))
    assert list(every) == ["stem.weight", "hidden.weight", "head.weight"]
    tail = dict(lawn.final_homogeneous_params(model, torch.randn(4, 8)))
    assert set(tail) < set(every)  # the tail is the part after the BN; all layers adds the stem that feeds it


def test_lawn_keeps_every_layer_on_its_sphere():
    model = BNNet()
    opt = lawn.LAWN(torch.optim.Adam(model.parameters(), lr=1e-2), lawn.all_layer_weights(model), free_steps=2)
    for xb, yb in batches(6):
        train_step(model, opt, xb, yb)
    for name, p in lawn.all_layer_weights(model):
        assert float(p.detach().norm()) == pytest.approx(float(opt.target_norms[name]), rel=1e-5)


def test_not_a_module():
    with pytest.raises(TypeError, match="model"):
        lawn.all_layer_weights([torch.zeros(2, 2)])
