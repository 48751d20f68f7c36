"""The numeric homogeneity check, and its agreement with discovery on every zoo model."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import lawn
from lawn.discovery.final_homogeneous import discover
from tests.discovery_zoo import ZOO, BNResNet, relu_mlp

ZOO_IDS = [entry.name for entry in ZOO]


def bias_free_mlp() -> nn.Module:
    return nn.Sequential(
        nn.Linear(6, 16, bias=False),
        nn.ReLU(),
        nn.Linear(16, 16, bias=False),
        nn.ReLU(),
        nn.Linear(16, 3, bias=False),
    )


@pytest.mark.parametrize("mode", ["train", "eval"])
@pytest.mark.parametrize("entry", ZOO, ids=ZOO_IDS)
def test_discovered_tail_is_numerically_homogeneous_once_its_biases_are_zero(entry, mode: str) -> None:
    """Independent confirmation: scaling what discovery found by α scales the output by α^k exactly."""
    model, x = entry.build()
    model.train(mode == "train")
    found = discover(model, x)
    with torch.no_grad():
        for v in found.parameters:
            if v.in_tail and len(v.shape) < 2:
                v.parameter.zero_()
    report = lawn.check_homogeneity(model, found.constrained, x)
    assert report.homogeneous, str(report)
    assert report.degree == entry.degree
    assert report.relative_error < 1e-5


def test_bias_free_mlp_has_degree_equal_to_depth() -> None:
    torch.manual_seed(0)
    model, x = bias_free_mlp(), torch.randn(5, 6)
    report = lawn.check_homogeneity(model, lawn.final_homogeneous_params(model, x), x)
    assert (report.degree, report.homogeneous) == (3, True)
    assert abs(report.fitted_degree - 3) < 1e-5
    assert str(report).startswith("homogeneous of degree 3")


def test_biases_make_the_tail_only_approximately_homogeneous_and_the_report_says_so() -> None:
    torch.manual_seed(0)
    model, x = relu_mlp(), torch.randn(5, 6)
    with torch.no_grad():
        for layer in (model[0], model[2], model[4]):
            layer.bias.fill_(0.5)
    report = lawn.check_homogeneity(model, lawn.final_homogeneous_params(model, x), x)
    assert not report.homogeneous
    assert report.relative_error > 1e-2
    assert "not exactly homogeneous" in str(report)


def test_a_weight_before_an_eval_mode_batchnorm_breaks_homogeneity() -> None:
    """Adding a weight discovery excluded (a conv before an affine eval-mode BN) is caught numerically."""
    torch.manual_seed(0)
    model, x = BNResNet().eval(), torch.randn(4, 3, 8, 8)
    model.fc.bias.data.zero_()
    tail = lawn.final_homogeneous_params(model, x)
    assert lawn.check_homogeneity(model, tail, x).homogeneous
    wrong = [*tail, ("layer2.conv2.weight", model.layer2.conv2.weight)]
    assert not lawn.check_homogeneity(model, wrong, x).homogeneous


def test_weights_buffers_and_rng_are_restored_bit_for_bit() -> None:
    torch.manual_seed(0)
    model, x = BNResNet().train(), torch.randn(4, 3, 8, 8)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()
    lawn.check_homogeneity(model, [model.fc.weight, model.layer1.conv1.weight], x, alphas=(0.3, 1.7))
    assert torch.equal(torch.get_rng_state(), rng)
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key


def test_bad_arguments() -> None:
    torch.manual_seed(0)
    model, x = bias_free_mlp(), torch.randn(3, 6)
    with pytest.raises(ValueError, match="not a parameter of Sequential"):
        lawn.check_homogeneity(model, [("stray", nn.Parameter(torch.ones(2, 2)))], x)
    with pytest.raises(ValueError, match="alphas"):
        lawn.check_homogeneity(model, [model[0].weight], x, alphas=(1.0,))
    with pytest.raises(ValueError, match="no parameters"):
        lawn.check_homogeneity(model, [], x)
    with pytest.raises(TypeError, match="not one tensor"):
        lawn.check_homogeneity(model, model[0].weight, x)
    with pytest.raises(ValueError, match="zero"):
        lawn.check_homogeneity(model, [model[0].weight], torch.zeros(3, 6))
