"""Harness pieces of the study "LAWN as the paper runs it": lawn_all, lawn_auto, the three-phase schedule field,
the normalization-free VGG, and the per-epoch tangential step."""

import pytest
import torch

import lawn
from lawn.harness.config import RunConfig
from lawn.harness.datasets import load_data
from lawn.harness.methods import build_optimizer, constrained_params
from lawn.harness.models import CNN1D, MODELS, VGGNoNorm, build_model
from lawn.harness.train import train

TINY = {"dataset": "digits", "train_limit": 160, "test_limit": 60, "width": 4, "epochs": 3, "batch_size": 32}


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one torch thread (conftest.py)


def test_vgg_without_normalization_is_homogeneous_all_the_way():
    model = VGGNoNorm((1, 8, 8), 10, 4)
    tail = [name for name, _ in lawn.final_homogeneous_params(model, torch.randn(2, 1, 8, 8))]
    assert len(tail) == 6 and tail == [name for name, _ in lawn.all_layer_weights(model)]


def test_cnn1d_without_normalization_is_homogeneous_all_the_way():
    model = MODELS["cnn1d_nonorm"].build((40,), 10, 4)
    assert not any(isinstance(m, torch.nn.BatchNorm1d) for m in model.modules())
    assert all(getattr(m, "bias", None) is None for m in model.modules() if isinstance(m, torch.nn.Conv1d))
    tail = [name for name, _ in lawn.final_homogeneous_params(model, torch.randn(2, 40))]
    assert len(tail) == 4 and tail == [name for name, _ in lawn.all_layer_weights(model)]
    # the BN model's tail is the classifier only
    bn_tail = lawn.final_homogeneous_params(CNN1D((40,), 10, 4), torch.randn(2, 40))
    assert [name for name, _ in bn_tail] == ["fc.weight"]


@pytest.mark.parametrize("method", ["lawn", "lawn_all", "lawn_auto"])
def test_lawn_methods_train_with_the_three_phase_schedule(method):
    # lr 0.1 and auto_threshold 0.9: in 15 steps the norms' growth slows only a little, so this makes it fire
    fields = {**TINY, "method": method, "rewarmup_fraction": 0.2, "auto_checks": 5, "auto_threshold": 0.9, "lr": 0.1}
    config = RunConfig.from_dict(fields)
    row = train(config)
    assert not row["diverged"] and row["switch_step"] is not None
    s, total = row["switch_step"], row["total_steps"]
    if method == "lawn_auto":
        assert s % (total // 5) == 0 and row["free_steps"] is None
    else:
        assert s == row["free_steps"] == round(0.2 * total)
    lrs = [h["lr"] for h in row["history"][1:]]
    assert lrs[-1] < 0.06 * config.lr  # decayed to ~0 at the end
    assert all(h["tangential_step"] is not None and h["tangential_step"] > 0 for h in row["history"][1:])


@pytest.mark.parametrize(("method", "expected"), [("lawn", ["head.weight"]), ("lawn_all", None)])
def test_all_layers_constrains_the_body_too(method, expected):
    config = RunConfig.from_dict({**TINY, "method": method})
    model = build_model("mlp", load_data(config), config.width)
    tail = constrained_params(model, torch.randn(4, 64))
    opt = build_optimizer(config, model, tail, 1e-3, 10, example_inputs=torch.randn(4, 64))
    names = [name for name, _ in opt.constrained_parameters]
    assert names == (expected or [name for name, _ in lawn.all_layer_weights(model)])
    assert len(names) == (1 if method == "lawn" else 3)


def test_new_fields_keep_old_keys_and_are_checked():
    old = RunConfig.from_dict(TINY)
    assert old.key() == RunConfig.from_dict({**TINY, "rewarmup_fraction": 0.0, "auto_threshold": 0.3}).key()
    assert old.key() != RunConfig.from_dict({**TINY, "rewarmup_fraction": 0.05}).key()
    with pytest.raises(ValueError, match="rewarmup_fraction"):
        RunConfig.from_dict({**TINY, "rewarmup_fraction": 0.1, "schedule": "step"})
    with pytest.raises(ValueError, match="auto_threshold"):
        RunConfig.from_dict({**TINY, "auto_threshold": 1.0})


@pytest.mark.parametrize("baseline", ["plain", "wd", "wrs"])
def test_schedule_control_gives_a_baseline_lawns_learning_rates_step_by_step(baseline):
    """``rewarmup_all``: a method without a switch re-warms up where LAWN (same ``free_fraction``) switches."""
    from lawn.harness.schedule import build_scheduler

    fields = {**TINY, "rewarmup_fraction": 0.2, "rewarmup_all": True, "free_fraction": 0.3, "lr": 0.1}
    total = 40
    lrs = {}
    for method in ("lawn", baseline):
        extra = {"weight_decay": 1e-4} if method == "wd" else {}
        config = RunConfig.from_dict({**fields, "method": method, **extra})
        model = build_model("mlp", load_data(config), config.width)
        x = torch.randn(4, 64)
        opt = build_optimizer(config, model, constrained_params(model, x), config.lr, total, example_inputs=x)
        scheduler = build_scheduler(opt, config, total)
        seen = []
        for _ in range(total):
            seen.append(opt.param_groups[0]["lr"])
            opt.step()  # no gradients: only the schedule and LAWN's step counter move
            scheduler.step()
        lrs[method] = seen
    assert lrs[baseline] == lrs["lawn"]
    switch = round(0.3 * total)
    assert lrs[baseline][switch] == pytest.approx(0.1 * (0.1 + 0.9 / round(0.2 * total)))  # the re-warm-up starts
    plain = RunConfig.from_dict({**fields, "method": baseline, "rewarmup_all": False, **extra})
    assert plain.key() != RunConfig.from_dict({**fields, "method": baseline, **extra}).key()


def test_schedule_control_is_checked_and_keeps_old_keys():
    assert RunConfig.from_dict(TINY).key() == RunConfig.from_dict({**TINY, "rewarmup_all": False}).key()
    with pytest.raises(ValueError, match="rewarmup_all.*rewarmup_fraction > 0"):
        RunConfig.from_dict({**TINY, "rewarmup_all": True})


def test_adamp_is_a_base_optimizer_of_the_harness():
    row = train(RunConfig.from_dict({**TINY, "optimizer": "adamp", "method": "wd", "weight_decay": 1e-2}))
    assert not row["diverged"] and row["history"][-1]["train_loss"] < row["history"][1]["train_loss"]
