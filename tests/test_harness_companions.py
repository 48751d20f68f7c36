"""The companion methods in the harness: ``wrs``, ``ssi`` and ``normalization="mimicnorm"`` (tiny data)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

import lawn
import lawn.mimicnorm
from lawn.harness.checked import run_config
from lawn.harness.config import RunConfig
from lawn.harness.methods import METHODS, build_optimizer, constrained_params, ssi_layers
from lawn.harness.models import CNN1D, MLP, NCF, VGG, ResNet
from lawn.harness.results import read_rows
from lawn.harness.sweep import SweepSpec, run_sweep
from lawn.harness.train import train

TINY = {"dataset": "digits", "train_limit": 120, "test_limit": 60, "width": 4, "epochs": 1, "batch_size": 32}
MNIST1D = {
    "dataset": "mnist1d",
    "data_options": {"num_samples": 200},
    "width": 4,
    "epochs": 1,
    "batch_size": 32,
}
RANKING = {
    "dataset": "ranking",
    "data_options": {"users": 40, "items": 60, "positives_per_user": 6, "eval_negatives": 20},
    "width": 4,
    "epochs": 1,
    "batch_size": 64,
}


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one torch thread (conftest.py)


def strip(row: dict) -> dict:
    return {k: v for k, v in row.items() if k not in ("timing", "key", "config", "uses_weight_decay")}


# ---------------------------------------------------------------------------------------------- training
@pytest.mark.parametrize(
    ("method", "fields"),
    [
        ("wrs", TINY),
        ("wrs", {**TINY, "model": "resnet"}),
        ("wrs", MNIST1D),
        ("ssi", TINY),
        ("ssi", {**TINY, "model": "resnet"}),
        ("ssi", RANKING),
    ],
    ids=lambda v: v if isinstance(v, str) else v.get("model", v["dataset"]),
)
def test_new_methods_train(method: str, fields: dict) -> None:
    row = train(RunConfig.from_dict({**fields, "method": method}))
    assert not row["diverged"] and row["epochs_run"] == 1
    assert 0.0 <= row["test_metric"] <= 1.0
    assert row["history"][-1]["train_loss"] > 0 and row["uses_weight_decay"] is False
    assert row["free_steps"] is None and row["history"][-1]["phase"] is None  # LAWN's fields only


def test_wrs_keeps_the_weights_feeding_bn_at_unit_norm() -> None:
    torch.manual_seed(0)
    model = ResNet((1, 8, 8), 10, 4)
    x = torch.randn(16, 1, 8, 8)
    config = RunConfig(**{**TINY, "model": "resnet"}, method="wrs", optimizer="sgd", wrs_every=3)
    opt = build_optimizer(config, model, constrained_params(model, x), 0.1, 30, example_inputs=x)
    assert isinstance(opt, lawn.WRS) and opt.every == 3
    assert all(group["weight_decay"] == 0.0 for group in opt.param_groups)  # no weight decay anywhere
    feeding = dict(lawn.params_feeding_normalization(model, x))
    assert "stages.1.shortcut.0.weight" in feeding and "fc.weight" not in feeding
    fc_before = model.fc.weight.detach().clone()

    def norms() -> list[float]:
        return [float(w.detach().norm()) for w in feeding.values()]

    assert norms() == pytest.approx([1.0] * len(feeding), rel=1e-6)  # rescaled when built
    for step in range(1, 7):
        loss = nn.functional.cross_entropy(model(torch.randn(16, 1, 8, 8)), torch.randint(0, 10, (16,)))
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 3 == 0:
            assert norms() == pytest.approx([1.0] * len(feeding), rel=1e-6)
        else:
            assert max(abs(n - 1.0) for n in norms()) > 1e-4  # drifts in between
    assert not torch.equal(model.fc.weight, fc_before)  # the other weights train freely
    assert float(model.fc.weight.detach().norm()) != pytest.approx(1.0, abs=1e-3)


@pytest.mark.parametrize(
    ("model", "inputs"),
    [
        (MLP((1, 8, 8), 10, 4), torch.randn(4, 1, 8, 8)),
        (ResNet((1, 8, 8), 10, 4), torch.randn(4, 1, 8, 8)),
        (VGG((3, 8, 8), 10, 4), torch.randn(4, 3, 8, 8)),
        (CNN1D((40,), 10, 4), torch.randn(4, 40)),
        (NCF(7, 9, 4), torch.tensor([[0, 1], [6, 8], [3, 3], [1, 0]])),
    ],
    ids=["mlp", "resnet", "vgg", "cnn1d", "ncf"],
)
def test_ssi_penalty_on_every_model(model: nn.Module, inputs: torch.Tensor) -> None:
    config = RunConfig(dataset="digits", method="ssi", ssi_lambda=1e-3)
    penalty = METHODS["ssi"].penalty(model, config)
    layers = [m for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d))]
    assert penalty is not None and torch.isfinite(penalty) and penalty > 0
    if not isinstance(model, ResNet):  # a chain, geometric form: at most λ·Σ‖W‖² (equal when balanced)
        bound = 1e-3 * sum(float(m.weight.detach().norm()) ** 2 for m in layers) * (1 + 1e-6)
        assert float(penalty.detach()) <= bound
    penalty.backward()
    shortcuts = {id(m) for m in model.modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1)}
    for m in layers:  # the ResNet's 1×1 shortcut convs are left out on purpose (ResNet.ssi_layers)
        assert (m.weight.grad is None) == (id(m) in shortcuts)
        assert id(m) in shortcuts or m.weight.grad.norm() > 0
    assert len(shortcuts) == (2 if isinstance(model, ResNet) else 0)
    assert all(p.grad is None for p in model.parameters() if p.dim() < 2)  # biases, BN: not in it
    assert all(m.weight.grad is None for m in model.modules() if isinstance(m, nn.Embedding))
    doubled = METHODS["ssi"].penalty(model, config.replace(ssi_lambda=2e-3))
    assert float(doubled.detach()) == pytest.approx(2 * float(penalty.detach()))
    assert METHODS["ssi"].penalty(model, config.replace(ssi_lambda=0.0)) is None
    model(inputs)  # still a working model


def test_resnet_gives_its_residual_structure_to_the_penalty() -> None:
    model = ResNet((1, 8, 8), 10, 4)
    structure = ssi_layers(model)
    assert isinstance(structure, list) and len(structure) == 5  # stem, 3 residual branches, fc
    assert [type(item).__name__ for item in structure] == ["Conv2d"] + ["ResidualBranch"] * 3 + ["Linear"]
    shortcut = model.stages[1].shortcut[0].weight
    assert all(shortcut is not getattr(layer, "weight", None) for b in structure[1:4] for layer in b.layers)
    # a scale shift inside a branch (conv1 × c, conv2 / c) leaves the penalty unchanged; read as a plain
    # chain of all convs the value would differ
    config = RunConfig(dataset="digits", method="ssi")
    with torch.no_grad():  # values only
        before = float(METHODS["ssi"].penalty(model, config))
        model.stages[0].conv1.weight.mul_(3.0)
        model.stages[0].conv2.weight.div_(3.0)
        assert float(METHODS["ssi"].penalty(model, config)) == pytest.approx(before, rel=1e-5)
        chain = float(config.ssi_lambda * lawn.scale_shift_invariant_penalty(model))
    assert chain != pytest.approx(before, rel=1e-3)
    converted = lawn.convert_to_mimicnorm(model, 10)  # the structure is found through MimicNorm's wrapper
    assert len(ssi_layers(converted)) == 5


def test_ssi_changes_training_and_is_plain_at_lambda_zero() -> None:
    plain = train(RunConfig(**TINY, method="plain"))
    zero = train(RunConfig(**TINY, method="ssi", ssi_lambda=0.0))
    strong = train(RunConfig(**TINY, method="ssi", ssi_lambda=0.1))
    assert strip(zero) == strip(plain)
    assert strong["history"][-1]["train_loss"] != plain["history"][-1]["train_loss"]
    assert strong["history"][-1]["weight_norm"] < plain["history"][-1]["weight_norm"]


# ---------------------------------------------------------------------------------------------- MimicNorm
@pytest.mark.parametrize(("method", "model"), [("plain", "resnet"), ("wd", "vgg"), ("wrs", "resnet"), ("ssi", "vgg")])
def test_mimicnorm_converts_and_centres_after_every_step(
    method: str, model: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[list[torch.Tensor]] = []
    centre = lawn.mimicnorm.center_filters_

    def counting(params):  # noqa: ANN001, ANN202
        calls.append(list(params))
        return centre(params)

    monkeypatch.setattr(lawn.mimicnorm, "center_filters_", counting)
    config = RunConfig(**{**TINY, "epochs": 2}, model=model, method=method, normalization="mimicnorm")
    if method == "wd":
        config = config.replace(weight_decay=1e-3)
    row = train(config)
    assert not row["diverged"] and row["constrained"] == []
    assert row["history"][-1]["constrained_norm"] is None  # no final homogeneous sub-network to log
    assert len(calls) == 1 + row["total_steps"]  # once when attached, then once per training step
    filters = calls[-1]
    assert len(filters) >= 4 and all(w.dim() == 4 for w in filters)
    for w in filters:  # after training, every filter is zero-mean
        assert w.mean(dim=(1, 2, 3)).abs().max() < 1e-6 and w.norm() > 0


def test_mimicnorm_model_has_one_batchnorm_on_the_logits(monkeypatch: pytest.MonkeyPatch) -> None:
    built: list[nn.Module] = []
    convert = lawn.convert_to_mimicnorm
    monkeypatch.setattr(lawn, "convert_to_mimicnorm", lambda m, n: built.append(convert(m, n)) or built[-1])
    bn = train(RunConfig(**TINY, model="resnet"))
    mimic = train(RunConfig(**TINY, model="resnet", normalization="mimicnorm"))
    (model,) = built
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    assert norms == [model.last_bn] and model.last_bn.num_features == 10
    assert bn["constrained"] == ["fc.weight"] and mimic["constrained"] == []
    assert mimic["history"][-1]["train_loss"] != bn["history"][-1]["train_loss"]
    assert mimic["key"] != bn["key"]


# ---------------------------------------------------------------------------------------------- validation
@pytest.mark.parametrize(
    ("fields", "match"),
    [
        ({"method": "lawn", "normalization": "mimicnorm"}, "method: 'lawn' .*normalization='mimicnorm'"),
        ({**RANKING, "normalization": "mimicnorm"}, "normalization: 'mimicnorm' .* model 'ncf'"),
        ({"normalization": "layernorm"}, "normalization: expected one of"),
        ({"method": "wrs", "wrs_every": 0}, "wrs_every: must be >= 1"),
        ({"method": "ssi", "ssi_lambda": -1e-4}, "ssi_lambda: must be a finite number >= 0"),
        ({"method": "ssi", "ssi_lambda": float("nan")}, "ssi_lambda: must be a finite number >= 0"),
        ({"method": "wrs", "weight_decay": 1e-4}, "weight_decay: method 'wrs' trains without"),
        ({"method": "ssi", "weight_decay": 1e-4}, "weight_decay: method 'ssi' trains without"),
    ],
)
def test_bad_companion_fields_are_named(fields: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        run_config({"dataset": "digits", **fields})


def test_lawn_with_mimicnorm_is_refused_by_a_sweep_spec() -> None:
    spec = {
        **SWEEP,
        "methods": ["plain", "lawn"],
        "vary": {"normalization": ["bn", "mimicnorm"]},
        "grids": {},
    }
    with pytest.raises(ValueError, match="method: 'lawn' .*normalization='mimicnorm'"):
        SweepSpec.from_dict(spec)


# ---------------------------------------------------------------------------------------------- sweeps
SWEEP = {
    "base": {k: v for k, v in TINY.items() if k != "batch_size"},
    "optimizers": ["sgd", "adam"],
    "methods": ["plain", "wd", "wrs", "ssi", "lawn"],
    "batch_sizes": [32],
    "lrs": {"sgd": [0.1], "adam": [1e-3]},
    "weight_decays": {"sgd": [1e-3], "adam": [1e-4]},
    "seeds": [0, 1],
    "grids": {
        "wrs": {"wrs_every": [1, 4]},
        "ssi": {"ssi_lambda": {"sgd": [5e-4], "adam": [5e-5]}},
        "lawn": {"free_fraction": [0.3]},
    },
}


def test_sweep_and_report_with_every_method(tmp_path: Path) -> None:
    from lawn.harness.report import write_report

    spec = SweepSpec.from_dict(SWEEP)
    assert spec.tuned_axes("sgd", "ssi") == {"lr": (0.1,), "ssi_lambda": (5e-4,)}
    assert spec.tuned_axes("adam", "ssi") == {"lr": (1e-3,), "ssi_lambda": (5e-5,)}
    assert spec.tuned_axes("adam", "wrs") == {"lr": (1e-3,), "wrs_every": (1, 4)}
    path = tmp_path / "results.jsonl"
    assert run_sweep(spec, path) == {"done": 24, "skipped": 0, "total": 24}  # 2 seeds × 2 × (1+1+2+1+1)
    rows = read_rows(path)
    assert {r["config"]["method"] for r in rows} == set(SWEEP["methods"])
    write_report(rows, tmp_path / "report")
    text = (tmp_path / "report" / "report.md").read_text()
    assert text.count("## ") == 1  # one panel: the methods' own fields are tuned or irrelevant
    for optimizer in ("sgd", "adam"):
        for method in SWEEP["methods"]:
            assert f"| {optimizer} | {method} |" in text
    assert "| sgd | wrs | 32 | 2 |" in text and "| adam | ssi | 32 | 1 | lr=0.001, ssi_lambda=5e-05 |" in text


def test_normalizations_are_separate_panels(tmp_path: Path) -> None:
    from lawn.harness.report import write_report

    spec = SweepSpec.from_dict(
        {**SWEEP, "methods": ["plain", "wd"], "grids": {}, "vary": {"normalization": ["bn", "mimicnorm"]}}
    )
    runs = spec.expand()
    assert len(runs) == 2 * 2 * 2 * 2  # seeds × normalizations × optimizers × methods (one point each)
    assert [c.normalization for c, _ in runs[:4]] == ["bn"] * 4  # seeds outermost, then vary
    assert all(tuned in (["lr"], ["lr", "weight_decay"]) for _, tuned in runs)  # vary is not tuned
    path = tmp_path / "results.jsonl"
    run_sweep(spec, path)
    written = write_report(read_rows(path), tmp_path / "report")
    text = written[0].read_text()
    assert "## 1. digits / mlp (normalization=bn)" in text
    assert "## 2. digits / mlp (normalization=mimicnorm)" in text
    assert {p.name for p in written} >= {"accuracy_vs_batch_2_digits_mlp.png", "norms_2_digits_mlp.png"}
    for section in text.split("## ")[1:]:  # each cell averages the 2 seeds of its own normalization only
        assert section.count("(2) |") == 4 and "(4)" not in section


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"vary": {"normalization": []}}, "vary.normalization: expected a non-empty list"),
        ({"vary": {"lr": [0.1]}}, "vary.lr: already set"),
        (
            {"vary": {"normalization": ["bn"]}, "base": {**SWEEP["base"], "normalization": "bn"}},
            "vary.normalization",
        ),
        ({"vary": ["normalization"]}, "'vary' must map"),
        ({"vary": {"colour": ["red"]}}, r"unknown field\(s\) \['colour'\]"),
        ({"grids": {"ssi": {"ssi_lambda": {"sgd": [1e-4]}}}}, r"grids.ssi.ssi_lambda: no list for .*adam"),
        ({"grids": {"wrs": {"wrs_every": [0]}}}, "wrs_every: must be >= 1"),
    ],
)
def test_bad_vary_and_grids_are_named(change: dict, match: str) -> None:
    with pytest.raises((ValueError, TypeError), match=match):
        SweepSpec.from_dict({**SWEEP, **change})


def test_rows_written_before_the_new_fields_select_with_new_ones() -> None:
    from lawn.harness.selection import select

    new = train(RunConfig(**TINY, method="plain"))
    old = {
        **new,
        "config": {k: v for k, v in new["config"].items() if k not in ("normalization", "ssi_lambda")},
    }
    old["config"]["seed"] = 1
    (s,) = select([{**new, "tuned": ["lr"]}, {**old, "tuned": ["lr"]}])
    assert s.seeds == 2 and s.setting["normalization"] == "bn"
