"""The dry run's cost estimate: each run left costs the median timing of the written rows of its kind."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lawn.harness.cli import main
from lawn.harness.cost_estimate import estimate_cost


def _row(seconds: float, device: str = "cpu", **config: object) -> dict:
    base = {"dataset": "digits", "model": "mlp", "width": 8, "epochs": 2, "batch_size": 32}
    return {
        "config": {**base, "optimizer": "adam", "method": "plain", **config},
        "timing": {"seconds": seconds, "device": device},
    }


def test_each_run_left_costs_the_median_of_its_kind_and_runs_of_no_known_kind_are_counted_apart() -> None:
    rows = [_row(10.0, lr=1e-3), _row(30.0, lr=1e-2), _row(100.0, lr=1e-1)]  # median 30 whatever the lr
    rows += [_row(4.0, batch_size=1024), _row(6.0, batch_size=1024)]  # median 5
    rows += [_row(999.0, device="cuda:0"), _row(999.0, method="lawn", device="cuda:0")]  # another kind of device
    rows += [{"config": rows[0]["config"], "timing": {}}]  # no timing: ignored
    rows += [_row(50.0, method="wrs")]  # a kind no run left has: not among the rows used
    pending = [
        r["config"] for r in (_row(0, lr=7.0), _row(0, lr=8.0), _row(0, batch_size=1024), _row(0, method="lawn"))
    ]

    estimate = estimate_cost(pending, rows, device="cpu")
    assert (estimate.seconds, estimate.estimated, estimate.unknown, estimate.rows_used) == (65.0, 3, 1, 5)
    on_gpu = estimate_cost(pending, rows, device="cuda:1")  # cuda:1 is timed by cuda:0 rows
    assert (on_gpu.seconds, on_gpu.estimated, on_gpu.unknown) == (2 * 999.0 + 999.0, 3, 1)
    assert "1 run(s) have no such row" in estimate.describe(workers=2) and "≈ 0.0 h" in estimate.describe(2)


def test_sweep_dry_run_prints_the_cost_of_the_runs_left_from_the_rows_written(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    spec = tmp_path / "spec.json"
    grid = {"optimizers": ["adam"], "methods": ["plain"], "batch_sizes": [32], "lrs": [1e-3]}
    base = {"dataset": "digits", "train_limit": 120, "test_limit": 60, "width": 4, "epochs": 1}
    spec.write_text(json.dumps({"base": base, **grid, "seeds": [0]}))
    results = tmp_path / "r.jsonl"
    assert main(["sweep", str(spec), "--results", str(results), "--dry-run", "--jobs", "1"]) == 0
    assert "none of the 1 run(s) left has a written row of its kind" in capsys.readouterr().out
    assert main(["sweep", str(spec), "--results", str(results), "--jobs", "1", "--no-progress"]) == 0
    seconds = json.loads(results.read_text())["timing"]["seconds"]
    spec.write_text(json.dumps({"base": base, **grid, "seeds": [0, 1, 2]}))
    capsys.readouterr()
    assert main(["sweep", str(spec), "--results", str(results), "--dry-run", "--jobs", "2"]) == 0
    out = capsys.readouterr().out
    assert "3 runs, 1 already" in out
    assert f"cost of the 2 run(s) with timed rows of their kind: ≈ {2 * seconds / 3600:.1f} CPU-hours" in out
    assert "with 2 worker(s)" in out and "no such row" not in out
    assert results.read_text().count("\n") == 1  # a dry run trains nothing


def test_a_fresh_seed_of_a_configuration_with_rows_costs_those_rows_not_its_kind() -> None:
    rows = [_row(10.0, lr=1e-3, seed=0), _row(12.0, lr=1e-3, seed=9), _row(600.0, lr=1e-1, seed=0)]  # kind: 12
    pending = [_row(0, lr=1e-1, seed=1)["config"], _row(0, lr=1e-3, seed=2)["config"], _row(0, lr=5.0)["config"]]
    estimate = estimate_cost(pending, rows)
    # lr 0.1 at seed 1 costs its own pilot row (600), lr 1e-3 the median of its two (11), lr 5 the kind's (12)
    assert (estimate.seconds, estimate.estimated, estimate.same_config, estimate.unknown) == (623.0, 3, 2, 0)
    assert "(2 of them by rows of their own configuration at another seed)" in estimate.describe(1)
    on_gpu = estimate_cost(pending, rows, device="cuda")  # rows of another kind of device price nothing
    assert (on_gpu.estimated, on_gpu.same_config, on_gpu.unknown) == (0, 0, 3)


def test_a_row_written_before_a_late_field_existed_still_prices_its_fresh_seeds() -> None:
    from lawn.harness.config import RunConfig

    config = RunConfig.from_dict({"dataset": "digits", "width": 4, "epochs": 1, "lr": 0.3})
    old = {k: v for k, v in config.to_dict().items() if k not in ("eval_every", "memory_format")}  # an older row
    pending = [config.replace(seed=4).to_dict()]
    estimate = estimate_cost(pending, [{"config": old, "timing": {"seconds": 77.0, "device": "cpu"}}])
    assert (estimate.seconds, estimate.same_config) == (77.0, 1)
