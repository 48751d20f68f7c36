"""The variational ordering unit and the nested layers: distribution, masks, gradients, KL, width, errors."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import lawn
from lawn.nested import (
    NestedConv2d,
    NestedDropout,
    NestedLinear,
    VariationalOrdering,
    downhill_kl,
    downhill_log_probs,
    downhill_mask,
    mc_predict,
    nested_kl,
    recalibrate_batchnorm,
    set_width,
)


def test_downhill_distribution_matches_stick_breaking_and_sums_to_one() -> None:
    r = torch.tensor([0.3, -1.2, 2.0])
    beta = torch.sigmoid(r)
    want = torch.stack([1 - beta[0], beta[0] * (1 - beta[1]), beta[0] * beta[1] * (1 - beta[2]), beta.prod()])
    q = downhill_log_probs(r).exp()
    torch.testing.assert_close(q, want)
    assert math.isclose(float(q.sum()), 1.0, rel_tol=1e-6)
    far = downhill_log_probs(torch.tensor([40.0, -40.0, 40.0] * 10)).exp()  # extreme logits: stays finite, sums to 1
    assert torch.isfinite(far).all() and math.isclose(float(far.sum()), 1.0, rel_tol=1e-5)


def test_kl_is_zero_at_the_prior_and_positive_away_from_it() -> None:
    unit = VariationalOrdering(groups=5, always_on=1, prior=0.8)
    assert float(unit.kl().detach()) == pytest.approx(0.0, abs=1e-7)
    with torch.no_grad():
        unit.keep_logits += torch.tensor([2.0, -1.0, 0.5, 0.0])
    log_q, log_p = unit.log_probs(), downhill_log_probs(unit.prior_logits)
    by_hand = sum(math.exp(a) * (a - b) for a, b in zip(log_q.tolist(), log_p.tolist()))
    assert float(unit.kl().detach()) == pytest.approx(by_hand, rel=1e-5) and by_hand > 0
    assert float(downhill_kl(log_q, log_p).detach()) == pytest.approx(by_hand, rel=1e-5)


def test_sampled_masks_are_downhill_and_follow_the_distribution() -> None:
    torch.manual_seed(0)
    unit = VariationalOrdering(groups=6, always_on=2, prior=0.7)
    masks = unit.group_mask(4000)
    assert masks.shape == (4000, 6)
    assert set(masks.unique().tolist()) <= {0.0, 1.0}
    assert (masks[:, 1:] <= masks[:, :-1]).all()  # non-increasing along the order
    assert (masks[:, :2] == 1).all()  # always-on groups
    cut = (masks[:, 2:].sum(1)).long()  # z = number of droppable groups kept
    freq = torch.bincount(cut, minlength=5).float() / 4000
    torch.testing.assert_close(freq, unit.log_probs().exp().detach(), atol=0.03, rtol=0)
    torch.testing.assert_close(masks.mean(0), unit.keep_probabilities().detach(), atol=0.03, rtol=0)


def test_downhill_mask_from_one_hot() -> None:
    one_hot = torch.eye(4)  # z = 0, 1, 2, 3 with D = 3
    want = torch.tensor([[0, 0, 0], [1, 0, 0], [1, 1, 0], [1, 1, 1]], dtype=torch.float32)
    torch.testing.assert_close(downhill_mask(one_hot), want)


def test_gradients_reach_the_ordering_parameters() -> None:
    torch.manual_seed(0)
    layer = NestedLinear(6, 8, groups_of_units=4, weight_noise=False)
    x = torch.randn(32, 6)
    (layer(x) ** 2).sum().backward()
    grad = layer.ordering.keep_logits.grad
    assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0
    layer.zero_grad()
    nested_kl(nn.Sequential(layer)).backward()  # the KL alone also reaches them (away from the prior)
    assert layer.ordering.keep_logits.grad is not None


def test_fixed_rate_nested_dropout_has_no_ordering_parameters() -> None:
    layer = NestedConv2d(3, 8, 3, groups_of_units=4, learn_ordering=False, weight_noise=False)
    assert all("keep_logits" not in n for n, _ in layer.named_parameters())
    drop = NestedDropout(8, groups_of_units=4, rate=0.2)
    assert list(drop.parameters()) == []
    torch.manual_seed(0)
    out = drop(torch.ones(2000, 8, 3, 3))
    kept = out[:, :, 0, 0].mean(0)
    want = torch.tensor([1.0, 1.0, 0.8, 0.8, 0.64, 0.64, 0.512, 0.512])
    torch.testing.assert_close(kept, want, atol=0.04, rtol=0)
    assert float(nested_kl(nn.Sequential(layer, drop))) == 0.0


def test_set_width_keeps_a_prefix_of_groups() -> None:
    layer = NestedConv2d(2, 8, 3, padding=1, groups_of_units=4, always_on=1, weight_noise=False)
    x = torch.randn(3, 2, 5, 5)
    model = nn.Sequential(layer)
    for width, kept in [(1.0, 8), (0.75, 6), (0.67, 6), (0.66, 4), (0.5, 4), (0.34, 4), (0.33, 2), (0.0, 2)]:
        set_width(model, width)
        out = layer(x)
        alive = (out.abs().sum((0, 2, 3)) > 0).tolist()
        assert alive == [True] * kept + [False] * (8 - kept), (width, alive)
        assert layer.units_kept(width) == kept
        torch.testing.assert_close(layer(x[0]), out[0])  # unbatched input
    set_width(model, None)
    assert layer.width is None


def test_weight_noise_samples_in_training_and_mc_only() -> None:
    torch.manual_seed(0)
    layer = NestedLinear(5, 4, groups_of_units=2, weight_noise=True)
    with torch.no_grad():
        layer.log_sigma2.fill_(-1.0)
    model = nn.Sequential(layer)
    set_width(model, 1.0)
    x = torch.randn(7, 5)
    model.eval()
    torch.testing.assert_close(model(x), model(x))  # eval: the mean weights
    torch.testing.assert_close(model(x), nn.functional.linear(x, layer.weight, layer.bias))
    torch.testing.assert_close(model(x[0]), model(x)[0])  # unbatched input
    model.train()
    assert not torch.allclose(model(x), model(x))
    p1, p2 = mc_predict(model, x, samples=4), mc_predict(model, x, samples=4)
    assert not torch.allclose(p1, p2) and model.training  # the mode is restored
    torch.testing.assert_close(p1.sum(1), torch.ones(7))
    assert float(layer.weight_kl().detach()) > 0 and torch.isfinite(nested_kl(model, "weights"))


def test_weight_kl_is_weighted_by_keep_probability() -> None:
    layer = NestedLinear(3, 4, groups_of_units=4, always_on=1, prior=0.5, weight_noise=True)
    log_alpha = layer.log_alpha()
    kl = 0.63576 - 0.63576 * torch.sigmoid(1.87320 + 1.48695 * log_alpha) + 0.5 * nn.functional.softplus(-log_alpha)
    want = (kl.sum(1) * torch.tensor([1.0, 0.5, 0.25, 0.125])).sum()
    torch.testing.assert_close(layer.weight_kl(), want)


def test_recalibrate_batchnorm_uses_the_current_width() -> None:
    torch.manual_seed(0)
    layer = NestedConv2d(1, 4, 1, bias=False, groups_of_units=4, weight_noise=False, norm=nn.BatchNorm2d(4))
    model = nn.Sequential(layer)
    data = [(torch.randn(16, 1, 3, 3) + 2.0, torch.zeros(16)) for _ in range(3)]
    set_width(model, 1.0).eval()
    recalibrate_batchnorm(model, data)
    mean = layer.norm.running_mean.clone()
    want = torch.cat([d[0] for d in data]).mean() * layer.weight.detach().flatten()
    torch.testing.assert_close(mean, want, rtol=1e-4, atol=1e-5)
    assert not model.training and layer.norm.momentum == 0.1  # nothing else changed
    model.train()
    recalibrate_batchnorm(model, data, batches=1)
    assert model.training and layer.norm.num_batches_tracked == 1


def test_nested_is_exported_as_a_module() -> None:
    assert lawn.nested.NestedConv2d is NestedConv2d and "nested" in lawn.__all__
    assert "slice_model" not in lawn.__all__ and not hasattr(lawn, "nll")  # the names stay under lawn.nested


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: NestedLinear(4, 6, groups_of_units=4), "does not divide out_features=6"),
        (lambda: NestedConv2d(4, 6, 3, groups_of_units=5), "does not divide out_channels=6"),
        (lambda: NestedConv2d(4, 8, 3, groups=2), "groups=1"),
        (lambda: NestedLinear(4, 8, groups_of_units=4, always_on=5), "always_on"),
        (lambda: NestedLinear(4, 8, prior=1.0), "prior"),
        (lambda: NestedLinear(4, 8, temperature=0.0), "temperature"),
        (lambda: NestedDropout(8, rate=1.5), "rate"),
        (lambda: NestedDropout(6, groups_of_units=4), "num_channels=6"),
    ],
)
def test_bad_construction_is_refused(make, match) -> None:
    with pytest.raises(ValueError, match=match):
        make()


def test_bad_widths_and_models_are_refused_without_changes() -> None:
    model = nn.Sequential(NestedLinear(3, 4, groups_of_units=2))
    set_width(model, 0.5)
    for bad in (-0.1, 1.5, float("nan")):
        with pytest.raises(ValueError, match="width must be in"):
            set_width(model, bad)
    with pytest.raises(TypeError, match="width"):
        set_width(model, "half")
    assert model[0].width == 0.5
    plain = nn.Sequential(nn.Linear(3, 4))
    for call in (lambda: set_width(plain, 0.5), lambda: nested_kl(plain), lambda: mc_predict(plain, torch.ones(1, 3))):
        with pytest.raises(ValueError, match="no nested layers"):
            call()
    with pytest.raises(ValueError, match="part"):
        nested_kl(model, "bias")
    with pytest.raises(ValueError, match="samples"):
        mc_predict(model, torch.ones(2, 3), samples=0)
