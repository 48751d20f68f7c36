"""WRS: the constraint engine with a fixed unit target on the weights that feed BatchNorm."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import lawn
from lawn import WRS, norms, params_feeding_normalization


def _bn_net(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, bias=False),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.Conv2d(4, 6, 3, bias=False),
        nn.BatchNorm2d(6),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(6, 3),
    )


def _wrs(model: nn.Module, x: torch.Tensor, lr: float = 0.1, **kwargs) -> WRS:
    per_channel = kwargs.get("granularity") == "row"
    feeding = params_feeding_normalization(model, x, per_channel=per_channel)
    ids = {id(p) for _, p in feeding}
    others = [p for p in model.parameters() if id(p) not in ids]
    base = torch.optim.SGD(
        [{"params": [p for _, p in feeding], "weight_decay": 0.0}, {"params": others, "weight_decay": 1e-4}],
        lr=lr,
        momentum=0.9,
    )
    return WRS(base, feeding, **kwargs)


def _train_step(model: nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor) -> float:
    opt.zero_grad()
    loss = nn.functional.cross_entropy(model(x), y)
    loss.backward()
    opt.step()
    return loss.item()


def test_selection_is_the_convs_before_batchnorm() -> None:
    opt = _wrs(_bn_net(), torch.randn(4, 1, 8, 8))
    assert [name for name, _ in opt.constrained_parameters] == ["0.weight", "3.weight"]


@pytest.mark.parametrize("granularity", ["tensor", "row"])
def test_weights_are_on_the_unit_sphere_from_the_start_and_after_every_step(granularity: str) -> None:
    model, x, y = _bn_net(), torch.randn(8, 1, 8, 8), torch.randint(0, 3, (8,))
    opt = _wrs(model, x, lr=0.5, granularity=granularity)
    for _ in range(3):
        for _, w in opt.constrained_parameters:
            torch.testing.assert_close(norms(w, granularity), torch.ones_like(norms(w, granularity)))
        _train_step(model, opt, x, y)
    assert opt.steps == 3


@pytest.mark.parametrize("granularity", ["tensor", "row"])
def test_the_rescale_does_not_change_the_train_mode_function(granularity: str) -> None:
    """In train mode BatchNorm normalizes with the batch's statistics, so ``BN(c·Wx) = BN(Wx)``: the rescale
    is invisible (up to BatchNorm's eps, which is tiny next to the batch variance)."""
    model, x = _bn_net(), torch.randn(16, 1, 8, 8)
    with torch.no_grad():
        model[0].weight.mul_(5.0)  # far from the sphere, so the rescale is large
    before = model(x)
    _wrs(model, x, granularity=granularity)
    rows = norms(model[0].weight, granularity)
    torch.testing.assert_close(rows, torch.ones_like(rows))
    torch.testing.assert_close(model(x), before, rtol=1e-4, atol=1e-4)


def test_eval_mode_needs_running_statistics_collected_at_the_kept_norm() -> None:
    """In eval mode BatchNorm uses running statistics, which WRS does not touch: rescaling weights after the
    statistics were collected changes the eval function; rescaling the statistics the same way restores it.
    That is why WRS rescales as soon as it is built: every forward pass, hence every statistic, then sees
    weights at the target norm (up to one optimizer step's drift when ``every > 1``)."""
    model, x = _bn_net(), torch.randn(16, 1, 8, 8)
    for _ in range(5):
        model(torch.randn(16, 1, 8, 8))  # running statistics at the initial scale
    model.eval()
    before = model(x)
    scales = {i: 1.0 / norms(model[i].weight).item() for i in (0, 3)}
    _wrs(model, x)
    assert not torch.allclose(model(x), before, atol=1e-3)
    with torch.no_grad():
        for i, c in scales.items():
            model[i + 1].running_mean.mul_(c)
            model[i + 1].running_var.mul_(c * c)
    torch.testing.assert_close(model(x), before, rtol=1e-3, atol=1e-3)


def test_every_k_rescales_only_after_steps_k_2k() -> None:
    model, x, y = _bn_net(), torch.randn(8, 1, 8, 8), torch.randint(0, 3, (8,))
    opt = _wrs(model, x, lr=0.5, every=3)
    on_sphere = []
    for _ in range(6):
        _train_step(model, opt, x, y)
        on_sphere.append(all(abs(norms(w).item() - 1.0) < 1e-5 for _, w in opt.constrained_parameters))
    assert on_sphere == [False, False, True, False, False, True]
    assert opt.every == 3 and opt.steps == 6


def test_training_reduces_the_loss() -> None:
    torch.manual_seed(1)
    model, x = _bn_net(), torch.randn(32, 1, 8, 8)
    y = (x.mean(dim=(1, 2, 3)) > 0).long() + (x[:, 0, 0, 0] > 0).long()
    opt = _wrs(model, x, lr=0.1)
    losses = [_train_step(model, opt, x, y) for _ in range(30)]
    assert losses[-1] < 0.7 * losses[0]


@pytest.mark.parametrize("fast", [{}, {"fused": True}], ids=["foreach", "fused"])
def test_reference_and_fast_paths_agree(fast: dict) -> None:
    x, y = torch.randn(8, 1, 8, 8), torch.randint(0, 3, (8,))
    models = [_bn_net(), _bn_net()]
    opts = [_wrs(models[0], x, granularity="row", **fast), _wrs(models[1], x, granularity="row", foreach=False)]
    for _ in range(3):
        for model, opt in zip(models, opts):
            _train_step(model, opt, x, y)
    for a, b in zip(models[0].parameters(), models[1].parameters()):
        torch.testing.assert_close(a, b)


def test_checkpoint_round_trip_keeps_the_interval_and_the_count() -> None:
    model, x, y = _bn_net(), torch.randn(8, 1, 8, 8), torch.randint(0, 3, (8,))
    opt = _wrs(model, x, every=2)
    _train_step(model, opt, x, y)
    twin = copy.deepcopy(model)
    restored = _wrs(twin, x, every=5)  # building WRS rescales twin: resume = build, then load both states
    twin.load_state_dict(model.state_dict())
    with pytest.warns(UserWarning, match="lawn_retract_every=2 \\(constructor: 5\\); the checkpoint's are used"):
        restored.load_state_dict(copy.deepcopy(opt.state_dict()))  # as if saved and loaded
    assert restored.every == 2 and restored.steps == 1
    for _ in range(3):
        _train_step(model, opt, x, y)
        _train_step(twin, restored, x, y)
    for a, b in zip(model.parameters(), twin.parameters()):
        torch.testing.assert_close(a, b)


def test_is_a_plain_optimizer_for_schedulers() -> None:
    model, x, y = _bn_net(), torch.randn(8, 1, 8, 8), torch.randint(0, 3, (8,))
    opt = _wrs(model, x)
    assert isinstance(opt, torch.optim.Optimizer)
    scheduler = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    _train_step(model, opt, x, y)
    scheduler.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(0.05)


def test_bad_input_is_rejected_and_nothing_changes() -> None:
    model = _bn_net()
    weight = model[0].weight
    before = weight.detach().clone()
    base = torch.optim.SGD(model.parameters(), lr=0.1, weight_decay=5e-4)
    with pytest.raises(ValueError, match=r"'w'.*weight_decay=0.0005"):
        WRS(base, [("w", weight)])
    base = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ValueError, match="every"):
        WRS(base, [weight], every=0)
    with pytest.raises(TypeError, match="every"):
        WRS(base, [weight], every=1.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="target_norm"):
        WRS(base, [weight], target_norm=-1.0)
    assert torch.equal(weight, before)


def test_step_hooks_run_once_per_step_also_beside_other_constraint_wrappers():
    """WRS is a configuration of the engine, not a second step(): hooks fire once per step."""
    torch.manual_seed(0)
    other = torch.nn.Parameter(torch.randn(3, 3))
    lawn.NormConstraint(torch.optim.SGD([other], lr=0.1), [other], free_steps=0)
    weight = torch.nn.Parameter(torch.randn(4, 3))
    opt = lawn.WRS(torch.optim.SGD([weight], lr=0.1), [weight], every=2)
    calls = []
    opt.register_step_post_hook(lambda *args: calls.append(opt.steps))
    for _ in range(3):
        weight.grad = torch.randn(4, 3)
        opt.step()
    assert calls == [1, 2, 3]
    assert opt.every == 2 and opt.state_dict()["param_groups"][0]["lawn_retract_every"] == 2
