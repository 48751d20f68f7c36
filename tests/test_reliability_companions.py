"""Reliability, companions and the report (issue 12, items 21-22)."""

import json
import shutil
from pathlib import Path

import torch
from torch import nn

import lawn
from lawn.harness.cli import main


def test_item21_ssi_penalty_has_a_finite_gradient_at_a_zero_weight():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    nn.init.zeros_(model[2].weight)  # a zero-initialised head
    for form in ("geometric", "product"):
        model.zero_grad()
        penalty = lawn.scale_shift_invariant_penalty(model, form=form)
        penalty.backward()
        assert penalty.item() == 0.0
        assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_item21_mimicnorm_of_a_float64_model_stays_float64():
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.ReLU(), nn.Linear(4, 2)).double()
    converted = lawn.convert_to_mimicnorm(model, num_classes=2)
    assert converted.last_bn.running_mean.dtype == torch.float64
    assert converted(torch.randn(5, 3, dtype=torch.float64)).dtype == torch.float64


def test_item22_report_counts_shared_runs_once_and_refuses_rows_without_config(tmp_path: Path, capsys):
    spec = tmp_path / "spec.json"
    base = {"dataset": "digits", "train_limit": 60, "test_limit": 30, "width": 4, "epochs": 1}
    spec.write_text(
        json.dumps(
            {"base": base, "optimizers": ["adam"], "methods": ["plain"], "batch_sizes": [32], "lrs": [1e-3],
             "seeds": [0, 1, 2]}
        )
    )  # fmt: skip
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    assert main(["sweep", str(spec), "--results", str(a), "--no-progress", "--threads", "1"]) == 0
    shutil.copy(a, b)  # the workflow of docs/harness.md: a file and a copy that shares its runs
    capsys.readouterr()
    assert main(["report", str(a), str(b), "--out", str(tmp_path / "r")]) == 0
    text = capsys.readouterr().out
    assert "(3 runs)" in text and " (3) |" in text and "(6" not in text  # was 6 runs, 6 seeds
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"key": "k1", "final": {}}) + "\n")
    assert main(["report", str(bad), "--out", str(tmp_path / "r2")]) == 2  # was a traceback, exit 1
    assert "lawn report: error: result row 'k1'" in capsys.readouterr().err
