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


# ----------------------------------------------------------------------------- rows, masks, what is a weight
_ROWS_IN_A_FRESH_PROCESS = """
import sys, torch, lawn
from torch import nn
torch.manual_seed(0)
model = nn.Sequential(nn.ConvTranspose2d(3, 5, 3))
if sys.argv[1] == "discovery first":
    lawn.final_homogeneous_params(model, torch.randn(2, 3, 4, 4))
opt = lawn.LAWN(torch.optim.SGD(model.parameters(), lr=0.1), lawn.all_layer_weights(model), free_steps=0,
                granularity="row")
print(opt.target_norms["0.weight"].numel())
"""


def test_row_targets_of_a_transposed_conv_do_not_depend_on_an_earlier_discovery():
    """The output dim travels with the entry: 5 target norms (one per output channel) with or without a discovery
    run before in the process (was 3 without, 5 with)."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    counts = {
        order: subprocess.run(
            [sys.executable, "-c", _ROWS_IN_A_FRESH_PROCESS, order], capture_output=True, text=True, env=env, check=True
        ).stdout.strip()
        for order in ("no discovery", "discovery first")
    }
    assert counts == {"no discovery": "5", "discovery first": "5"}


def test_transposed_conv_and_hf_conv1d_weights_have_their_rows_along_dim_1():
    transformers = pytest.importorskip("transformers")
    from transformers.pytorch_utils import Conv1D

    model = nn.Sequential(nn.ConvTranspose1d(3, 5, 3), nn.Flatten(), Conv1D(6, 35), nn.Linear(6, 2))
    assert transformers is not None
    dims = {entry[0]: entry.output_dim for entry in lawn.all_layer_weights(model)}
    assert dims == {"0.weight": 1, "2.weight": 1, "3.weight": 0}
    opt = lawn.LAWN(torch.optim.SGD(model.parameters(), lr=0.1), lawn.all_layer_weights(model), 0, "row")
    assert {name: tuple(t.shape) for name, t in opt.target_norms.items()} == {
        "0.weight": (5,),  # ConvTranspose1d(3, 5): weight 3 × 5 × 3
        "2.weight": (6,),  # Conv1D(nf=6, nx=35): weight 35 × 6
        "3.weight": (2,),
    }


def test_row_dims_by_hand_with_a_triple_or_set_output_dim():
    model = nn.Sequential(nn.ConvTranspose2d(3, 5, 3))
    w = model[0].weight
    by_triple = lawn.LAWN(torch.optim.SGD([w], lr=0.1), [("up", w, 1)], free_steps=0, granularity="row")
    assert by_triple.target_norms["up"].shape == (5,)
    plain = lawn.LAWN(torch.optim.SGD([w], lr=0.1), [("up", w)], free_steps=0, granularity="row")
    assert plain.target_norms["up"].shape == (3,)  # nothing said: dim 0, whatever ran before
    lawn.constraint.set_output_dim(w, 1)  # tags the tensor itself
    tagged = lawn.LAWN(torch.optim.SGD([w], lr=0.1), [("up", w)], free_steps=0, granularity="row")
    assert tagged.target_norms["up"].shape == (5,) and lawn.constraint.output_dim(w) == 1
    with pytest.raises(ValueError, match="'up': output_dim must be an int in \\[0, 4\\)"):
        lawn.LAWN(torch.optim.SGD([w], lr=0.1), [("up", w, 4)], free_steps=0, granularity="row")


def test_nested_layers_variances_are_not_weights():
    model = nn.Sequential(lawn.nested.NestedLinear(4, 8), nn.ReLU(), lawn.nested.NestedConv2d(2, 4, 3))
    assert [name for name, _ in lawn.all_layer_weights(model)] == ["0.weight", "2.weight"]  # no log_sigma2


def test_a_hardened_unified_model_returns_the_tensors_its_weights_are_computed_from():
    from unification_helpers import small_convnet

    model = small_convnet()
    lawn.unification.harden(model, lawn.unification.BlockSpec(size=4), unify=0.5, prune=0.25)
    names = [name for name, _ in lawn.all_layer_weights(model)]
    hardened = [f"{layer}.parametrizations.weight.original{k}" for layer in (3, 6, 8) for k in (0, 1)]
    assert names == ["0.weight", *hardened]  # the first conv (1 input channel) is not hardened; was ["0.weight"]
    opt = lawn.LAWN(torch.optim.Adam(model.parameters(), lr=1e-2), lawn.all_layer_weights(model), free_steps=0)
    norms = {n: float(torch.linalg.vector_norm(p.detach())) for n, p in model.named_parameters() if n in names}
    x = torch.randn(16, 1, 8, 8)
    for _ in range(3):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), torch.arange(16) % 3).backward()
        opt.step()
    for name, p in model.named_parameters():
        if name in names:
            assert float(torch.linalg.vector_norm(p.detach())) == pytest.approx(norms[name], rel=1e-5)


def test_a_masked_layer_returns_its_stored_weight_with_the_mask():
    model = BNNet()
    masks = {"head.weight": torch.ones(4, 32, dtype=torch.bool)}
    masks["head.weight"][1] = False
    lawn.pruning.apply_masks(model, masks)
    entries = {entry[0]: entry for entry in lawn.all_layer_weights(model)}
    stored = entries["head.parametrizations.weight.original"]
    assert stored[1] is model.head.parametrizations.weight.original and stored.mask is not None
    assert torch.equal(stored.mask(), masks["head.weight"])
