"""The lottery report's tables for an IMP-only study (no one-shot arms) and its snapshot correlations: no empty
tables, and each θ_k-vs-θ_T column reads the snapshot it names."""

from __future__ import annotations

from typing import Any

from lawn.harness.lottery_report import markdown

CONFIG = {
    "dataset": "digits",
    "model": "lenet300",
    "optimizer": "sgd",
    "momentum": 0.9,
    "batch_size": 50,
    "epochs": 2,
    "schedule": "cosine",
    "train_limit": None,
}


def _corr(value: float) -> dict[str, Any]:
    return {"global": {"overlap": value, "pearson": value + 0.01, "spearman": value, "cosine": value, "numel": 10}}


def _row(arm: str, seed: int, sparsity: float, test: float, late_steps: int = 7) -> dict[str, Any]:
    lottery = {
        "arm": arm,
        "sparsity": sparsity,
        "scope": "global",
        "rewind_steps": 0,
        "late_rewind_steps": late_steps,
        "finetune_lr_scale": 0.1,
        "correlation_top": 0.2,
        "total_epochs": 2 if arm == "dense" else 4,
    }
    if arm == "dense":  # θ₀ vs θ_T, the rewind snapshot (θ₀ itself here) and the late snapshot θ_7
        correlation = {"initial": _corr(0.40), "rewind": _corr(0.40)}
        if late_steps:
            correlation["late"] = _corr(0.60)
    else:
        correlation = {"start": _corr(0.3)}
    return {
        "config": {**CONFIG, "lr": 0.05, "seed": seed},
        "lottery": lottery,
        "correlation": correlation,
        "test_metric": test,
        "timing": {"seconds": 1.0},
    }


def _rows(late_steps: int = 7) -> list[dict[str, Any]]:
    rows = []
    for seed in (0, 1):
        rows.append(_row("dense", seed, 0.0, 0.90 + seed / 100, late_steps))
        rows.append(_row("imp_ticket", seed, 0.2, 0.89 + seed / 100, late_steps))
    return rows


def test_an_imp_only_study_shows_its_dense_net_and_no_empty_one_shot_table() -> None:
    report = markdown(_rows())
    assert "| arm |  |" not in report and "| paired difference (points) |  |" not in report
    assert "| dense (E epochs) | 0.9050 ± 0.0071 (2) |" in report
    assert "| IMP ticket | 20 % | 0.8950 ± 0.0071 (2) | 4 |" in report
    assert "rewind to step 0, late rewind to step 7, fine-tune" in report
    assert "one-shot" not in report  # no one-shot arm ran, so the report does not describe one


def test_the_late_snapshot_column_reads_theta_k_not_theta_0() -> None:
    report = markdown(_rows())
    header = next(line for line in report.splitlines() if line.startswith("| lr | overlap"))
    assert "overlap (θ_7 vs θ_T, late rewind)" in header and "pearson (θ_7 vs θ_T, late rewind)" in header
    assert "rewind)" not in header.replace("late rewind)", "")  # rewind to step 0 is θ₀: no column of its own
    row = next(line for line in report.splitlines() if line.startswith("| 0.05 |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[1:5] == ["0.400 ± 0.000", "0.410 ± 0.000", "0.400 ± 0.000", "0.400 ± 0.000"]  # θ₀ vs θ_T
    assert cells[5:] == ["0.600 ± 0.000", "0.610 ± 0.000"]  # θ_7 vs θ_T


def test_without_a_late_snapshot_the_table_has_only_theta_0() -> None:
    header = next(line for line in markdown(_rows(late_steps=0)).splitlines() if line.startswith("| lr | overlap"))
    assert header == "| lr | overlap | pearson | spearman | cosine |"
