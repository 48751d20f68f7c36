"""lawn.harness.nested_runs: a nested run gives one row per width with the metrics and the ordering's history,
narrow nets are evaluated at their own width, specs expand and a pilot's choice restricts them."""

from __future__ import annotations

import json
from typing import Any

import pytest

from lawn.harness.config import RunConfig
from lawn.harness.nested_runs import EVAL_WIDTHS, NestedSpec, build_cnn, nested_data, pilot_selected, train_nested

TINY = {"dataset": "digits", "width": 4, "epochs": 2, "batch_size": 64, "lr": 0.003}


@pytest.fixture(scope="module")
def splits():
    return nested_data(RunConfig.from_dict(TINY))


def test_held_out_classes_are_the_ood_set(splits) -> None:
    assert splits.classes == 8 and int(splits.y_train.max()) == 7 and int(splits.y_test.max()) == 7
    assert len(splits.x_ood) > 0 and len(splits.y_val) > 0


def test_learned_run_gives_a_row_per_width_with_metrics_and_keep_probabilities(splits) -> None:
    rows = train_nested(RunConfig.from_dict({**TINY, "nested_arm": "learned", "nested_kl_weight": 0.0}), splits)
    assert [r["config"]["eval_width"] for r in rows] == list(EVAL_WIDTHS) and len(rows) == 8
    assert len({r["key"] for r in rows}) == 8 and len({r["run_key"] for r in rows}) == 1
    for r in rows:
        assert 0 <= r["test_metric"] <= 1 and 0 <= r["ece"] <= 1 and r["nll"] > 0 and 0 <= r["auroc"] <= 1
    assert rows[-1]["test_metric"] > 0.3 and rows[-1]["test_metric"] >= rows[0]["test_metric"]
    history = rows[0]["history"]
    assert len(history) == 3 and [len(layer) for layer in history[0]["keep_probabilities"]] == [8, 8, 8]
    prior = history[0]["keep_probabilities"][0]
    assert prior[0] == 1.0 and prior[1] == pytest.approx(0.7) and prior[2] == pytest.approx(0.49, abs=1e-6)
    assert history[-1]["keep_probabilities"] != history[0]["keep_probabilities"]  # learned: it moves
    assert "mc" in rows[-1] and set(rows[-1]["speed"]) == {f"{w:g}" for w in EVAL_WIDTHS}
    assert "mc" not in rows[0]


def test_fixed_rate_dropout_keeps_its_prior_and_a_narrow_net_is_one_row(splits) -> None:
    rows = train_nested(RunConfig.from_dict({**TINY, "nested_arm": "dropout", "nested_rate": 0.2}), splits)
    assert all(h["keep_probabilities"] == rows[0]["history"][0]["keep_probabilities"] for h in rows[0]["history"])
    assert rows[0]["history"][1]["kl"] == 0.0
    narrow = RunConfig.from_dict({**TINY, "nested_arm": "narrow", "nested_fraction": 0.25, "eval_width": 0.25})
    (row,) = train_nested(narrow, splits)
    assert row["config"]["eval_width"] == 0.25 and row["history"][0]["keep_probabilities"] == []
    model = build_cnn(narrow, (1, 8, 8), 8)
    assert model[0][0].out_channels == 2 and model[7].out_features == 8  # 8 · 0.25, 32 · 0.25


@pytest.mark.parametrize(
    ("fields", "culprit"),
    [({"nested_arm": "wide"}, "nested_arm"), ({"nested_rate": 1.0}, "nested_rate"),
     ({"nested_kl_weight": -1.0}, "nested_kl_weight"), ({"eval_width": 0.0}, "eval_width")],
)  # fmt: skip
def test_bad_nested_fields_name_the_culprit(fields: dict, culprit: str) -> None:
    with pytest.raises(ValueError, match=culprit):
        RunConfig.from_dict({**TINY, **fields})


def test_nested_fields_keep_earlier_keys() -> None:
    from lawn.harness.checked import run_config

    assert run_config({"dataset": "digits", "lr": 0.01}).key() == "4d62fa55b0335e2504a3"


SPEC = """
seeds = [0, 1]
base = {dataset = "digits", width = 4, epochs = 1}
[arms.learned]
nested_arm = "learned"
tune = {nested_kl_weight = [0.1, 1.0]}
[arms.narrow]
nested_arm = "narrow"
tune = {lr = [0.001, 0.003]}
vary = {nested_fraction = [0.5, 1.0]}
[[compare]]
name = "learned vs narrow"
a = {nested_arm = "learned"}
b = {nested_arm = "narrow"}
by = ["eval_width"]
margin = 0.01
"""


