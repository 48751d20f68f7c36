"""Verdicts of declared comparisons: the rule, the flags, pairing, pilots, Holm, the spec tables and the CLI."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

import pytest

from lawn.harness.config import Comparison, parse_comparisons
from lawn.harness.verdicts import (
    compare,
    holm,
    markdown,
    mean_and_half_width,
    paired_stats,
    seeds_to_resolve,
    sync_docs,
    t_quantile,
)

ROOT = Path(__file__).resolve().parents[1]


def row(method: str, seed: int, test: float, val: float = 0.9, lr: float = 3e-3, **config: Any) -> dict[str, Any]:
    tuned = ["lr", *[k for k in config if k in ("free_fraction", "weight_decay")]]
    base = {"dataset": "d", "model": "m", "optimizer": "adam", "batch_size": 64, "weight_decay": 0.0}
    cfg = {**base, "method": method, "lr": lr, "seed": seed, **config}
    key = json.dumps(cfg, sort_keys=True)
    return {"key": key, "config": cfg, "tuned": tuned, "val_metric": val, "test_metric": test, "metric": "accuracy"}


def arm(method: str, tests: list[float], lrs: tuple[float, ...] = (1e-3, 3e-3, 1e-2), best: float = 3e-3, **cfg):
    """Rows of one arm over an lr grid: the ``best`` lr has the highest validation metric and test ``tests``."""
    rows = []
    for seed, test in enumerate(tests):
        for lr in lrs:
            good = math.isclose(lr, best)
            rows.append(row(method, seed, test if good else test - 0.05, val=0.9 if good else 0.8, lr=lr, **cfg))
    return rows


LAWN_VS_PLAIN = Comparison("lawn vs plain", {"method": "lawn"}, {"method": "plain"}, ("optimizer",), 0.005)


def one(comparison: Comparison, rows: list[dict[str, Any]], **kw: Any) -> dict[str, Any]:
    (result,) = compare([comparison], rows, **kw)
    return result


def test_a_clear_win_is_better() -> None:
    plain = [0.90, 0.91, 0.92, 0.905, 0.915]
    lawn = [p + d for p, d in zip(plain, [0.021, 0.019, 0.020, 0.022, 0.018])]
    result = one(LAWN_VS_PLAIN, arm("lawn", lawn) + arm("plain", plain))
    assert result["verdict"] == "better" and result["n"] == 5
    assert result["mean_diff"] == pytest.approx(0.02)
    assert result["a"]["selected"] == {"lr": 3e-3} and result["a"]["grid_size"] == 3
    assert result["a"]["test_by_seed"]["0"] == pytest.approx(0.921)
    assert result["ci_low"] > 0.005 and result["p_adjusted"] == result["p"] < 0.001
    reverse = Comparison("plain vs lawn", {"method": "plain"}, {"method": "lawn"}, ("optimizer",), 0.005)
    assert one(reverse, arm("lawn", lawn) + arm("plain", plain))["verdict"] == "worse"


def test_a_tie_inside_the_margin_is_level() -> None:
    plain = [0.90, 0.91, 0.92, 0.905, 0.915, 0.91, 0.9, 0.92]
    lawn = [p + d for p, d in zip(plain, [0.0005, -0.0005, 0.0004, -0.0003, 0.0, 0.0002, -0.0004, 0.0003])]
    result = one(LAWN_VS_PLAIN, arm("lawn", lawn) + arm("plain", plain))
    assert result["verdict"] == "level"
    assert -0.005 < result["ci_adjusted_low"] < result["ci_adjusted_high"] < 0.005


def test_noise_is_inconclusive_with_the_seeds_that_would_resolve_it() -> None:
    plain = [0.90, 0.91, 0.92, 0.905, 0.915]
    lawn = [p + d for p, d in zip(plain, [0.010, -0.012, 0.008, -0.006, 0.004])]
    result = one(LAWN_VS_PLAIN, arm("lawn", lawn) + arm("plain", plain))
    assert result["verdict"] == "inconclusive"
    assert result["ci_low"] < 0 < result["ci_high"]
    (note,) = [n for n in result["notes"] if "paired seeds would resolve it" in n]
    needed = int(note.split("about ")[1].split(" ")[0])
    assert needed == seeds_to_resolve(result["mean_diff"], result["sd_diff"], 0.005, 0.05) and needed > 5


def test_an_optimum_on_the_edge_of_its_grid_forces_inconclusive_unless_it_is_a_hard_bound() -> None:
    plain = [0.90, 0.91, 0.92, 0.905, 0.915]
    lawn = [p + 0.02 for p in plain]
    rows = arm("lawn", lawn, best=1e-2) + arm("plain", plain)
    result = one(LAWN_VS_PLAIN, rows)
    assert result["verdict"] == "inconclusive"
    assert any("a: lr = 0.01 is the largest value of its grid" in n and "not bracketed" in n for n in result["notes"])
    assert any("would say 'better'" in n for n in result["notes"])
    bounded = Comparison(**{**LAWN_VS_PLAIN.__dict__, "bounds": {"lr": "max"}})
    assert one(bounded, rows)["verdict"] == "better"


def test_unequal_tuning_budgets_force_inconclusive_and_state_both_sizes() -> None:
    plain = [0.90, 0.91, 0.92, 0.905, 0.915]
    lawn = arm("lawn", [p + 0.02 for p in plain], free_fraction=0.2)
    lawn += [{**r, "val_metric": 0.5} for r in arm("lawn", plain, free_fraction=0.1)]
    result = one(LAWN_VS_PLAIN, lawn + arm("plain", plain))
    assert result["a"]["grid_size"] == 6 and result["b"]["grid_size"] == 3
    assert result["verdict"] == "inconclusive"
    assert any("a was selected over 6 grid points, b over 3" in n for n in result["notes"])


def test_unpaired_seeds_are_left_out_and_counted() -> None:
    rows = arm("lawn", [0.92, 0.93, 0.94, 0.935, 0.925]) + arm("plain", [0.90, 0.91, 0.92])
    rows += [row("plain", 7, 0.91, lr=lr, val=0.9 if lr == 3e-3 else 0.8) for lr in (1e-3, 3e-3, 1e-2)]
    result = one(LAWN_VS_PLAIN, rows)
    assert result["n"] == 3
    assert sorted(result["a"]["test_by_seed"]) == ["0", "1", "2", "3", "4"]
    assert any("3 run(s) without a partner left out (a: seeds [3, 4]) (b: seeds [7])" in n for n in result["notes"])


def test_one_paired_seed_is_inconclusive_and_shows_no_spread() -> None:
    result = one(LAWN_VS_PLAIN, arm("lawn", [0.95]) + arm("plain", [0.90]))
    assert result["n"] == 1 and result["verdict"] == "inconclusive"
    assert result["p"] is None and result["ci_low"] is None and result["sd_diff"] is None
    assert any("fewer than 2 paired seeds (n = 1)" in n for n in result["notes"])
    table = markdown([result])
    assert "+0.0500 (n = 1)" in table and "±" not in table.split("\n")[-2]


def test_a_pilot_selects_the_fields_it_varied_and_the_study_pairs_at_that_choice() -> None:
    pilot = [row("lawn", 0, 0.9, val=v, free_fraction=f) for f, v in ((0.1, 0.80), (0.3, 0.95), (0.5, 0.85))]
    pilot += [row("plain", 0, 0.9, val=0.9)]
    plain = [0.90, 0.91, 0.92, 0.905, 0.915]
    # in the study, free fraction 0.1 has the better validation score: without the pilot it would be chosen
    study = [row("lawn", s, t + 0.03, val=0.99, free_fraction=0.1) for s, t in enumerate(plain, start=1)]
    study += [row("lawn", s, t + 0.02, val=0.90, free_fraction=0.3) for s, t in enumerate(plain, start=1)]
    study += [row("plain", s, t, val=0.9) for s, t in enumerate(plain, start=1)]
    comparison = Comparison("lawn vs plain", {"method": "lawn"}, {"method": "plain"}, (), 0.005)
    result = one(comparison, study, pilot=pilot)
    assert result["a"]["selected"]["free_fraction"] == 0.3 and result["a"]["selected_on"].startswith("pilot")
    assert result["a"]["grid"]["free_fraction"] == [0.1, 0.3, 0.5]
    assert result["mean_diff"] == pytest.approx(0.02) and result["n"] == 5
    assert result["a"]["grid_size"] == 3 and result["b"]["grid_size"] == 1
    assert any("unequal tuning budgets" in n for n in result["notes"])
    without = one(comparison, study)
    assert without["a"]["selected"]["free_fraction"] == 0.1 and without["mean_diff"] == pytest.approx(0.03)


def test_holm_adjustment_matches_a_hand_computation() -> None:
    from scipy.stats import t

    base = [0.90, 0.91, 0.92, 0.905, 0.915]
    shifts = {"adam": [0.02, 0.01, 0.03, 0.015, 0.025], "sgd": [0.01, -0.005, 0.02, 0.0, 0.012]}
    shifts["lamb"] = [0.004, -0.006, 0.01, -0.002, 0.001]
    rows = []
    for opt, d in shifts.items():
        rows += arm("lawn", [b + x for b, x in zip(base, d)], optimizer=opt) + arm("plain", base, optimizer=opt)
    results = {r["group"]["optimizer"]: r for r in compare([LAWN_VS_PLAIN], rows)}
    raw = {}
    for opt, d in shifts.items():  # paired t by hand
        mean = sum(d) / 5
        sd = math.sqrt(sum((x - mean) ** 2 for x in d) / 4)
        raw[opt] = 2 * t.sf(abs(mean) / (sd / math.sqrt(5)), 4)
        assert results[opt]["p"] == pytest.approx(raw[opt], rel=1e-6)
    first, second, third = sorted(raw, key=raw.get)
    assert (first, second, third) == ("adam", "sgd", "lamb")
    assert results["adam"]["p_adjusted"] == pytest.approx(3 * raw["adam"], rel=1e-6)
    assert results["sgd"]["p_adjusted"] == pytest.approx(max(3 * raw["adam"], 2 * raw["sgd"]), rel=1e-6)
    assert results["lamb"]["p_adjusted"] == pytest.approx(min(1, max(2 * raw["sgd"], raw["lamb"])), rel=1e-6)
    assert results["adam"]["adjusted_level"] == pytest.approx(1 - 0.05 / 3)
    assert results["lamb"]["adjusted_level"] == pytest.approx(0.95)
    half = t.ppf(1 - 0.05 / 6, 4) * results["adam"]["sd_diff"] / math.sqrt(5)
    assert results["adam"]["ci_adjusted_low"] == pytest.approx(results["adam"]["mean_diff"] - half)


def test_holm_keeps_the_step_down_monotone_and_caps_at_one() -> None:
    adjusted, ranks = holm([0.04, 0.01, 0.03, 0.5])
    assert ranks == [3, 1, 2, 4]
    assert adjusted == pytest.approx([0.09, 0.04, 0.09, 0.5])
    assert holm([0.6, 0.7])[0] == pytest.approx([1.0, 1.0])


def test_paired_statistics_against_known_values() -> None:
    assert t_quantile(0.975, 2) == pytest.approx(4.302653, rel=1e-6)
    stats = paired_stats([0.01, 0.02, 0.03])
    assert stats["mean"] == pytest.approx(0.02) and stats["sd"] == pytest.approx(0.01)
    assert stats["ci_high"] - stats["mean"] == pytest.approx(4.302653 * 0.01 / math.sqrt(3), rel=1e-6)
    assert paired_stats([0.01])["p"] is None
    assert paired_stats([0.01, 0.01])["p"] == 0.0 and paired_stats([0.0, 0.0])["p"] == 1.0
    assert mean_and_half_width([0.01, 0.02, 0.03]) == pytest.approx((0.02, 4.302653 * 0.01 / math.sqrt(3)), rel=1e-6)
    assert mean_and_half_width([0.5]) == (0.5, 0.0)
    with pytest.raises(ValueError, match="no values"):
        mean_and_half_width([])


def test_an_arm_that_matches_two_settings_is_refused_naming_the_field() -> None:
    rows = arm("lawn", [0.92, 0.93]) + arm("lawn", [0.92, 0.93], schedule="step") + arm("plain", [0.9, 0.91])
    with pytest.raises(ValueError, match="differ in .*schedule.*name the field in the arm"):
        compare([LAWN_VS_PLAIN], rows)


def test_a_by_field_fixed_by_one_arm_pairs_that_arm_with_every_group() -> None:
    rows = []
    for sparsity, tests in ((0.0, [0.80, 0.81, 0.82]), (0.5, [0.85, 0.86, 0.87]), (0.8, [0.70, 0.72, 0.71])):
        for seed, test in enumerate(tests):
            r = row("plain", seed, test, lr=0.01)
            r.update(tuned=[], experiment="lottery", key=f"{sparsity}-{seed}")
            r["lottery"] = {"arm": "dense" if sparsity == 0 else "ticket", "sparsity": sparsity}
            rows.append(r)
    comparison = Comparison("ticket vs dense", {"arm": "ticket"}, {"arm": "dense", "sparsity": 0.0}, ("sparsity",), 0)
    results = compare([comparison], rows)
    assert [r["group"] for r in results] == [{"sparsity": 0.5}, {"sparsity": 0.8}]
    assert [r["mean_diff"] for r in results] == pytest.approx([0.05, -0.1])


def test_unification_rows_pair_their_arms_by_seed_at_each_level() -> None:
    """The unification driver records arm and level under ``row["unification"]``: comparisons name them there."""
    rows = []
    for arm, level, tests in (
        ("admm", "prune 0.9", [0.88, 0.89, 0.90]),
        ("one_shot", "prune 0.9", [0.85, 0.86, 0.87]),
        ("admm", "prune 0.5", [0.90, 0.91, 0.90]),
        ("one_shot", "prune 0.5", [0.90, 0.90, 0.91]),
    ):
        for seed, test in enumerate(tests):
            r = row("plain", seed, test, lr=3e-4)
            r.update(tuned=[], experiment="unification", key=f"{arm}-{level}-{seed}")
            r["unification"] = {"arm": arm, "level": level, "block_size": 4}
            rows.append(r)
    (table,) = parse_comparisons(
        {"compare": [{"name": "ADMM vs one-shot", "a": {"arm": "admm"}, "b": {"arm": "one_shot"}, "by": ["level"],
                      "margin": 0.005}]},
        ("arm", "level", "block_size"),
    )  # fmt: skip
    results = compare([table], rows)
    assert [r["group"] for r in results] == [{"level": "prune 0.5"}, {"level": "prune 0.9"}]
    assert [r["mean_diff"] for r in results] == pytest.approx([0.0, 0.03])
    assert all(r["n"] == 3 for r in results)


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ({"name": "x", "a": {"method": "lawn"}, "b": {"method": "wd"}}, r"missing \['margin'\]"),
        ({"name": "x", "a": {"methd": "lawn"}, "b": {"method": "wd"}, "margin": 0}, "did you mean 'method'"),
        ({"name": "x", "a": {"method": "lawn"}, "b": {"method": "wd"}, "margin": -1}, "margin: expected a number >= 0"),
        ({"name": "x", "a": {"method": "lawn"}, "b": {"method": "lawn"}, "margin": 0}, "pick the same rows"),
        ({"name": "x", "a": {"method": "a"}, "b": {"method": "b"}, "margin": 0, "by": "optimizer"}, "list of field"),
        ({"name": "x", "a": {"lr": 0.1}, "b": {"lr": 0.2}, "margin": 0, "by": ["lr"]}, "fixed by both a and b"),
        ({"name": "x", "a": {"method": "a"}, "b": {"method": "b"}, "margin": 0, "bounds": {"lr": "top"}}, "'min'"),
        ({"name": "x", "a": {"method": "a"}, "b": {"method": "b"}, "margin": 0, "against": 1}, "unknown key"),
        ({"name": "x", "a": {"batch_size": "big"}, "b": {"method": "b"}, "margin": 0}, "batch_size: expected an int"),
    ],
)
def test_compare_tables_are_checked_as_data(table: dict[str, Any], message: str) -> None:
    with pytest.raises((ValueError, TypeError), match=message):
        parse_comparisons({"compare": [table]})


def test_compare_tables_take_the_spec_bounds_and_lottery_fields() -> None:
    data = {
        "bounds": {"lr": "max"},
        "compare": [{"name": "t", "a": {"arm": "ticket"}, "b": {"arm": "reinit"}, "by": ["lr"], "margin": 0.01}],
    }
    with pytest.raises(ValueError, match="unknown field"):
        parse_comparisons(data)
    (comparison,) = parse_comparisons(data, ["arm"])
    assert comparison.bounds == {"lr": "max"} and comparison.by == ("lr",) and comparison.margin == 0.01


def test_sweep_and_lottery_specs_accept_compare_tables_and_refuse_bad_ones() -> None:
    from lawn.harness.lottery import LotterySpec
    from lawn.harness.sweep import SweepSpec

    compare_table = [{"name": "lawn vs wd", "a": {"method": "lawn"}, "b": {"method": "wd"}, "margin": 0.005}]
    spec = {"methods": ["wd", "lawn"], "lrs": [0.01], "weight_decays": [1e-4], "compare": compare_table}
    SweepSpec.from_dict(spec)
    with pytest.raises(ValueError, match="margin"):
        SweepSpec.from_dict({**spec, "compare": [{**compare_table[0], "margin": "small"}]})
    lottery = {
        "base": {"dataset": "digits"},
        "compare": [{"name": "t", "a": {"arm": "ticket"}, "b": {"arm": "reinit"}}],
    }
    with pytest.raises(ValueError, match="missing"):
        LotterySpec.from_dict(lottery)
    lottery["compare"][0]["margin"] = 0.01
    LotterySpec.from_dict(lottery)


def test_report_with_a_spec_writes_verdicts_and_a_table(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from lawn.harness.cli import main

    plain = [0.90, 0.91, 0.92, 0.905, 0.915]
    rows = arm("lawn", [p + 0.02 for p in plain]) + arm("plain", plain)
    results = tmp_path / "rows.jsonl"
    results.write_text("".join(json.dumps({**r, "history": [{"epoch": 1}]}) + "\n" for r in rows))
    spec = tmp_path / "spec.toml"
    spec.write_text(
        'methods = ["plain", "lawn"]\nlrs = [1e-3, 3e-3, 1e-2]\n\n[[compare]]\nname = "lawn vs plain"\n'
        'a = {method = "lawn"}\nb = {method = "plain"}\nby = ["optimizer", "batch_size"]\nmargin = 0.005\n'
    )
    out = tmp_path / "rep"
    assert main(["report", str(results), "--spec", str(spec), "--out", str(out)]) == 0
    (verdict,) = json.loads((out / "verdicts.json").read_text())
    for key in (
        "name",
        "group",
        "a",
        "b",
        "n",
        "mean_diff",
        "ci_low",
        "ci_high",
        "p",
        "p_adjusted",
        "verdict",
        "notes",
    ):
        assert key in verdict
    assert verdict["group"] == {"optimizer": "adam", "batch_size": 64} and verdict["verdict"] == "better"
    report = (out / "report.md").read_text()
    assert "## Verdicts" in report and "| lawn vs plain | optimizer=adam, batch_size=64 |" in report
    assert report.index("## Verdicts") < report.index("## 1.")
    capsys.readouterr()
    assert main(["report", str(results), "--pilot", str(results), "--out", str(out)]) == 2
    assert "give the spec too" in capsys.readouterr().err
    spec.write_text('lrs = [1e-3]\n[[compare]]\nname = "x"\na = {method = "lawn"}\nb = {method = "plain"}\n')
    assert main(["report", str(results), "--spec", str(spec), "--out", str(tmp_path / "rep2")]) == 2
    assert "missing ['margin']" in capsys.readouterr().err and not (tmp_path / "rep2").exists()


@pytest.mark.parametrize("history", [None, []])
def test_report_refuses_a_row_without_history_naming_file_and_line(
    tmp_path: Path, capsys: pytest.CaptureFixture, history: list | None
) -> None:
    from lawn.harness.cli import main

    good = {**row("plain", 0, 0.9), "history": [{"epoch": 1}]}
    bad = {**row("plain", 1, 0.9)}
    if history is not None:
        bad["history"] = history
    results = tmp_path / "rows.jsonl"
    results.write_text(json.dumps(good) + "\n\n" + json.dumps(bad) + "\n")
    assert main(["report", str(results), "--out", str(tmp_path / "rep")]) == 2
    err = capsys.readouterr().err
    assert f"({results}:3) has no 'history'" in err and "Traceback" not in err


def lottery_rows(seeds: tuple[int, ...], tests: dict[str, float]) -> list[dict[str, Any]]:
    """Constructed lottery rows: a dense run and one-shot arms at 50 % sparsity, test metric per arm (+ seed / 100)."""
    correlation = {"global": {k: 0.5 for k in ("overlap", "pearson", "spearman", "cosine")}}
    rows = []
    for seed in seeds:
        for name, test in tests.items():
            r = row("plain", seed, test + seed / 100, lr=0.01)
            r.update(experiment="lottery", tuned=[], timing={"seconds": 1.0}, key=f"{name}-{seed}")
            r.update(correlation={"initial": correlation, "rewind": correlation})
            r["config"].update(momentum=0.9, epochs=1, schedule="cosine", train_limit=100)
            r["lottery"] = {
                "arm": name,
                "sparsity": 0.0 if name == "dense" else 0.5,
                "finetune_lr_scale": 0.1,
                "scope": "global",
                "rewind_steps": 0,
            }
            rows.append(r)
    return rows


def test_one_seed_lottery_report_shows_n_1_and_no_spread() -> None:
    from lawn.harness.lottery_report import markdown as lottery_markdown

    text = lottery_markdown(lottery_rows((0,), {"dense": 0.8, "ticket": 0.8, "reinit": 0.8, "finetune": 0.8}))
    assert "0.8000 (n = 1)" in text and "± 0.0" not in text and "(1)" not in text


def test_lottery_report_with_a_spec_pairs_arms_by_seed(report_with_spec) -> None:
    rows = lottery_rows((0, 1, 2, 3), {"dense": 0.8, "ticket": 0.85, "reinit": 0.7, "finetune": 0.84})
    for r in rows:  # seed noise shared by the arms of a seed; the ticket's lead over re-init varies a little
        if r["lottery"]["arm"] == "reinit":
            r["test_metric"] += 0.002 * (r["config"]["seed"] % 2)
    spec = (
        'lrs = [0.01]\n[base]\ndataset = "digits"\n\n[[compare]]\nname = "ticket vs re-init"\na = {arm = "ticket"}\n'
        'b = {arm = "reinit"}\nby = ["lr", "sparsity"]\nmargin = 0.01\n'
    )
    status, _, out = report_with_spec(rows, spec, "lottery")
    assert status == 0
    (verdict,) = json.loads((out / "verdicts.json").read_text())
    assert verdict["group"] == {"lr": 0.01, "sparsity": 0.5} and verdict["n"] == 4
    assert verdict["mean_diff"] == pytest.approx(0.149) and verdict["verdict"] == "better"
    assert "## Verdicts" in (out / "report.md").read_text()


def test_verdict_lines_in_the_docs_agree_with_the_committed_verdicts() -> None:
    """README's summary and docs/results.md's verdict tables are regenerated from verdicts.json and compared.

    To update them after a new ``lawn report --spec``: ``python -m lawn.harness.verdicts README.md docs/results.md``.
    """
    blocks = 0
    for doc in ("README.md", "docs/results.md"):
        text = (ROOT / doc).read_text()
        blocks += text.count("<!-- /verdict")
        assert sync_docs(ROOT / doc, ROOT) == [], f"{doc}: a verdict block disagrees with its verdicts.json"
    assert blocks >= 2
    for path in sorted((ROOT / "docs" / "results").glob("*/verdicts.json")):
        for verdict in json.loads(path.read_text()):
            assert verdict["verdict"] in ("better", "worse", "level", "inconclusive"), path
            assert str(path.relative_to(ROOT)) in (ROOT / "docs" / "results.md").read_text(), path


def test_a_verdict_block_that_disagrees_with_its_json_is_reported_and_regenerated(tmp_path: Path) -> None:
    plain = [0.90, 0.91, 0.92, 0.905, 0.915]
    results = compare([LAWN_VS_PLAIN], arm("lawn", [p + 0.02 for p in plain]) + arm("plain", plain))
    (tmp_path / "v.json").write_text(json.dumps(results))
    doc = tmp_path / "doc.md"
    doc.write_text("x\n<!-- verdict-summary: v.json -->\n- lawn vs plain: 1 worse\n<!-- /verdict-summary -->\n")
    assert sync_docs(doc, tmp_path) == ["v.json"]
    assert sync_docs(doc, tmp_path, write=True) == ["v.json"] and sync_docs(doc, tmp_path) == []
    assert "- lawn vs plain: 1 better, 0 worse, 0 level, 0 inconclusive of 1 group\n" in doc.read_text()


def test_the_sync_command_names_a_missing_verdicts_file_and_writes_no_doc(tmp_path, monkeypatch, capsys) -> None:
    from lawn.harness.verdicts import main

    monkeypatch.chdir(tmp_path)
    stale = "x\n<!-- verdict-summary: v.json -->\n- old\n<!-- /verdict-summary -->\n"
    (tmp_path / "a.md").write_text(stale)
    (tmp_path / "b.md").write_text("<!-- verdicts: gone/verdicts.json -->\n<!-- /verdicts -->\n")
    plain = [0.90, 0.91, 0.92, 0.905, 0.915]
    (tmp_path / "v.json").write_text(json.dumps(compare([LAWN_VS_PLAIN], arm("lawn", plain) + arm("plain", plain))))
    with pytest.raises(SystemExit):
        main(["a.md", "b.md"])
    assert "b.md names gone/verdicts.json, which does not exist" in capsys.readouterr().err
    assert (tmp_path / "a.md").read_text() == stale  # checked before anything was written
    with pytest.raises(SystemExit):
        main(["missing.md"])
    assert "missing.md: no such file" in capsys.readouterr().err
    assert main(["a.md"]) == 0 and "- lawn vs plain: 0 better" in (tmp_path / "a.md").read_text()


def test_the_committed_specs_declare_valid_comparisons() -> None:
    from lawn.harness.config import load_mapping
    from lawn.harness.lottery import LotterySpec
    from lawn.harness.sweep import SweepSpec
    from lawn.harness.verdicts import load_comparisons

    specs = [p for p in sorted((ROOT / "docs" / "sweeps").glob("*.toml")) if "[[compare]]" in p.read_text()]
    assert len(specs) >= 10
    for path in specs:
        assert load_comparisons(path), path
        data = load_mapping(path)
        (LotterySpec if "sparsities" in data else SweepSpec).from_dict(data)


def test_an_arm_that_matches_no_row_is_warned_about_with_the_values_the_rows_hold() -> None:
    """A typo in one arm (``method = "lwan"``) left a verdict that read like an outcome ("a has no runs"): the
    verdict stays, and a warning names the value and what the rows hold."""
    rows = arm("lawn", [0.92, 0.93]) + arm("plain", [0.9, 0.91])
    typo = Comparison("typo", {"method": "lwan"}, {"method": "plain"}, ("optimizer",), 0.005)
    with pytest.warns(
        UserWarning,
        match=r"'typo': arm a = \{'method': 'lwan'\} matches no row: method='lwan' "
        r'\(the rows hold "lawn", "plain"\)',
    ):
        (result,) = compare([typo], rows)
    assert result["verdict"] == "inconclusive" and "a has no runs in this group" in result["notes"]
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        compare([LAWN_VS_PLAIN], rows)  # arms that match rows: no warning


def test_a_comparison_that_matches_no_row_is_refused() -> None:
    rows = arm("plain", [0.9, 0.91])
    ghost = Comparison("ghost", {"method": "lawn"}, {"method": "wrs"}, (), 0.005)
    with pytest.raises(ValueError, match="'ghost': no row matches"):
        compare([ghost], rows)


def test_pilot_by_empty_makes_one_choice_from_the_mean_over_every_group() -> None:
    # batch 64 prefers free fraction 0.1 slightly, batch 128 prefers 0.3 strongly: pooled, 0.3 wins for both
    pilot = []
    for batch, vals in ((64, {0.1: 0.91, 0.3: 0.90}), (128, {0.1: 0.80, 0.3: 0.95})):
        pilot += [row("lawn", 0, 0.9, val=v, free_fraction=f, batch_size=batch) for f, v in vals.items()]
    study = []
    for batch in (64, 128):
        for f in (0.1, 0.3):
            study += [row("lawn", s, 0.9 + f / 10, free_fraction=f, batch_size=batch) for s in (1, 2, 3)]
        study += [row("plain", s, 0.9, batch_size=batch) for s in (1, 2, 3)]
    pooled = Comparison("lawn vs plain", {"method": "lawn"}, {"method": "plain"}, ("batch_size",), 0.005, {}, ())
    per_group = Comparison("lawn vs plain", {"method": "lawn"}, {"method": "plain"}, ("batch_size",), 0.005)
    chosen = [r["a"]["selected"]["free_fraction"] for r in compare([pooled], study, pilot=pilot)]
    assert chosen == [0.3, 0.3]
    assert [r["a"]["selected"]["free_fraction"] for r in compare([per_group], study, pilot=pilot)] == [0.1, 0.3]
    assert (
        parse_comparisons(
            {"compare": [{"name": "x", "a": {"method": "a"}, "b": {"method": "b"}, "margin": 0, "pilot_by": []}]}
        )[0].pilot_by
        == ()
    )
    with pytest.raises(ValueError, match="pilot_by: expected a list of fields of by"):
        parse_comparisons(
            {"compare": [{"name": "x", "a": {"method": "a"}, "b": {"method": "b"}, "margin": 0, "pilot_by": ["lr"]}]}
        )


D, S = "docs/results", "docs/sweeps"
STUDIES = {  # verdicts.json → (results files, specs, pilot files, --only): the commands of docs/results.md
    "afan": (
        [f"{D}/afan/{n}.jsonl" for n in ("plain", "plain_matched", "afan_aug", "afan_position", "afan_batch")]
        + [f"{D}/afan/afan_random.jsonl", f"{D}/afan/afan_late.jsonl"],
        [f"{S}/study_afan.toml"],
        [],
        {},
    ),
    "ranking": ([f"{D}/ranking/results.jsonl"], [f"{S}/study_ranking.toml"], [], {}),
    "lottery/lenet_report": ([f"{D}/lottery/lenet.jsonl"], [f"{S}/study_lottery_lenet.toml"], [], {}),
    "lawn_paper_mnist1d_nonorm": (
        [f"{D}/lawn_paper_mnist1d_nonorm/rows.jsonl"],
        [f"{S}/lawn_paper_mnist1d_nonorm.toml"],
        [f"{D}/lawn_paper_mnist1d/pilot.jsonl"],
        {},
    ),
    "mnist1d": ([f"{D}/mnist1d/results.jsonl"], [f"{S}/study_mnist1d.toml"], [], {}),
    "ablations": (
        [f"{D}/mnist1d/results.jsonl", f"{D}/ablations/results.jsonl"],
        [f"{S}/ablation_free_phase.toml", f"{S}/ablation_row.toml", f"{S}/ablation_no_projection.toml"],
        [],
        {"optimizer": "adam", "method": "lawn"},
    ),
    "companions": ([f"{D}/companions/results.jsonl"], [f"{S}/study_companions.toml"], [], {}),
    "mimicnorm": ([f"{D}/mimicnorm/results.jsonl"], [f"{S}/study_mimicnorm.toml"], [], {}),
    "fashion_mnist_subset": (
        [f"{D}/fashion_mnist_subset/results.jsonl"],
        [f"{S}/study_fashion_mnist_subset.toml"],
        [],
        {},
    ),
    "lottery/vgg_report": (
        [f"{D}/lottery/vgg.jsonl", f"{D}/lottery/vgg_finetune_lr1.jsonl"],
        [f"{S}/study_lottery.toml", f"{S}/study_lottery_finetune_lr.toml"],
        [],
        {},
    ),
    "lawn_paper": (
        [f"{D}/lawn_paper/{n}.jsonl" for n in ("results", "3phase_lawn", "3phase_lawn_all", "3phase_lawn_auto")]
        + [f"{D}/lawn_paper/1warmup_lawn.jsonl", f"{D}/lawn_paper/1warmup_lawn_all.jsonl"],
        [f"{S}/lawn_paper_3phase.toml", f"{S}/lawn_paper_1warmup.toml"],
        [f"{D}/lawn_paper/pilot.jsonl", f"{D}/lawn_paper/pilot_adam.jsonl"],
        {},
    ),
    "lawn_paper_vgg": (
        [f"{D}/lawn_paper_vgg/{n}.jsonl" for n in ("plain", "lawn", "lawn_auto")],
        [f"{S}/lawn_paper_vgg.toml"],
        [f"{D}/lawn_paper/pilot.jsonl", f"{D}/lawn_paper/pilot_adam.jsonl"],
        {},
    ),
    "lawn_paper_mnist1d": (
        [f"{D}/lawn_paper_mnist1d/{n}.jsonl" for n in ("baselines", "3phase", "1warmup")],
        [f"{S}/lawn_paper_mnist1d_3phase.toml", f"{S}/lawn_paper_mnist1d_1warmup.toml"],
        [f"{D}/lawn_paper_mnist1d/pilot.jsonl"],
        {},
    ),
    "lawn_paper_fashion_mnist": (
        [f"{D}/lawn_paper_fashion_mnist/rows.jsonl"],
        [f"{S}/lawn_paper_fashion_mnist.toml"],
        [f"{D}/lawn_paper_mnist1d/pilot.jsonl"],
        {},
    ),
}
N2 = f"{D}/nested_v2"
for _metric in ("accuracy", "ece", "nll", "auroc"):
    STUDIES[f"nested_v2/{_metric}"] = (
        [f"{N2}/rows.jsonl"],
        [f"{S}/nested_v2/compare_{_metric}.toml"],
        [f"{N2}/pilot.jsonl"],
        {},
    )
A2 = f"{D}/afan_v2"
for _regime, _pilot in (("subset", [f"{A2}/pilot.jsonl"]), ("full", [])):
    for _view in ("clean", "noisy_test_metric", "blurred_test_metric"):
        STUDIES[f"afan_v2/{_regime}_{_view}"] = (
            [f"{A2}/{_regime}.jsonl"],
            [f"{S}/afan_v2/compare_{_regime}.toml"],
            _pilot,
            {},
        )
U2 = f"{D}/unification_v2"
# the study driver's rows, one report per net (docs/results/unification_v2/DESIGN.md)
for _net in ("lenet300", "lenet5"):
    STUDIES[f"unification_v2/{_net}"] = ([f"{U2}/{_net}.jsonl"], [f"{S}/unification_v2/{_net}.toml"], [], {})
STUDIES["lottery_v2/lenet300_report"] = (
    [f"{D}/lottery_v2/lenet300.jsonl"],
    [f"{S}/lottery_v2/lenet300.toml"],
    [],
    {},
)  # the second lottery study (docs/results/lottery_v2/DESIGN.md)
for _family in ("claims_1_2", "claim_3_and_peer", "mechanism", "schedule_control", "wrs_seed"):
    STUDIES[f"lawn_v3/{_family}"] = (  # the third LAWN study (docs/results/lawn_v3/DESIGN.md)
        [f"{D}/lawn_v3/fresh.jsonl"],
        [f"{S}/lawn_v3/fmnist_compare_{_family}.toml"],
        [f"{D}/lawn_v3/pilot.jsonl"],
        {},
    )
VIEWS = {  # study → (metric, lower is better): its rows seen through lawn.harness.metric_view, as DESIGN.md runs it
    "nested_v2/ece": ("ece", True),
    "nested_v2/nll": ("nll", True),
    "nested_v2/auroc": ("auroc", False),
    **{
        f"afan_v2/{r}_{m}": (m, False) for r in ("subset", "full") for m in ("noisy_test_metric", "blurred_test_metric")
    },
}
PREREGISTERED = ("nested_v2", "afan_v2", "lottery_v2", "unification_v2", "lawn_v3")  # specs committed before rows
QUICK = (
    "afan",
    "ranking",
    "lottery/lenet_report",
    "lawn_paper_mnist1d_nonorm",
    "nested_v2/nll",
    "afan_v2/subset_clean",
    "unification_v2/lenet300",
    "lottery_v2/lenet300_report",
    "lawn_v3/claims_1_2",
)


def _recompute(study: str) -> None:
    from lawn.harness.metric_view import view
    from lawn.harness.report import read_reported_rows
    from lawn.harness.verdicts import load_comparisons

    results, specs, pilot, only = STUDIES[study]

    def read(paths: list[str]) -> list[dict[str, Any]]:
        rows = read_reported_rows([str(ROOT / p) for p in paths])
        return [r for r in rows if all(r["config"].get(k) == v for k, v in only.items())]

    judged = read(results)
    if study in VIEWS:
        judged = view(judged, *VIEWS[study])
    fresh = compare(load_comparisons(*(ROOT / s for s in specs)), judged, read(pilot) if pilot else None)
    committed = json.loads((ROOT / D / study / "verdicts.json").read_text())
    assert json.loads(json.dumps(fresh)) == committed, f"{study}: verdicts.json is not what lawn report computes"


@pytest.mark.parametrize("study", QUICK)
def test_committed_verdicts_are_what_lawn_report_computes(study: str) -> None:
    _recompute(study)


@pytest.mark.slow
@pytest.mark.parametrize("study", [s for s in STUDIES if s not in QUICK])
def test_committed_verdicts_of_the_larger_studies_are_what_lawn_report_computes(study: str) -> None:
    _recompute(study)


def test_every_committed_verdicts_file_has_its_recomputation() -> None:
    committed = {str(p.parent.relative_to(ROOT / D)) for p in (ROOT / D).glob("**/verdicts.json")}
    assert committed == set(STUDIES)


def test_every_study_section_of_the_results_links_its_verdicts_or_says_why_not() -> None:
    text = (ROOT / "docs" / "results.md").read_text()
    sections = text.split("\n## ")[1:]
    studies = [s for s in sections if not s.startswith(("Verdicts", "Defaults"))]
    assert len(studies) >= 10
    for section in studies:
        title = section.split("\n", 1)[0]
        assert "verdicts.json" in section, f"docs/results.md, section {title!r}: no verdicts.json link (or why not)"
        if "**Pre-registered**" in section:  # its verdicts come only from studies whose specs preceded their rows
            linked = re.findall(r"verdicts: docs/results/([^/]+)/", section)
            assert linked and all(folder in PREREGISTERED for folder in linked), title
        else:
            assert "No verdicts.json" in section or "post-hoc" in section, title


def _verdict_counts(preregistered: bool) -> list[int]:
    """[comparisons, better, worse, level, inconclusive, of them not bracketed] over the committed verdicts.json
    files of the pre-registered studies, or of the others (post-hoc)."""
    paths = [
        p
        for p in (ROOT / D).glob("**/verdicts.json")
        if (p.relative_to(ROOT / D).parts[0] in PREREGISTERED) == preregistered
    ]
    results = [r for p in paths for r in json.loads(p.read_text())]
    counts = [sum(r["verdict"] == v for r in results) for v in ("better", "worse", "level", "inconclusive")]
    bracket = sum(r["verdict"] == "inconclusive" and any("not bracketed" in n for n in r["notes"]) for r in results)
    return [len(results), *counts, bracket]


def test_the_counts_in_the_results_intro_match_the_verdicts() -> None:
    text = " ".join((ROOT / "docs" / "results.md").read_text().split())
    found = re.search(
        r"Of the (\d+) post-hoc comparisons, (\d+) are `better` .*?, (\d+) `worse` .*?, none `level`, and (\d+) "
        r"`inconclusive`: (\d+) because an optimum was not bracketed",
        text,
    )
    assert found, "docs/results.md: the intro's count sentence changed; update this test with it"
    total, better, worse, level, inconclusive, bracket = _verdict_counts(preregistered=False)
    assert [int(g) for g in found.groups()] == [total, better, worse, inconclusive, bracket]
    assert level == 0
    found = re.search(
        r"Of the (\d+) pre-registered comparisons, (\d+) are `better` .*?, (\d+) `worse` .*?, (\d+) `level` .*? and "
        r"(\d+) `inconclusive`: (\d+) because an optimum was not bracketed",
        text,
    )
    assert found, "docs/results.md: the pre-registered count sentence changed; update this test with it"
    assert [int(g) for g in found.groups()] == _verdict_counts(preregistered=True)
