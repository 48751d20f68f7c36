"""IMP curves: 95 % bands over seeds by fraction remaining, the start-vs-end correlation, the sparsest matching
ticket from verdicts, and the curves `lawn report` writes for a real (tiny) IMP study."""

from __future__ import annotations

import json
import math

import pytest

from lawn.harness.lottery import LotterySpec, run_lottery
from lawn.harness.lottery_curves import correlation_reading, curves, main, markdown, sparsest_matching_ticket
from lawn.harness.report import read_reported_rows
from tests.test_lottery_resume_same_net import SPEC


def _row(lr: float, seed: int, arm: str, rnd: int, test: float | None, pearson: float = 0.5) -> dict:
    sparsity = 0.0 if arm == "dense" else 1 - 0.8**rnd
    lottery = {"arm": arm, "sparsity": sparsity, **({"round": rnd} if arm != "dense" else {})}
    where = "initial" if arm == "dense" else "start"
    return {
        "experiment": "lottery",
        "key": f"{lr}-{seed}-{arm}-{rnd}",
        "config": {"lr": lr, "seed": seed, "dataset": "fashion_mnist", "model": "lenet300"},
        "lottery": lottery,
        "test_metric": test,
        "correlation": {where: {"global": {"pearson": pearson}}},
    }


def _verdict(lr: float, rnd: int, verdict: str, arm: str = "imp_ticket") -> dict:
    return {
        "name": "ticket vs dense",
        "group": {"lr": lr},
        "a": {"fields": {"arm": arm, "round": rnd}},
        "b": {"fields": {"arm": "dense", "sparsity": 0.0}},
        "verdict": verdict,
    }


def test_each_point_is_the_seed_mean_with_its_95_percent_t_band() -> None:
    rows = [_row(0.1, s, "dense", 0, v) for s, v in enumerate((0.90, 0.80, 0.85))]
    rows += [
        _row(0.1, s, "imp_ticket", 2, v, pearson=p) for s, (v, p) in enumerate([(0.7, 0.1), (0.8, 0.3), (None, 0.2)])
    ]
    rows += [_row(0.1, 0, "ticket", 1, 0.5)]  # a one-shot arm: not on the IMP curves
    (dense,) = curves(rows)[0.1]["dense"]
    assert dense.remaining == 1.0 and dense.n == 3 and dense.mean == pytest.approx(0.85)
    assert dense.half == pytest.approx(4.302653 * 0.05 / math.sqrt(3), rel=1e-6)  # t(0.975, 2) · s / √n
    (ticket,) = curves(rows)[0.1]["imp_ticket"]
    assert ticket.remaining == pytest.approx(0.64) and ticket.mean == pytest.approx(0.5)  # the diverged seed is 0
    assert set(curves(rows)[0.1]) == {"dense", "imp_ticket"}
    (corr,) = curves(rows, "correlation")[0.1]["imp_ticket"]
    assert corr.mean == pytest.approx(0.2)


def test_points_run_from_dense_to_the_sparsest_round_and_one_seed_has_no_band() -> None:
    rows = [_row(0.01, 0, "imp_ticket", r, 0.9 - r / 100) for r in (3, 1, 2)]
    points = curves(rows)[0.01]["imp_ticket"]
    assert [p.remaining for p in points] == pytest.approx([0.8, 0.64, 0.512])
    assert all(p.half == 0.0 and p.n == 1 for p in points)
    assert "| IMP ticket | 89.00 | 88.00 | 87.00 |" in markdown(rows)


def test_the_sparsest_matching_ticket_is_the_largest_round_rated_level_or_better() -> None:
    verdicts = [
        _verdict(0.01, 3, "level"),
        _verdict(0.01, 7, "better"),
        _verdict(0.01, 10, "worse"),
        _verdict(0.01, 13, "inconclusive"),
        _verdict(0.1, 3, "worse"),
        _verdict(0.1, 7, "inconclusive"),
        _verdict(0.1, 16, "level", arm="imp_reinit"),  # not the ticket
    ]
    assert sparsest_matching_ticket(verdicts) == {0.01: 7, 0.1: None}


def _reinit_verdict(lr: float, rnd: int, verdict: str, diff: float) -> dict:
    return {
        "name": "ticket vs random re-init",
        "group": {"lr": lr},
        "a": {"fields": {"arm": "imp_ticket", "round": rnd}},
        "b": {"fields": {"arm": "imp_reinit", "round": rnd}},
        "verdict": verdict,
        "mean_diff": diff,
    }


