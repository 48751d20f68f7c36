"""Discovery of the weights that feed a normalization layer (lawn.params_feeding_normalization)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lawn import params_feeding_normalization


def _names(model: nn.Module, x: torch.Tensor, **kwargs: bool) -> list[str]:
    return [name for name, _ in params_feeding_normalization(model, x, **kwargs)]


def _mixed_net() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3),  # 0: → BN                              yes (bias cancels in BN)
        nn.BatchNorm2d(4),
        nn.ReLU(inplace=True),
        nn.Conv2d(4, 4, 3, bias=False),  # 3: → max-pool → BN       yes, also per channel
        nn.MaxPool2d(2),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(16, 6),  # 8: → LayerNorm with a bias             no
        nn.LayerNorm(6),
        nn.Linear(6, 6, bias=False),  # 10: → LayerNorm, no bias    yes, not per channel
        nn.LayerNorm(6),
        nn.Linear(6, 3),  # 12: the logits                          no
    )


def test_finds_the_weights_whose_scale_a_norm_hides() -> None:
    x = torch.randn(4, 1, 8, 8)
    assert _names(_mixed_net(), x) == ["0.weight", "3.weight", "10.weight"]
    assert _names(_mixed_net(), x, per_channel=True) == ["0.weight", "3.weight"]


def test_the_found_weights_are_scale_invariant_in_train_mode() -> None:
    model, x = _mixed_net(), torch.randn(8, 1, 8, 8)
    found = dict(params_feeding_normalization(model, x))
    reference = model(x)
    with torch.no_grad():
        for p in found.values():
            p.mul_(3.0)
    torch.testing.assert_close(model(x), reference, rtol=1e-4, atol=1e-4)
    with torch.no_grad():
        model[8].weight.mul_(3.0)  # the Linear before LayerNorm with a bias: not invariant
    assert not torch.allclose(model(x), reference, atol=1e-3)


def test_a_nonlinearity_between_layer_and_norm_disqualifies() -> None:
    model = nn.Sequential(nn.Linear(5, 4), nn.ReLU(), nn.BatchNorm1d(4), nn.Linear(4, 2))
    assert _names(model, torch.randn(6, 5)) == []


def test_flatten_keeps_tensor_invariance_but_not_per_channel() -> None:
    model = nn.Sequential(nn.Conv2d(1, 2, 3, bias=False), nn.Flatten(), nn.LayerNorm(18), nn.Linear(18, 2))
    x = torch.randn(3, 1, 5, 5)
    assert _names(model, x) == ["0.weight"]
    assert _names(model, x, per_channel=True) == []


class _Residual(nn.Module):
    """conv → BN on the main path, but the conv's output is also added to the skip: not scale-invariant."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(2, 2, 1)
        self.b = nn.Conv2d(2, 2, 1)
        self.bn = nn.BatchNorm2d(2)
        self.bn_sum = nn.BatchNorm2d(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.a(x)
        return self.bn(y) + y + self.bn_sum(self.b(x) + x)


def test_outputs_used_twice_or_summed_disqualify() -> None:
    assert _names(_Residual(), torch.randn(3, 2, 4, 4)) == []


class _Shared(nn.Module):
    def __init__(self, second_goes_to_norm: bool) -> None:
        super().__init__()
        self.linear = nn.Linear(3, 3, bias=False)
        self.norm1, self.norm2 = nn.BatchNorm1d(3), nn.BatchNorm1d(3)
        self.second_goes_to_norm = second_goes_to_norm

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.norm1(self.linear(x))
        z = self.linear(y)
        return self.norm2(z) if self.second_goes_to_norm else z


def test_a_shared_weight_qualifies_only_if_every_use_does() -> None:
    x = torch.randn(4, 3)
    assert _names(_Shared(True), x) == ["linear.weight"]
    assert _names(_Shared(False), x) == []


def test_the_model_is_left_as_it_was() -> None:
    model = _mixed_net()
    model.eval()
    model[1].train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(4, 1, 8, 8)
    rng = torch.get_rng_state()
    params_feeding_normalization(model, x)
    assert [m.training for m in model.modules()] == [m is model[1] for m in model.modules()]
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key
    assert torch.equal(torch.get_rng_state(), rng)


def test_dropout_passes_through_and_the_rng_is_restored() -> None:
    model = nn.Sequential(nn.Linear(3, 4), nn.Dropout(0.5), nn.BatchNorm1d(4), nn.Linear(4, 2))
    x = torch.randn(5, 3)
    rng = torch.get_rng_state()
    assert _names(model, x, per_channel=True) == ["0.weight"]
    assert torch.equal(torch.get_rng_state(), rng)


def test_keyword_arguments_to_layers_are_read() -> None:
    class Kw(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w = nn.Parameter(torch.randn(3, 4))
            self.bn = nn.BatchNorm1d(3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.bn(nn.functional.linear(x, weight=self.w))

    assert _names(Kw(), torch.randn(5, 4)) == ["w"]


def test_bad_model_is_rejected() -> None:
    with pytest.raises(TypeError, match="model"):
        params_feeding_normalization(lambda x: x, torch.randn(2, 2))  # type: ignore[arg-type]
