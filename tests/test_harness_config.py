"""Run configs are data: parsed from JSON/TOML, checked field by field, identified by a stable key."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from lawn.harness.checked import checked, load_run_config, run_config
from lawn.harness.config import RunConfig, load_mapping, parse_assignment
from lawn.harness.schedule import lr_factor, scaled_lr


def test_defaults_resolve_the_model_per_dataset() -> None:
    assert checked(RunConfig(dataset="digits")).model == "mlp"
    assert checked(RunConfig(dataset="mnist1d")).model == "cnn1d"
    assert checked(RunConfig(dataset="ranking")).model == "ncf"
    assert checked(RunConfig(dataset="digits", model="vgg")).model == "vgg"
    assert RunConfig(dataset="digits").model == "auto"  # the plain data is not resolved until it is checked


def test_key_ignores_only_the_device() -> None:
    a = run_config({"dataset": "digits", "lr": 0.01})
    assert a.key() == RunConfig.from_dict(a.to_dict()).key() == a.replace(device="cuda:1").key()
    assert a.key() != a.replace(seed=1).key() != a.replace(lr=0.02).key()
    assert a.key() == checked(RunConfig(dataset="digits", lr=0.01, model="auto")).key()


def test_fields_added_later_keep_earlier_keys_at_their_default() -> None:
    # keys computed before normalization / wrs_every / ssi_lambda existed (commit 4fc2b93)
    assert run_config({"dataset": "digits", "lr": 0.01}).key() == "4d62fa55b0335e2504a3"
    study = run_config(
        dict(
            dataset="mnist1d",
            method="lawn",
            optimizer="sgd",
            lr=0.03,
            free_fraction=0.1,
            batch_size=64,
            epochs=20,
            data_options={"num_samples": 10000},
        )
    )
    assert study.key() == "6e67af157abb745403e7"
    plain = study.replace(method="plain")  # away from its default, a new field is in the key
    for change in ({"normalization": "mimicnorm"}, {"wrs_every": 2}, {"ssi_lambda": 0.0}):
        assert plain.replace(**change).key() != plain.key()


@pytest.mark.parametrize(
    ("fields", "error", "match"),
    [
        ({"nonsense": 1}, ValueError, r"unknown field\(s\) \['nonsense'\]"),
        ({"epochs": 2.5}, TypeError, "epochs: expected an integer"),
        ({"epochs": True}, TypeError, "epochs: expected an integer"),
        ({"lr": "fast"}, TypeError, "lr: expected a number"),
        ({"project_gradient": 1}, TypeError, "project_gradient: expected true/false"),
        ({"lr": -1.0}, ValueError, "lr: must be a finite number > 0"),
        ({"lr": math.inf}, ValueError, "lr: must be a finite number > 0"),
        ({"dataset": "imagenet"}, ValueError, "dataset: unknown 'imagenet'"),
        ({"model": "transformer"}, ValueError, "model: unknown 'transformer'"),
        ({"model": "cnn1d"}, ValueError, "cannot read dataset 'digits'"),
        ({"model": "ncf"}, ValueError, "'ncf' is for ranking"),
        ({"optimizer": "adagrad"}, ValueError, "optimizer: unknown 'adagrad'"),
        ({"method": "magic"}, ValueError, "method: unknown 'magic'"),
        ({"method": "lawn", "weight_decay": 0.1}, ValueError, "weight_decay: method 'lawn' trains without"),
        ({"val_fraction": 1.0}, ValueError, "val_fraction"),
        ({"free_fraction": 1.5}, ValueError, "free_fraction"),
        ({"granularity": "column"}, ValueError, "granularity"),
        ({"schedule": "linear"}, ValueError, "schedule"),
        ({"lr_scaling": "cubic"}, ValueError, "lr_scaling"),
        ({"step_milestones": [0.8, 0.5]}, ValueError, "step_milestones"),
        ({"device": "tpu"}, ValueError, "device"),
        ({"batch_size": 0}, ValueError, "batch_size: must be >= 1"),
    ],
)
def test_bad_fields_are_named(fields: dict, error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        run_config({"dataset": "digits", **fields})


def test_configs_load_from_json_and_toml(tmp_path: Path) -> None:
    (tmp_path / "a.json").write_text(json.dumps({"dataset": "digits", "lr": 0.1, "step_milestones": [0.3]}))
    (tmp_path / "a.toml").write_text('dataset = "digits"\nlr = 0.1\nstep_milestones = [0.3]\n')
    assert load_run_config(tmp_path / "a.json") == load_run_config(tmp_path / "a.toml")
    assert load_run_config(tmp_path / "a.json").step_milestones == (0.3,)
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ValueError, match="bad.json: cannot parse"):
        load_mapping(tmp_path / "bad.json")
    (tmp_path / "a.yaml").write_text("dataset: digits")
    with pytest.raises(ValueError, match="use .json or .toml"):
        load_mapping(tmp_path / "a.yaml")
    with pytest.raises(FileNotFoundError, match="config file not found"):
        load_mapping(tmp_path / "missing.json")
    (tmp_path / "list.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match="top level"):
        load_mapping(tmp_path / "list.json")


def test_assignments_are_json_or_strings() -> None:
    assert parse_assignment("lr=0.5") == ("lr", 0.5)
    assert parse_assignment("method=lawn") == ("method", "lawn")
    assert parse_assignment('data_options={"num_samples": 300}') == ("data_options", {"num_samples": 300})
    assert parse_assignment("project_gradient=false") == ("project_gradient", False)
    with pytest.raises(ValueError, match="expected key=value"):
        parse_assignment("lr")


def test_schedule_warmup_cosine_step() -> None:
    assert [lr_factor(t, 100, 4, "cosine") for t in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert lr_factor(4, 100, 4, "cosine") == 1.0
    assert lr_factor(52, 100, 4, "cosine") == pytest.approx(0.5)
    assert lr_factor(99, 100, 0, "cosine") == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.99)))
    steps = [lr_factor(t, 100, 0, "step", (0.5, 0.75), 0.1) for t in (0, 49, 50, 74, 75, 99)]
    assert steps == pytest.approx([1, 1, 0.1, 0.1, 0.01, 0.01])
    assert lr_factor(50, 100, 10, "constant") == 1.0


def test_batch_size_scaling_rule() -> None:
    base = RunConfig(dataset="digits", lr=0.1, batch_size=512, base_batch_size=128)
    assert scaled_lr(base) == pytest.approx(0.1)
    assert scaled_lr(base.replace(lr_scaling="linear")) == pytest.approx(0.4)
    assert scaled_lr(base.replace(lr_scaling="sqrt")) == pytest.approx(0.2)