def test_spec_expands_and_a_pilot_keeps_the_best_point_for_every_width(tmp_path) -> None:
    path = tmp_path / "spec.toml"
    path.write_text(SPEC)
    runs = NestedSpec.load(path).expand()
    assert len(runs) == 2 * (2 + 2 * 2)
    narrow = [c for c, _ in runs if c.nested_arm == "narrow"]
    assert all(c.eval_width == c.nested_fraction for c in narrow)

    def row(config: RunConfig, val: float) -> dict:
        return {"config": config.to_dict(), "val_metric": val, "diverged": False}

    pilot = [row(c, 0.9 if c.nested_kl_weight == 0.1 or c.lr == 0.003 else 0.5) for c, _ in runs if c.seed == 0]
    chosen = pilot_selected(runs, json.loads(json.dumps(pilot)))
    assert {(c.nested_arm, c.nested_kl_weight, c.lr) for c, _ in chosen} == {
        ("learned", 0.1, 0.001),
        ("narrow", 1.0, 0.003),
    }
    assert len(chosen) == 2 * 3
    with pytest.raises(ValueError, match="pilot covered 1 of the grid's 2 points"):
        pilot_selected(runs, pilot[1:])
    path.write_text(SPEC.replace('nested_arm = "narrow"', 'nested_arm = "narrow"\nepochs = 3', 1))
    with pytest.raises(ValueError, match="arms.narrow"):
        NestedSpec.load(path)


def test_ordering_table_reports_how_far_the_keep_probabilities_moved(tmp_path) -> None:
    from lawn.harness.nested_plots import plot, table

    def row(width: float, last: list[float]) -> dict:
        history = [{"keep_probabilities": [[1.0, 0.8, 0.64]]}, {"keep_probabilities": [last]}]
        config = {"nested_arm": "learned", "nested_kl_weight": 0.1, "seed": 7, "eval_width": width}
        return {"run_key": "r", "config": config, "history": history, "epochs_run": 1, "test_metric": width / 2}

    rows = [row(0.125, [1.0, 0.9, 0.34]), row(1.0, [1.0, 0.9, 0.34])]
    assert "| 0.1 | 1 | 7 | 1 | 0.300 | 0.300 | 0.0625 | 0.5000 |" in table(rows)
    plot(rows, tmp_path / "o.png")
    assert (tmp_path / "o.png").stat().st_size > 0


def test_order_lr_scale_moves_the_keep_probabilities_further(splits) -> None:
    def moved(scale: float) -> float:
        fields = {**TINY, "epochs": 1, "nested_arm": "learned", "nested_kl_weight": 0.0, "nested_order_lr_scale": scale}
        history = train_nested(RunConfig.from_dict(fields), splits)[0]["history"]
        first, last = history[0]["keep_probabilities"], history[-1]["keep_probabilities"]
        return max(abs(a - b) for p, q in zip(first, last) for a, b in zip(p, q))

    assert moved(30.0) > 3 * moved(1.0)


def _table_row(arm: str, width: float, seed: int, acc: float, **extra: Any) -> dict:
    config = {"nested_arm": arm, "nested_fraction": width if arm == "narrow" else 1.0, "eval_width": width}
    metrics = {"test_metric": acc, "ece": 0.1, "nll": 0.5, "auroc": 0.8}
    key = f"{arm}-{width}-{seed}"
    return {"key": key, "config": {**config, "seed": seed, "lr": 0.002}, **metrics, **extra}


def test_nested_tables_average_each_arm_and_width_over_seeds_and_compare_mc_and_speed(tmp_path) -> None:
    from lawn.harness.nested_tables import main, tables

    speed = {"0.5": {"sliced_ms": 2.0, "masked_ms": 5.0}, "1": {"sliced_ms": 4.0, "masked_ms": 4.4}}
    mc = {"test_metric": 0.7, "ece": 0.2, "nll": 0.6, "auroc": 0.9}
    rows = [
        _table_row("narrow", 1.0, 0, 0.80),
        _table_row("narrow", 1.0, 1, 0.90),
        _table_row("narrow", 0.5, 0, 0.60),
        _table_row("learned", 0.5, 0, 0.50),
        _table_row("learned", 1.0, 0, 0.75, mc=mc, speed=speed),
        _table_row("learned", 1.0, 1, 0.85, mc=mc, speed={"0.5": {"sliced_ms": 4.0, "masked_ms": 7.0}}),
    ]
    text = tables(rows)
    assert "| plain | 1 | 2 | 0.8500 ± 0.0707 | 0.1000 ± 0.0000 |" in text  # narrow at fraction 1 is plain
    assert "| narrow | 0.5 | 1 | 0.6000 ± 0.0000 |" in text
    assert "| learned | 1 | 2 | 0.8000 ± 0.0707 |" in text
    assert "| learned | deterministic | 2 | 0.8000 ± 0.0707 |" in text
    assert (
        "| learned | MC average | 2 | 0.7000 ± 0.0000 | 0.2000 ± 0.0000 | 0.6000 ± 0.0000 | 0.9000 ± 0.0000 |" in text
    )
    assert "| 0.5 | 2 | 3.0 | 6.0 | 2.00 |" in text
    assert "| 1 | 1 | 4.0 | 4.4 | 1.10 |" in text
    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert main([str(path), "--out", str(tmp_path / "t.md")]) == 0
    assert (tmp_path / "t.md").read_text() == text


def test_nested_tables_refuse_two_grid_points_of_one_arm_in_one_cell(tmp_path, capsys) -> None:
    from lawn.harness.nested_tables import main

    other = _table_row("learned", 1.0, 1, 0.7)
    other["config"]["lr"] = 0.004
    path = tmp_path / "rows.jsonl"
    path.write_text(json.dumps(_table_row("learned", 1.0, 0, 0.8)) + "\n" + json.dumps(other) + "\n")
    with pytest.raises(SystemExit):
        main([str(path)])
    assert "learned at width 1: rows of different settings (lr)" in capsys.readouterr().err
