"""slice_model: physically narrower plain networks whose eval outputs equal the masked model's."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lawn.nested import (
    NestedConv2d,
    NestedDropout,
    NestedLinear,
    nested_modules,
    recalibrate_batchnorm,
    set_width,
    slice_model,
)


def small_cnn(weight_noise: bool = True, learn_ordering: bool = True) -> nn.Sequential:
    kw = {"groups_of_units": 4, "weight_noise": weight_noise, "learn_ordering": learn_ordering}
    return nn.Sequential(
        NestedConv2d(1, 8, 3, padding=1, bias=False, norm=nn.BatchNorm2d(8), **kw),
        nn.ReLU(),
        nn.MaxPool2d(2),
        NestedConv2d(8, 12, 3, padding=1, norm=nn.BatchNorm2d(12), **kw),
        nn.ReLU(),
        nn.Flatten(),
        NestedLinear(12 * 4 * 4, 16, **kw),
        nn.ReLU(),
        nn.Linear(16, 3),
    )


def trained_stats(model: nn.Module, x: torch.Tensor, width: float) -> None:
    set_width(model, width)
    recalibrate_batchnorm(model, [x])
    model.eval()


@pytest.mark.parametrize("width", [1.0, 0.75, 0.5, 0.25, 0.0])
@pytest.mark.parametrize("weight_noise", [True, False])
def test_sliced_model_equals_masked_model_in_eval(width: float, weight_noise: bool) -> None:
    torch.manual_seed(0)
    model = small_cnn(weight_noise)
    x = torch.randn(10, 1, 8, 8, dtype=torch.float64)
    model = model.double()
    for m in model.modules():  # non-trivial BN statistics and affine parameters
        if isinstance(m, nn.BatchNorm2d):
            nn.init.uniform_(m.weight, 0.5, 1.5)
            nn.init.uniform_(m.bias, -0.5, 0.5)
    trained_stats(model, x, width)
    sliced = slice_model(model, width).eval()
    assert not nested_modules(sliced)
    with torch.no_grad():
        torch.testing.assert_close(sliced(x), model(x), rtol=1e-12, atol=1e-12)
    kept = [m.units_kept(width) for m in nested_modules(model)]
    assert sliced[0][0].weight.shape == (kept[0], 1, 3, 3) and sliced[0][1].running_mean.shape == (kept[0],)
    assert sliced[3][0].weight.shape == (kept[1], kept[0], 3, 3)
    assert sliced[6].weight.shape == (kept[2], kept[1] * 16)
    assert sliced[8].weight.shape == (3, kept[2])
    n_full = sum(p.numel() for n, p in model.named_parameters() if "log_sigma2" not in n and "keep_logits" not in n)
    n_sliced = sum(p.numel() for p in sliced.parameters())
    assert (n_sliced < n_full) == (width < 1.0) and n_sliced <= n_full


def test_slicing_leaves_the_model_alone_and_checks_an_example() -> None:
    torch.manual_seed(0)
    model = small_cnn().eval()
    set_width(model, None)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    slice_model(model, 0.5, example_input=torch.randn(4, 1, 8, 8))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(m.width is None for m in nested_modules(model))


def test_nested_dropout_after_plain_layers_slices_them() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), NestedDropout(8, groups_of_units=4, rate=0.3),
        nn.Flatten(), nn.Linear(8 * 16, 8), nn.ReLU(), NestedDropout(8, groups_of_units=2, dim=-1), nn.Linear(8, 2),
    )  # fmt: skip
    x = torch.randn(6, 1, 4, 4)
    trained_stats(model, x, 0.34)
    sliced = slice_model(model, 0.34, example_input=x)
    assert sliced[0].out_channels == 4 and sliced[1].num_features == 4 and isinstance(sliced[3], nn.Identity)
    assert sliced[5].weight.shape == (4, 4 * 16) and sliced[8].weight.shape == (2, 4)
    torch.testing.assert_close(sliced.eval()(x), model(x))


def test_slicing_refuses_what_it_cannot_do() -> None:
    with pytest.raises(ValueError, match="no nested layers"):
        slice_model(nn.Sequential(nn.Linear(2, 2)), 0.5)
    model = small_cnn()
    for bad in (1.2, -0.5):
        with pytest.raises(ValueError, match="width must be in"):
            slice_model(model, bad)
    with pytest.raises(ValueError, match="not None"):
        slice_model(model, None)
    layer_norm = nn.Sequential(NestedLinear(4, 8, groups_of_units=2), nn.LayerNorm(8), nn.Linear(8, 2))
    with pytest.raises(ValueError, match=r"cannot slice through 1 \(LayerNorm\)"):
        slice_model(layer_norm, 0.5)
    wrong_order = nn.Sequential(NestedLinear(4, 6, groups_of_units=2), nn.Linear(4, 6))
    with pytest.raises(ValueError, match="registration order"):
        slice_model(wrong_order, 0.5)
    orphan = nn.Sequential(NestedDropout(4, groups_of_units=2), nn.Linear(4, 2), NestedLinear(2, 2, groups_of_units=2))
    with pytest.raises(ValueError, match="does not follow"):
        slice_model(orphan, 0.5)


def test_example_check_catches_a_forward_that_breaks_the_slicing() -> None:
    class AddsBias(nn.Module):  # a non-channel-wise step the walk cannot see: shifts every channel by 1
        def __init__(self) -> None:
            super().__init__()
            self.a = NestedLinear(3, 4, groups_of_units=2, weight_noise=False)
            self.b = nn.Linear(4, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.b(self.a(x) + 1.0)

    with pytest.raises(ValueError, match="differ"):
        slice_model(AddsBias(), 0.5, example_input=torch.randn(3, 3))
