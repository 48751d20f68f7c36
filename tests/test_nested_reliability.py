"""Nested networks at their edges: BatchNorm re-estimation without data, modes restored per module, slicing that
is exact or refused, the width in checkpoints, metrics that check their inputs."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lawn.nested import (
    NestedConv2d,
    NestedLinear,
    expected_calibration_error,
    mc_predict,
    nested_modules,
    nll,
    ood_auroc,
    recalibrate_batchnorm,
    set_width,
    slice_model,
)


def _randomize_norms(model: nn.Module) -> None:
    """Non-trivial BatchNorm statistics and affine parameters, so a dropped channel's constant is not 0."""
    g = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d | nn.BatchNorm1d):
            with torch.no_grad():
                m.running_mean.copy_(torch.randn(m.num_features, generator=g))
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.weight.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.num_features, generator=g))


def _conv_net() -> nn.Sequential:
    torch.manual_seed(0)
    model = nn.Sequential(
        NestedConv2d(1, 8, 3, padding=1, groups_of_units=4, weight_noise=False, norm=nn.BatchNorm2d(8)),
        nn.ReLU(),
        nn.Linear(4, 4),
    )
    _randomize_norms(model)
    return model


def test_recalibrate_without_batches_refuses_and_keeps_the_statistics():
    model = _conv_net()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match="batches must be a positive int"):
        recalibrate_batchnorm(model, [torch.randn(2, 1, 4, 4)], batches=0)
    with pytest.raises(ValueError, match="no batches"):
        recalibrate_batchnorm(model, [])
    for key, value in before.items():
        assert torch.equal(model.state_dict()[key], value), key
    assert model[0].norm.momentum == 0.1


def test_mc_predict_restores_each_modules_own_mode():
    torch.manual_seed(0)
    model = nn.Sequential(
        NestedLinear(4, 8, groups_of_units=2, norm=nn.BatchNorm1d(8)), nn.ReLU(), nn.Linear(8, 3)
    ).train()
    model[0].norm.eval()  # frozen by the user
    mc_predict(model, torch.randn(5, 4), samples=2)
    assert model.training and model[0].training and not model[0].norm.training


def _check_exact(model: nn.Module, x: torch.Tensor, width: float = 0.5) -> nn.Module:
    sliced = slice_model(model, width, example_input=x).eval()
    masked = set_width(model, width).eval()
    torch.testing.assert_close(sliced(x), masked(x), rtol=1e-5, atol=1e-6)
    return sliced


@pytest.mark.parametrize("activation", [nn.Sigmoid(), nn.Softplus(), nn.GELU()])
def test_slicing_through_an_activation_that_moves_zero_is_exact(activation):
    torch.manual_seed(0)
    model = nn.Sequential(NestedLinear(5, 8, groups_of_units=4, weight_noise=False), activation, nn.Linear(8, 3))
    sliced = _check_exact(model, torch.randn(6, 5))
    assert sliced[2].in_features < 8


def test_slicing_through_a_batchnorm_outside_the_nested_layer_is_exact():
    torch.manual_seed(0)
    model = nn.Sequential(
        NestedConv2d(1, 8, 3, padding=1, groups_of_units=4, weight_noise=False),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Conv2d(8, 6, 3),  # no padding: a constant channel contributes a constant
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(6 * 16, 3),
    )
    _randomize_norms(model)
    sliced = _check_exact(model, torch.randn(4, 1, 6, 6))
    assert sliced[1].num_features < 8 and sliced[3].in_channels < 8


def test_slicing_refuses_what_no_bias_can_make_exact():
    torch.manual_seed(0)
    padded = nn.Sequential(
        NestedConv2d(1, 8, 3, padding=1, groups_of_units=4, weight_noise=False),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Conv2d(8, 6, 3, padding=1),
    )
    _randomize_norms(padded)
    with pytest.raises(ValueError, match=r"3 \(a padded conv\).*norm=nn.BatchNorm2d"):
        slice_model(padded, 0.5)
    softmax = nn.Sequential(NestedLinear(5, 8, groups_of_units=4), nn.Softmax(dim=-1), nn.Linear(8, 3))
    with pytest.raises(ValueError, match=r"1 \(Softmax\): it mixes channels"):
        slice_model(softmax, 0.5)


@pytest.mark.parametrize("multiplier", [1, 2])
def test_depthwise_convs_are_sliced_channel_by_channel(multiplier):
    torch.manual_seed(0)
    model = nn.Sequential(
        NestedConv2d(2, 8, 3, padding=1, groups_of_units=4, weight_noise=False, norm=nn.BatchNorm2d(8)),
        nn.ReLU(),
        nn.Conv2d(8, 8 * multiplier, 3, padding=1, groups=8),  # its bias turns dropped channels into constants
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(8 * multiplier * 16, 3),
    )
    _randomize_norms(model)
    sliced = _check_exact(model, torch.randn(4, 2, 4, 4))
    depthwise = sliced[2]
    assert depthwise.groups == depthwise.in_channels == 4 and depthwise.out_channels == 4 * multiplier


def test_the_width_is_saved_in_the_state_dict_and_restored():
    model = _conv_net()
    set_width(model, 0.5)
    state = model.state_dict()
    fresh = _conv_net()
    fresh.load_state_dict(state)
    assert [m.width for m in nested_modules(fresh)] == [0.5]
    x = torch.randn(3, 1, 4, 4)
    torch.testing.assert_close(fresh.eval()(x), model.eval()(x))
    assert state["0.ordering.width"].item() == 0.5
    older = {k: v for k, v in state.items() if not k.endswith("ordering.width")}  # a checkpoint from before
    set_width(fresh, 0.25)
    fresh.load_state_dict(older)
    assert [m.width for m in nested_modules(fresh)] == [0.25]


def test_metrics_refuse_logits_and_nan_rows_and_take_logits_when_told():
    logits = torch.tensor([[2.0, -1.0, 0.5], [0.1, 3.0, -2.0], [-1.0, 0.0, 4.0]])
    labels = torch.tensor([0, 1, 1])
    with pytest.raises(ValueError, match="row 0 has values outside"):
        expected_calibration_error(logits, labels)
    with pytest.raises(ValueError, match="logits=True"):
        nll(logits, labels)
    probs = torch.softmax(logits, dim=1)
    with_nan = probs.clone()
    with_nan[2, 1] = float("nan")
    with pytest.raises(ValueError, match="row 2 holds a NaN"):
        expected_calibration_error(with_nan, labels)
    with pytest.raises(ValueError, match="row 1 has a sum other than 1"):
        nll(probs * torch.tensor([[1.0], [0.9], [1.0]]), labels)
    assert expected_calibration_error(logits, labels, logits=True) == pytest.approx(
        expected_calibration_error(probs, labels)
    )
    assert nll(logits, labels, logits=True) == pytest.approx(nll(probs, labels))
    assert ood_auroc(logits, logits * 0.1, logits=True) == pytest.approx(
        ood_auroc(probs, torch.softmax(logits * 0.1, 1))
    )
