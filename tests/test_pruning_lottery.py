"""``lawn lottery``: every arm at equal total epochs, resumable JSONL rows, the report, bad specs."""

from __future__ import annotations

import json

import pytest
import torch

from lawn.harness.cli import main
from lawn.harness.lottery import LotterySpec
from lawn.harness.lottery_report import write_lottery_report
from lawn.harness.results import read_rows

QUIET = ["--threads", "1", "--no-progress", "--device", "cpu"]
SPEC = {
    "lrs": [0.05],
    "seeds": [0],
    "sparsities": [0.5, 0.9],
    "imp_lrs": [0.05],
    "imp_rounds": 2,
    "imp_rate": 0.5,
    "base": {
        "dataset": "digits",
        "train_limit": 200,
        "test_limit": 60,
        "model": "lenet300",
        "optimizer": "sgd",
        "batch_size": 50,
        "epochs": 1,
    },
}


@pytest.fixture(autouse=True)
def restore_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def test_lottery_runs_every_arm_resumes_and_reports(tmp_path, capsys):
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps(SPEC))
    results = tmp_path / "rows.jsonl"
    assert main(["lottery", str(spec), "--results", str(results), *QUIET]) == 0
    rows = read_rows(results)
    arms = sorted((r["lottery"]["arm"], r["lottery"]["sparsity"]) for r in rows)
    assert arms == sorted(
        [("dense", 0.0), ("dense_extra", 0.0)]
        + [(a, s) for a in ("ticket", "reinit", "finetune") for s in (0.5, 0.9)]
        + [(a, s) for a in ("imp_ticket", "imp_finetune") for s in (0.5, 0.75)]
    )
    for r in rows:
        lot = r["lottery"]
        if lot["arm"] in ("dense_extra", "ticket", "reinit", "finetune"):
            assert lot["total_epochs"] == 2 * lot["arm_epochs"] == 2  # equal total epochs
        if lot["arm"] in ("ticket", "reinit", "finetune", "imp_ticket", "imp_finetune"):
            assert r["measured_sparsity"] == pytest.approx(lot["sparsity"], abs=0.01)  # the masks held
        assert r["test_metric"] is not None
    (dense,) = [r for r in rows if r["lottery"]["arm"] == "dense"]
    corr = dense["correlation"]["initial"]["global"]
    assert 0.2 < corr["overlap"] <= 1 and -1 <= corr["cosine"] <= 1
    assert dense["correlation"]["rewind"]["global"]["overlap"] == pytest.approx(corr["overlap"])  # k = 0
    states = list((tmp_path / "rows.jsonl.states").glob("*.pt"))
    assert len(states) == 1 and set(torch.load(states[0], weights_only=True)) == {"initial", "rewind", "trained"}

    # resume: nothing to do; a lost arm row is re-run from the saved dense states, not by retraining dense
    capsys.readouterr()
    assert main(["lottery", str(spec), "--results", str(results), *QUIET]) == 0
    assert "0 row(s) done now, 12 already" in capsys.readouterr().out
    kept = [line for line in results.read_text().splitlines() if '"arm":"reinit"' not in line]
    results.write_text("\n".join(kept) + "\n")
    assert main(["lottery", str(spec), "--results", str(results), *QUIET]) == 0
    again = read_rows(results)
    assert len(again) == 12 and sum(r["lottery"]["arm"] == "dense" for r in again) == 1
    old = {r["key"]: r["test_metric"] for r in rows}
    assert all(old[r["key"]] == r["test_metric"] for r in again)  # deterministic

    out = tmp_path / "report"
    assert main(["report", str(results), "--out", str(out)]) == 0
    text = (out / "report.md").read_text()
    assert "ticket − random re-init" in text and "IMP ticket" in text
    assert (out / "accuracy_vs_sparsity.png").stat().st_size > 0
    assert (out / "correlation_vs_lr.png").stat().st_size > 0

    # rows of a second study with another fine-tune rate are reported as their own arm, paired with the ticket
    other = [
        {**r, "key": r["key"] + "x", "lottery": {**r["lottery"], "finetune_lr_scale": 1.0}}
        for r in again
        if r["lottery"]["arm"] in ("dense", "finetune")
    ]
    write_lottery_report(again + other, out)
    text = (out / "report.md").read_text()
    assert "| prune & fine-tune (lr × 1) |" in text and "prune & fine-tune (lr × 1) − ticket (claim 3)" in text


@pytest.mark.parametrize(
    ("change", "culprit"),
    [
        ({"sparsities": [1.0]}, "sparsities"),
        ({"arms": ["lottery"]}, "arms"),
        ({"scope": "row"}, "scope"),
        ({"finetune_lr_scale": 0}, "finetune_lr_scale"),
        ({"bogus": 1}, "bogus"),
        ({"base": {**SPEC["base"], "lr": 0.1}}, "lr"),
        ({"base": {**SPEC["base"], "model": "nope"}}, "model"),
    ],
)
def test_bad_specs_name_the_culprit(change, culprit, tmp_path, capsys):
    with pytest.raises((ValueError, TypeError), match=culprit):
        LotterySpec.from_dict({**SPEC, **change})
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({**SPEC, **change}))
    assert main(["lottery", str(spec), "--results", str(tmp_path / "r.jsonl"), *QUIET]) == 2
    assert culprit in capsys.readouterr().err
    assert not (tmp_path / "r.jsonl").exists()
