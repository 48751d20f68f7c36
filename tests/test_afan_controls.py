"""The A-FAN study's controls: input-space adversarial training (``InputAdversarial``, method ``input_adv``) and the
blurred test set (``eval_blur_sigma``)."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lawn.afan import InputAdversarial
from lawn.harness.corruptions import gaussian_blur, gaussian_kernel


def net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 6, 3, padding=1, bias=False), nn.BatchNorm2d(6), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
        nn.Flatten(), nn.Linear(6, 3),
    )  # fmt: skip


def batch() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.randn(16, 1, 8, 8, generator=g), torch.randint(0, 3, (16,), generator=g)


def test_input_pgd_stays_inside_eps_and_ascends_the_loss() -> None:
    model, (x, y) = net(), batch()
    adversary = InputAdversarial(model, steps=4, step_size=0.1, eps=0.15, random_start=True)
    delta, losses = adversary.perturbation(x, y, F.cross_entropy)
    assert delta.shape == x.shape and float(delta.abs().max()) <= 0.15 + 1e-7
    assert float(delta.abs().max()) == pytest.approx(0.15)  # 4 steps of 0.1 reach the bound
    assert losses.shape == (4,) and losses[-1] > losses[0]
    unbounded, _ = InputAdversarial(model, steps=3, step_size=0.05).perturbation(x, y, F.cross_entropy)
    assert float(unbounded.abs().max()) <= 3 * 0.05 + 1e-7  # T · step_size without a bound


def test_input_adv_loss_is_the_mix_and_leaves_batchnorm_statistics_as_plain_training() -> None:
    model, (x, y) = net(), batch()
    plain = copy.deepcopy(model)
    plain(x)
    adversary = InputAdversarial(model, steps=2, step_size=0.1, adv_weight=0.25)
    total, pieces = adversary.loss(x, y, F.cross_entropy)
    assert torch.allclose(total, 0.75 * pieces.clean_loss + 0.25 * pieces.adversarial_loss)
    assert pieces.adversarial_loss > pieces.clean_loss
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), plain.state_dict().values()))
    total.backward()
    assert all(p.grad is not None for p in model.parameters())
    off = InputAdversarial(net(), steps=0)
    loss, pieces = off.loss(x, y, F.cross_entropy)
    assert pieces.adversarial_loss is None and torch.equal(loss, F.cross_entropy(net()(x), y))


@pytest.mark.parametrize(
    ("options", "culprit"),
    [({"steps": -1}, "steps"), ({"step_size": 0.0}, "step_size"), ({"eps": -1.0}, "eps"),
     ({"adv_weight": 2.0}, "adv_weight"), ({"bn": "keep"}, "bn")],
)  # fmt: skip
def test_input_adv_bad_options_name_the_culprit(options: dict, culprit: str) -> None:
    with pytest.raises(ValueError, match=culprit):
        InputAdversarial(net(), **options)


def test_harness_input_adv_trains_and_counts_its_passes() -> None:
    from lawn.harness.config import RunConfig
    from lawn.harness.train import train

    tiny = {"dataset": "digits", "model": "resnet", "train_limit": 96, "test_limit": 48, "width": 4, "epochs": 2}
    plain = train(RunConfig.from_dict(tiny))
    row = train(RunConfig.from_dict({**tiny, "method": "input_adv", "afan_steps": 3, "afan_step_size": 0.05}))
    assert row["cost"] == {"passes_per_step": 5}  # clean + 3 attack passes + adversarial
    assert not row["diverged"] and row["history"][-1]["train_loss"] < row["history"][1]["train_loss"] + 1.0
    assert row["history"][-1]["test_loss"] != plain["history"][-1]["test_loss"]


def test_blur_keeps_constants_and_mass_and_smooths_an_impulse() -> None:
    assert float(gaussian_kernel(1.0).sum()) == pytest.approx(1.0) and len(gaussian_kernel(1.0)) == 7
    flat = torch.full((2, 3, 9, 9), -0.8)
    assert torch.allclose(gaussian_blur(flat, 1.5), flat)
    impulse = torch.zeros(1, 1, 15, 15)
    impulse[0, 0, 7, 7] = 1.0
    blurred = gaussian_blur(impulse, 1.0)
    assert float(blurred.sum()) == pytest.approx(1.0, abs=1e-6)
    assert float(blurred.max()) == pytest.approx(float(gaussian_kernel(1.0).max() ** 2), rel=1e-5)
    with pytest.raises(ValueError, match="sigma"):
        gaussian_blur(impulse, 0.0)
    with pytest.raises(ValueError, match="eval_blur_sigma"):
        from lawn.harness.config import RunConfig

        RunConfig(eval_blur_sigma=-1.0)


def test_metric_view_judges_another_metric_and_keeps_the_validation_choice() -> None:
    from lawn.harness.metric_view import view

    rows = [{"key": "k", "config": {"seed": 0}, "val_metric": 0.8, "test_metric": 0.7, "ece": 0.05, "diverged": False}]
    (ece,) = view(rows, "ece", lower_is_better=True)
    assert ece["test_metric"] == -0.05 and ece["val_metric"] == 0.8 and ece["metric"] == "-ece"
    assert ece["key"] == "k:-ece" and rows[0]["test_metric"] == 0.7
    with pytest.raises(ValueError, match="row 1 .*no 'noisy_test_metric'"):
        view(rows, "noisy_test_metric", where="rows")


def test_a_run_with_eval_blur_sigma_reports_the_blurred_test_accuracy() -> None:
    from lawn.harness.config import RunConfig
    from lawn.harness.train import train

    fields = {"dataset": "digits", "train_limit": 120, "test_limit": 60, "width": 4, "epochs": 1}
    row = train(RunConfig.from_dict({**fields, "eval_blur_sigma": 1.0}))
    assert 0.0 <= row["blurred_test_metric"] <= 1.0
    assert "blurred_test_metric" not in train(RunConfig.from_dict(fields))
