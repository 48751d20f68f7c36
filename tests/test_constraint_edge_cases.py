"""The engine's math at the edges: rows, non-finite values, extreme scales, writes through `.data`."""

import math

import pytest
import torch
from torch import nn

import lawn


class _Decoder(nn.Module):
    """Linear → ConvTranspose1d → logits: discovery returns the transposed conv's weight (in × out × k)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 6 * 5)
        self.up = nn.ConvTranspose1d(6, 3, kernel_size=3)  # weight: 6 (in) × 3 (out) × 3

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(torch.relu(self.fc(x)).view(-1, 6, 5))


@pytest.mark.parametrize("foreach", [True, False])
def test_row_granularity_keeps_one_norm_per_output_unit_of_a_transposed_conv(foreach):
    torch.manual_seed(0)
    model = _Decoder()
    x = torch.randn(8, 4)
    tail = lawn.final_homogeneous_params(model, x)
    assert {entry[0]: entry.output_dim for entry in tail}["up.weight"] == 1  # carried with the entry, not tagged
    assert lawn.constraint.output_dim(model.up.weight) == 0
    opt = lawn.LAWN(
        torch.optim.Adam(model.parameters(), lr=0.05), tail, free_steps=0, granularity="row", foreach=foreach
    )
    assert opt.target_norms["up.weight"].shape == (3,)  # one per output channel, not per input channel
    unit_norms = model.up.weight.detach().transpose(0, 1).flatten(1).norm(dim=1)
    for _ in range(3):
        opt.zero_grad()
        model(x).square().mean().backward()
        opt.step()
    after = model.up.weight.detach().transpose(0, 1).flatten(1).norm(dim=1)
    torch.testing.assert_close(after, unit_norms, rtol=1e-5, atol=0)


@pytest.mark.parametrize("granularity", ["tensor", "row"])
@pytest.mark.parametrize("path", ["foreach", "reference"])
def test_one_non_finite_gradient_entry_stays_one(granularity, path):
    def run(constrained: bool) -> int:
        torch.manual_seed(0)
        w = nn.Parameter(torch.randn(8, 16))
        base = torch.optim.Adam([w], lr=1e-2)
        opt = (
            lawn.LAWN(base, [w], free_steps=0, granularity=granularity, foreach=path == "foreach")
            if (constrained)
            else base
        )
        w.grad = torch.randn(8, 16)
        w.grad[3, 5] = float("nan")
        opt.step()
        return int(torch.isnan(w).sum())

    assert run(constrained=False) == 1
    assert run(constrained=True) == 1  # was 128 (the whole tensor) or 16 (the row)


def test_target_scale_is_bounded_and_norms_do_not_overflow_or_underflow():
    w = nn.Parameter(torch.randn(4, 8))
    for scale in (1e-25, 1e20):
        with pytest.raises(ValueError, match="target_scale: must be a number in"):
            lawn.LAWN(torch.optim.SGD([w], lr=0.1), [w], free_steps=0, target_scale=scale)
    big = torch.full((128,), 1e20)
    assert lawn.norms(big).item() == pytest.approx(1e20 * 128**0.5, rel=1e-6)  # was inf
    tiny = torch.full((128,), 1e-25)
    assert lawn.norms(tiny).item() == pytest.approx(1e-25 * 128**0.5, rel=1e-5)  # was 0.0
    huge = torch.full((128,), 1e220, dtype=torch.float64)
    assert lawn.norms(huge).item() == pytest.approx(1e220 * 128**0.5, rel=1e-12)
    with torch.no_grad():
        w.mul_(1e18)
    with pytest.raises(lawn.NormDiverged, match="outside \\[1e-12, 1e\\+12\\].*: training diverged"):  # its own norm
        lawn.LAWN(torch.optim.SGD([w], lr=0.1), [w], free_steps=0)


def test_a_target_out_of_range_by_choice_is_a_plain_error_and_a_grown_norm_a_divergence():
    w = nn.Parameter(torch.full((4, 8), 1e9))  # norm ≈ 5.7e9: finite and in range
    with pytest.raises(ValueError, match="outside \\[1e-12, 1e\\+12\\]") as chosen:
        lawn.LAWN(torch.optim.SGD([w], lr=0.1), [w], free_steps=0, target_scale=1e4)
    assert not isinstance(chosen.value, lawn.NormDiverged)  # the user's target_scale, not a blow-up
    for value, row in ((1e12, None), (math.inf, None), (math.nan, 2)):
        grown = nn.Parameter(torch.ones(4, 8))
        with torch.no_grad():
            grown[2 if row is not None else slice(None)] = value
        granularity = "row" if row is not None else "tensor"
        with pytest.raises(lawn.NormDiverged, match="row 2" if row is not None else "freeze: 'w'"):
            lawn.LAWN(torch.optim.SGD([grown], lr=0.1), [("w", grown)], free_steps=0, granularity=granularity)
    big = nn.Parameter(torch.full((4, 8), 1e12))  # a fixed target (WRS) rescales any finite norm onto itself
    lawn.WRS(torch.optim.SGD([big], lr=0.1), [big]).freeze()
    assert lawn.norms(big.detach()).item() == pytest.approx(1.0, rel=1e-5)
    zero = nn.Parameter(torch.zeros(4, 8))
    with pytest.raises(ValueError, match="has norm 0") as refused:
        lawn.LAWN(torch.optim.SGD([zero], lr=0.1), [zero], free_steps=0)
    assert not isinstance(refused.value, lawn.NormDiverged)


@pytest.mark.parametrize("fused", [False, True])
def test_a_write_through_data_does_not_leave_a_stale_norm(fused):
    torch.manual_seed(0)
    w = nn.Parameter(torch.randn(16, 32))
    # Adagrad: a base the fused step does not implement, so the projection (foreach or fused.py kernel) runs on .grad
    opt = lawn.LAWN(torch.optim.Adagrad([w], lr=0.1), [("w", w)], free_steps=0, fused=fused)
    w.grad = torch.randn(16, 32)
    opt.step()
    swapped = torch.randn(16, 32) * 3  # e.g. EMA weights swapped in, bypassing the version counter
    nn.utils.vector_to_parameters(swapped.flatten().clone(), [w])
    w.grad = torch.randn(16, 32)
    opt.step()
    cosine = torch.nn.functional.cosine_similarity(w.grad.flatten(), swapped.flatten(), dim=0)
    assert abs(cosine.item()) < 1e-5  # was -0.98: the projection used the old norm


@pytest.mark.parametrize("base", ["sgd", "adam"])
def test_the_fused_step_after_a_write_through_data_matches_the_reference(base):
    """The fused step (default for SGD/Adam on CPU) leaves .grad unprojected, so compare the weights instead."""

    def run(**options) -> torch.Tensor:
        torch.manual_seed(0)
        w = nn.Parameter(torch.randn(16, 32))
        make = {"sgd": lambda: torch.optim.SGD([w], lr=0.1), "adam": lambda: torch.optim.Adam([w], lr=0.1)}[base]
        opt = lawn.LAWN(make(), [("w", w)], free_steps=0, **options)
        w.grad = torch.randn(16, 32)
        opt.step()
        nn.utils.vector_to_parameters((torch.randn(16, 32) * 3).flatten(), [w])
        w.grad = torch.randn(16, 32)
        opt.step()
        return w.detach().clone()

    torch.testing.assert_close(run(), run(foreach=False, fused=False), rtol=1e-5, atol=1e-6)


def test_public_helpers_refuse_bad_granularity():
    w = torch.randn(3, 4)
    for call in (
        lambda: lawn.norms(w, "rows"),
        lambda: lawn.project_onto_tangent(w, w, "Row"),
        lambda: lawn.retract(w, torch.ones(3), "per_row"),
    ):
        with pytest.raises(ValueError, match="granularity: expected one of"):
            call()
    with pytest.raises(ValueError, match="rows need >= 2"):
        lawn.norms(torch.ones(5), "row")