def test_liu_reading_needs_higher_correlation_a_better_verdict_and_a_larger_gain_at_the_small_rate() -> None:
    rows = [
        _row(lr, s, "imp_ticket", r, 0.9, pearson=p)
        for lr, p in ((0.01, 0.4), (0.1, 0.1))
        for r in (3, 7, 10)
        for s in (0, 1)
    ]
    rows += [_row(0.1, s, "imp_ticket", 13, 0.9, pearson=0.6) for s in (0, 1)]  # the large rate more correlated
    rows += [_row(0.01, s, "imp_ticket", 13, 0.9, pearson=0.4) for s in (0, 1)]
    verdicts = [
        _reinit_verdict(0.01, 3, "better", 0.02),
        _reinit_verdict(0.1, 3, "inconclusive", 0.01),  # supported
        _reinit_verdict(0.01, 7, "inconclusive", 0.02),
        _reinit_verdict(0.1, 7, "level", 0.0),  # not decided
        _reinit_verdict(0.01, 10, "better", 0.02),
        _reinit_verdict(0.1, 10, "better", 0.03),  # gain larger at 0.1
        _reinit_verdict(0.01, 13, "better", 0.02),
        _reinit_verdict(0.1, 13, "level", 0.0),  # correlation lower
        _verdict(0.01, 3, "level"),  # ticket vs dense: not part of the reading
    ]
    readings = correlation_reading(rows, verdicts)
    assert [r.round for r in readings] == [3, 7, 10, 13]
    assert [r.supported for r in readings] == [True, False, False, False]
    assert readings[0].correlation == {0.01: pytest.approx(0.4), 0.1: pytest.approx(0.1)}
    assert readings[0].remaining == pytest.approx(0.8**3)
    table = markdown(rows, verdicts)
    assert "| 3 | 51.2 % | 0.40 | 0.10 | +2.00 points (better) | +1.00 points (inconclusive) | yes |" in table
    with pytest.raises(ValueError, match="round 16, lr 0.01"):
        correlation_reading(rows, [_reinit_verdict(0.01, 16, "better", 0.1), _reinit_verdict(0.1, 16, "level", 0.0)])


def test_bad_rows_are_named() -> None:
    with pytest.raises(ValueError, match="not a lottery row"):
        curves([{"key": "k", "config": {}}])
    with pytest.raises(ValueError, match="no dense or imp_"):
        curves([_row(0.1, 0, "ticket", 1, 0.5)])
    other = {**_row(0.1, 1, "dense", 0, 0.9), "config": {"lr": 0.1, "seed": 1, "dataset": "digits", "model": "mlp"}}
    with pytest.raises(ValueError, match="one data set and model at a time"):
        curves([_row(0.1, 0, "dense", 0, 0.9), other])
    with pytest.raises(ValueError, match="'test' or 'correlation'"):
        curves([_row(0.1, 0, "dense", 0, 0.9)], "loss")


def test_lawn_report_and_the_module_draw_the_curves_of_a_real_imp_study(tmp_path) -> None:
    from lawn.harness.cli import main as lawn

    results = tmp_path / "rows.jsonl"
    run_lottery(LotterySpec.from_dict({**SPEC, "seeds": [0, 1]}), results)
    assert lawn(["report", str(results), "--out", str(tmp_path / "report")]) == 0
    for name in ("curves.md", "accuracy_vs_remaining.png", "correlation_vs_remaining.png"):
        assert (tmp_path / "report" / name).stat().st_size > 0
    points = curves(read_reported_rows([str(results)]))[0.05]
    assert [p.remaining for p in points["imp_ticket"]] == pytest.approx([0.8, 0.64]) and points["dense"][0].n == 2

    verdicts = tmp_path / "verdicts.json"
    verdicts.write_text(json.dumps([_verdict(0.05, 1, "level"), _verdict(0.05, 2, "worse")]))
    assert main([str(results), "--out", str(tmp_path / "curves"), "--verdicts", str(verdicts)]) == 0
    assert "- lr 0.05: round 1 (80.0 % of the weights)" in (tmp_path / "curves" / "curves.md").read_text()
