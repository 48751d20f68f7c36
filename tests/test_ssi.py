"""The scale-shift-invariant penalty: invariant where weight decay is not, and an input-gradient bound."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import lawn
from lawn import ResidualBranch, scale_shift_invariant_penalty

FORMS = ["geometric", "product"]


def _mlp(bias: bool, seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Linear(5, 8, bias=bias),
        nn.ReLU(),
        nn.Linear(8, 8, bias=bias),
        nn.ReLU(),
        nn.Linear(8, 3, bias=bias),
    )


def _weight_decay(model: nn.Module) -> torch.Tensor:
    return sum(m.weight.square().sum() for m in model if isinstance(m, nn.Linear))


@torch.no_grad()
def _shift(model: nn.Sequential, i: int, j: int, c: float) -> None:
    """Layer ``i`` (weight and bias) × c, layer ``j``'s weight / c: the same function for ReLU nets."""
    model[i].weight.mul_(c)
    if model[i].bias is not None:
        model[i].bias.mul_(c)
    model[j].weight.div_(c)


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("bias", [False, True])
def test_invariant_to_scale_shifting_while_weight_decay_is_not(form: str, bias: bool) -> None:
    model, x = _mlp(bias), torch.randn(16, 5)
    out, penalty, decay = model(x), scale_shift_invariant_penalty(model, form=form), _weight_decay(model)
    _shift(model, 0, 2, 7.0)
    _shift(model, 2, 4, 0.2)
    torch.testing.assert_close(model(x), out, rtol=1e-4, atol=1e-5)  # the function is unchanged
    torch.testing.assert_close(scale_shift_invariant_penalty(model, form=form), penalty, rtol=1e-5, atol=0)
    assert _weight_decay(model) > 3 * decay  # weight decay sees a very different network


def test_geometric_form_is_weight_decay_at_the_balanced_scale() -> None:
    model = _mlp(bias=False)
    norms = [model[i].weight.norm() for i in (0, 2, 4)]
    penalty = scale_shift_invariant_penalty(model)
    assert penalty <= _weight_decay(model) + 1e-6  # AM-GM: never above weight decay
    target = torch.stack(norms).prod() ** (1 / 3)
    _shift(model, 0, 2, (target / norms[0]).item())  # balance the norms by shifting scale
    _shift(model, 2, 4, (target / model[2].weight.norm()).item())
    torch.testing.assert_close(_weight_decay(model), penalty, rtol=1e-5, atol=0)


def test_product_form_bounds_the_input_gradient() -> None:
    model = _mlp(bias=True)
    bound = scale_shift_invariant_penalty(model, form="product")
    for x in torch.randn(20, 5):
        jacobian = torch.autograd.functional.jacobian(model, x)
        assert torch.linalg.matrix_norm(jacobian, ord=2) <= bound


def test_residual_branch_contributes_one_plus_its_product() -> None:
    torch.manual_seed(0)
    inner1, inner2, head = nn.Linear(4, 6, bias=False), nn.Linear(6, 4, bias=False), nn.Linear(4, 2)
    f = lambda x: head(x + inner2(torch.relu(inner1(x))))
    layers = [ResidualBranch([inner1, inner2]), head]
    bound = scale_shift_invariant_penalty(layers, form="product")
    branch = inner1.weight.norm() * inner2.weight.norm()
    torch.testing.assert_close(bound, (1 + branch) * head.weight.norm())
    for x in torch.randn(10, 4):
        assert torch.linalg.matrix_norm(torch.autograd.functional.jacobian(f, x), ord=2) <= bound
    with torch.no_grad():  # shifting scale inside the branch changes neither the function nor the bound
        x = torch.randn(3, 4)
        out = f(x)
        inner1.weight.mul_(5.0)
        inner2.weight.div_(5.0)
        torch.testing.assert_close(f(x), out)
    torch.testing.assert_close(scale_shift_invariant_penalty(layers, form="product"), bound)


def test_is_a_differentiable_loss_term_that_shrinks_the_intrinsic_norm() -> None:
    model = _mlp(bias=True)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    start = scale_shift_invariant_penalty(model).item()
    for _ in range(20):
        optimizer.zero_grad()
        scale_shift_invariant_penalty(model).backward()
        optimizer.step()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    assert scale_shift_invariant_penalty(model).item() < 0.8 * start


def test_weights_and_layers_can_be_given_directly() -> None:
    model = _mlp(bias=False)
    from_model = scale_shift_invariant_penalty(model)
    torch.testing.assert_close(scale_shift_invariant_penalty([model[0], model[2].weight, model[4]]), from_model)


def test_bad_input_is_rejected() -> None:
    with pytest.raises(ValueError, match="form"):
        scale_shift_invariant_penalty(_mlp(False), form="sum")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="no Linear or Conv"):
        scale_shift_invariant_penalty(nn.ReLU())
    with pytest.raises(ValueError, match="no layers"):
        scale_shift_invariant_penalty([])
    with pytest.raises(ValueError, match=r"layers\[1\].*dims"):
        scale_shift_invariant_penalty([torch.randn(3, 3), torch.randn(3)])
    with pytest.raises(TypeError, match=r"layers\[0\]"):
        scale_shift_invariant_penalty(["fc1"])  # type: ignore[list-item]
    with pytest.raises(TypeError, match="sequence"):
        scale_shift_invariant_penalty(torch.randn(3, 3))  # type: ignore[arg-type]


def test_ssi_penalty_has_a_finite_gradient_at_a_zero_weight():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    nn.init.zeros_(model[2].weight)  # a zero-initialised head
    for form in ("geometric", "product"):
        model.zero_grad()
        penalty = lawn.scale_shift_invariant_penalty(model, form=form)
        penalty.backward()
        assert penalty.item() == 0.0
        assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
