"""MimicNorm: BN → per-channel bias plus one last BN on the logits, and zero-mean conv filters."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import lawn
from lawn import center_filters_, center_filters_after_step, convert_to_mimicnorm, mimicnorm_filters
from lawn.mimicnorm import ChannelBias, LastBatchNorm


def _bn_cnn(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1, bias=False),  # stem, fan-in 9
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=False),  # depthwise, fan-in 9
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Conv2d(8, 16, 1, bias=False),  # pointwise 1×1, fan-in 8
        nn.BatchNorm2d(16),
        nn.ReLU(),
        nn.Conv2d(16, 16, 3, padding=1, bias=False),  # fan-in 144
        nn.BatchNorm2d(16),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(16, 5),
    )


def _filter_means(w: torch.Tensor) -> torch.Tensor:
    return w.mean(dim=tuple(range(1, w.dim())))


def test_conversion_replaces_every_batchnorm_and_normalizes_the_logits() -> None:
    model = _bn_cnn()
    converted = convert_to_mimicnorm(model, num_classes=5)
    assert isinstance(converted, LastBatchNorm)
    batchnorms = [m for m in converted.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    assert batchnorms == [converted.last_bn]
    assert converted.last_bn.num_features == 5 and not converted.last_bn.affine
    assert [type(converted.body[i]) for i in (1, 4, 7, 10)] == [ChannelBias] * 4
    assert converted.body[7].bias.shape == (16,)
    # the original is untouched and the copy shares no tensors with it
    assert sum(isinstance(m, nn.BatchNorm2d) for m in model.modules()) == 4
    assert not {id(p) for p in model.parameters()} & {id(p) for p in converted.parameters()}
    x = torch.randn(32, 1, 6, 6)
    raw, logits = converted.body(x), converted(x)
    assert logits.shape == (32, 5)
    eps = converted.last_bn.eps
    expected = (raw - raw.mean(0)) / torch.sqrt(raw.var(0, unbiased=False) + eps)
    torch.testing.assert_close(logits, expected, rtol=1e-4, atol=1e-5)


def test_channel_bias_adds_one_value_per_channel() -> None:
    bias = ChannelBias(3)
    with torch.no_grad():
        bias.bias.copy_(torch.tensor([1.0, 2.0, 3.0]))
    x = torch.zeros(2, 3, 4, 4)
    assert torch.equal(bias(x)[:, 1], torch.full((2, 4, 4), 2.0))
    assert torch.equal(bias(torch.zeros(2, 3)), torch.tensor([[1.0, 2.0, 3.0]] * 2))


def test_filter_selection_and_its_exclusions() -> None:
    model = _bn_cnn()
    names = lambda **kw: [name for name, _ in mimicnorm_filters(model, **kw)]
    assert names() == ["0.weight", "3.weight", "6.weight", "9.weight"]
    assert names(exclude_depthwise=True) == ["0.weight", "6.weight", "9.weight"]
    assert names(exclude_1x1=True) == ["0.weight", "3.weight", "9.weight"]
    assert names(min_fan_in=50) == ["9.weight"]  # the reference code's rule


def test_centring_makes_every_filter_zero_mean_and_keeps_the_rest() -> None:
    w = torch.randn(4, 3, 3, 3) + 2.0
    original = w.clone()
    center_filters_([w])
    torch.testing.assert_close(_filter_means(w), torch.zeros(4), atol=1e-6, rtol=0)
    torch.testing.assert_close(w - original, (w - original)[:, :1, :1, :1].expand_as(w))


def test_filters_stay_centred_through_training_and_the_loss_falls() -> None:
    converted = convert_to_mimicnorm(_bn_cnn(), num_classes=5)
    optimizer = torch.optim.Adam(converted.parameters(), lr=1e-2)
    handle = center_filters_after_step(optimizer, converted, exclude_depthwise=True)
    centred = dict(mimicnorm_filters(converted, exclude_depthwise=True))
    depthwise = converted.body[3].weight
    for w in centred.values():  # centred at registration: MimicNorm's initialization
        torch.testing.assert_close(_filter_means(w), torch.zeros(w.shape[0]), atol=1e-6, rtol=0)
    torch.manual_seed(0)
    x, y = torch.randn(32, 1, 6, 6), torch.randint(0, 5, (32,))
    losses = []
    for _ in range(25):
        optimizer.zero_grad()
        loss = nn.functional.cross_entropy(converted(x), y)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    for w in centred.values():
        torch.testing.assert_close(_filter_means(w), torch.zeros(w.shape[0]), atol=1e-6, rtol=0)
    assert _filter_means(depthwise).abs().max() > 1e-3  # excluded: left alone
    assert losses[-1] < 0.7 * losses[0]
    handle.remove()
    optimizer.zero_grad()
    nn.functional.cross_entropy(converted(x), y).backward()
    optimizer.step()
    assert max(_filter_means(w).abs().max().item() for w in centred.values()) > 1e-6


def test_bad_input_is_rejected_and_nothing_changes() -> None:
    model = _bn_cnn()
    w = model[0].weight
    before = w.detach().clone()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ValueError, match=r"params\[1\].*'bias'"):
        center_filters_after_step(optimizer, [("w", w), ("bias", model[1].weight)])
    with pytest.raises(ValueError, match="not held by the optimizer"):
        center_filters_after_step(optimizer, [w, torch.randn(2, 2)])
    with pytest.raises(TypeError, match="optimizer"):
        center_filters_after_step(model, [w])  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="not one tensor"):
        center_filters_(w)
    assert torch.equal(w, before)
    with pytest.raises(ValueError, match="num_classes"):
        convert_to_mimicnorm(model, num_classes=0)
    with pytest.raises(TypeError, match="model"):
        convert_to_mimicnorm("resnet", num_classes=3)  # type: ignore[arg-type]


def test_mimicnorm_of_a_float64_model_stays_float64():
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.ReLU(), nn.Linear(4, 2)).double()
    converted = lawn.convert_to_mimicnorm(model, num_classes=2)
    assert converted.last_bn.running_mean.dtype == torch.float64
    assert converted(torch.randn(5, 3, dtype=torch.float64)).dtype == torch.float64
