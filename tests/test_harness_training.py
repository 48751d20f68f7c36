"""Models, optimizers, methods and one training run (tiny data, one or two epochs)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import lawn
from lawn.harness import methods
from lawn.harness.checked import checked
from lawn.harness.config import RunConfig
from lawn.harness.methods import build_optimizer, constrained_params
from lawn.harness.models import CNN1D, MLP, NCF, VGG, ResNet
from lawn.harness.train import train

TINY = {"dataset": "digits", "train_limit": 120, "test_limit": 60, "width": 4, "epochs": 2, "batch_size": 32}


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one torch thread (conftest.py)


@pytest.mark.parametrize(
    ("model", "inputs", "shape", "tail"),
    [
        (MLP((1, 8, 8), 10, 4), torch.randn(4, 1, 8, 8), (4, 10), ["head.weight"]),
        (ResNet((1, 28, 28), 10, 4), torch.randn(4, 1, 28, 28), (4, 10), ["fc.weight"]),
        (
            VGG((3, 32, 32), 10, 4),
            torch.randn(4, 3, 32, 32),
            (4, 10),
            ["classifier.0.weight", "classifier.2.weight"],
        ),
        (CNN1D((40,), 10, 4), torch.randn(4, 40), (4, 10), ["fc.weight"]),
        (NCF(7, 9, 4), torch.tensor([[0, 1], [6, 8], [3, 3], [1, 0]]), (4,), ["head.weight"]),
    ],
)
def test_models_and_their_final_homogeneous_weights(model: nn.Module, inputs, shape, tail) -> None:
    assert model(inputs).shape == shape
    names = [name for name, _ in constrained_params(model, inputs)]
    assert names == tail


@pytest.mark.parametrize("optimizer", ["sgd", "adam", "adamw", "lamb", "lars"])
@pytest.mark.parametrize("method", ["plain", "wd", "lawn"])
def test_every_optimizer_and_method_builds_and_steps(optimizer: str, method: str) -> None:
    config = RunConfig(
        dataset="digits", optimizer=optimizer, method=method, weight_decay=0.1 if method == "wd" else 0.0
    )
    model = MLP((4,), 3, 2)
    inputs = torch.randn(2, 4)
    tail = constrained_params(model, inputs)
    opt = build_optimizer(
        config.replace(free_fraction=0.0), model, tail, lr=0.05, total_steps=10, example_inputs=inputs
    )
    assert isinstance(opt, lawn.LAWN) == (method == "lawn")
    assert opt.param_groups[0]["weight_decay"] == (0.1 if method == "wd" else 0.0)
    before = model.head.weight.norm().item()
    for _ in range(3):
        loss = model(torch.randn(8, 4)).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    if method == "lawn":
        assert opt.phase == "constrained"
        assert model.head.weight.norm().item() == pytest.approx(before, rel=1e-5)


@pytest.mark.parametrize("optimizer", ["sgd", "adam", "adamw", "adamp"])
def test_fused_base_takes_torchs_fused_kernel_where_there_is_one(optimizer: str) -> None:
    model = MLP((4,), 3, 2)
    config = RunConfig(dataset="digits", optimizer=optimizer, fused_base=True)
    opt = build_optimizer(config, model, [], lr=0.05, total_steps=10, example_inputs=torch.randn(2, 4))
    assert opt.defaults.get("fused", None) is (True if optimizer in ("sgd", "adam", "adamw") else None)
    assert build_optimizer(config.replace(fused_base=False), model, [], lr=0.05, total_steps=10,
                           example_inputs=torch.randn(2, 4)).defaults.get("fused") is None  # fmt: skip


@pytest.mark.parametrize(
    ("optimizer", "method", "rel"), [("sgd", "wd", 1e-5), ("sgd", "lawn_all", 1e-5), ("adam", "plain", 1e-2)]
)
def test_a_fused_base_run_agrees_with_the_default_one(optimizer: str, method: str, rel: float) -> None:
    # SGD: to rounding. Adam: a bias feeding BN has a gradient at the level of rounding noise, which Adam divides
    # by its own root mean square, so two summation orders step it by up to ±lr; that moves the rest a little
    decay = 1e-3 if method == "wd" else 0.0
    config = RunConfig(**TINY, optimizer=optimizer, method=method, weight_decay=decay, free_fraction=0.25)
    default, fused = train(config), train(config.replace(fused_base=True))
    assert fused["key"] != default["key"] and fused["config"]["fused_base"] is True
    for a, b in zip(default["history"][1:], fused["history"][1:], strict=True):  # [0]: before training
        assert b["train_loss"] == pytest.approx(a["train_loss"], rel=rel)
        assert b["constrained_norm"] == pytest.approx(a["constrained_norm"], rel=rel)
        assert b["logit_norm"] == pytest.approx(a["logit_norm"], rel=rel)


@pytest.mark.parametrize("granularity", ["tensor", "row"])
def test_wrs_rescales_per_tensor_or_per_output_unit(granularity: str) -> None:
    model = MLP((6,), 3, 8)
    inputs = torch.randn(16, 6)
    config = RunConfig(dataset="digits", optimizer="sgd", method="wrs", granularity=granularity)
    opt = build_optimizer(config, model, [], lr=0.5, total_steps=10, example_inputs=inputs)
    for _ in range(3):
        opt.zero_grad()
        model(inputs).square().mean().backward()
        opt.step()
    feeding = [m.weight for m in model.modules() if isinstance(m, nn.Linear)][:-1]  # the head feeds no BN
    for w in feeding:
        norms = w.detach().norm(dim=1) if granularity == "row" else w.detach().norm().reshape(1)
        torch.testing.assert_close(norms, torch.ones_like(norms))


def test_lawn_free_steps_follow_free_fraction() -> None:
    config = RunConfig(**TINY, method="lawn", free_fraction=0.25)
    assert methods.free_steps(config, 40) == 10
    row = train(config)
    # 108 training examples, batch 32 → 4 steps per epoch (last batch 12), 2 epochs
    assert row["steps_per_epoch"] == 4 and row["total_steps"] == 8 and row["free_steps"] == 2
    norms = [h["constrained_norm"] for h in row["history"]]
    assert norms[1] == pytest.approx(norms[2], rel=1e-5)  # frozen after step 2
    assert [h["phase"] for h in row["history"]] == ["free", "constrained", "constrained"]


def test_train_is_deterministic_and_logs_diagnostics() -> None:
    config = RunConfig(**TINY, method="wd", weight_decay=1e-3)
    a, b = train(config), train(config)
    strip = lambda r: {k: v for k, v in r.items() if k != "timing"}
    assert strip(a) == strip(b)
    assert a["key"] == checked(config).key() and a["metric"] == "accuracy" and len(a["history"]) == 3
    entry = a["history"][-1]
    for name in ("train_loss", "train_accuracy", "val_metric", "test_metric", "test_loss", "logit_norm"):
        assert isinstance(entry[name], float), name
    assert entry["constrained_norms"].keys() == {"head.weight"}
    assert entry["weight_norm"] > entry["constrained_norm"] > 0
    assert train(config.replace(seed=1))["history"][-1]["train_loss"] != entry["train_loss"]


def test_ranking_run_reports_hit_rate_and_auc() -> None:
    options = {"users": 40, "items": 60, "positives_per_user": 6, "eval_negatives": 20}
    row = train(RunConfig(dataset="ranking", data_options=options, width=4, epochs=1, batch_size=64, method="lawn"))
    assert row["metric"] == "hr@10" and 0.0 <= row["test_metric"] <= 1.0 and 0.0 <= row["test_auc"] <= 1.0
    assert row["constrained"] == ["head.weight"] or getattr(lawn, "final_homogeneous_params", None)


@pytest.mark.parametrize("method", ["plain", "lawn"])
def test_diverging_run_is_marked(method: str) -> None:
    # LAWN's switch comes after the blow-up here: it refuses to freeze a NaN norm, which ends the run too
    config = RunConfig(**TINY, optimizer="sgd", lr=1e10, warmup_fraction=0.0, schedule="constant", method=method)
    row = train(config.replace(free_fraction=0.5))
    assert row["diverged"] and row["val_metric"] is None and row["test_metric"] is None
    assert row["epochs_run"] == 1 and row["history"][-1]["train_loss"] is None


def test_unavailable_device_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match="CUDA is not available"):
        train(RunConfig(**TINY, device="cuda"))
