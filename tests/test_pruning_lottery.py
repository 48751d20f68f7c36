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


pytestmark = pytest.mark.usefixtures("restore_threads")  # the commands set torch's threads (conftest.py)


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


def test_every_spec_problem_surfaces_at_once_before_any_training(tmp_path, monkeypatch, capsys):
    import lawn.harness.lottery as lottery

    def no_training(*args, **kwargs):
        raise AssertionError("trained before the whole spec was checked")

    monkeypatch.setattr(lottery, "fit", no_training)
    bad = {**SPEC, "imp_rate": 0, "rewind_steps": 10_000, "finetune_lr_scale": 2}
    with pytest.raises(ValueError, match="3 problems") as caught:
        LotterySpec.from_dict(bad)
    for culprit in ("imp_rate", "rewind_steps: 10000 is past the end of the dense run", "finetune_lr_scale"):
        assert culprit in str(caught.value)
    assert "use at most 4" in str(caught.value)  # 200 examples - 10 % validation, batches of 50: 4 steps

    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({**SPEC, "rewind_steps": 10_000}))  # only the data can tell
    results = tmp_path / "r.jsonl"
    assert main(["lottery", str(spec), "--results", str(results), *QUIET]) == 2
    assert "rewind_steps: 10000 is past the end" in capsys.readouterr().err
    assert not results.exists() and not (tmp_path / "r.jsonl.states").exists()


def test_two_lottery_runs_on_one_results_file_train_each_row_once(tmp_path):
    """Each (learning rate, seed) is claimed in the results file's lock file, as a sweep claims its runs."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    import lawn

    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({**SPEC, "seeds": [0, 1], "sparsities": [0.5], "arms": ["ticket"], "imp_lrs": []}))
    results = tmp_path / "rows.jsonl"
    src = str(Path(lawn.__file__).parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")])}
    command = [sys.executable, "-m", "lawn.harness.cli", "lottery", str(spec), "--results", str(results), *QUIET]
    runs = [subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT) for _ in range(2)]
    outputs = [run.communicate(timeout=300)[0].decode() for run in runs]
    assert [run.returncode for run in runs] == [0, 0], outputs
    keys = [row["key"] for row in read_rows(results)]
    assert len(keys) == len(set(keys)) == 2 * 2  # dense + ticket per seed, each written once
    done = [int(out.split("lottery: ")[1].split(" row(s)")[0]) for out in outputs]
    assert sum(done) == 4, outputs


def test_reinit_arm_draws_from_the_models_own_initializer(tmp_path):
    """He-initialised layers are re-drawn with He init (not ``reset_parameters``' narrower default), and the
    re-init weights are those of the model built afresh under seed ``seed + 1000``."""
    from lawn.harness.datasets import load_data
    from lawn.harness.lottery import REINIT_SEED_OFFSET, reinit_model
    from lawn.harness.train import fresh_model
    from lawn.pruning import magnitude_masks, remove_masks

    config = LotterySpec.from_dict({**SPEC, "base": {**SPEC["base"], "model": "vgg_nonorm", "width": 8}}).config(
        0.05, 3
    )
    data = load_data(config)
    cpu = torch.device("cpu")
    trained = fresh_model(config, data, cpu)
    with torch.no_grad():
        for p in trained.parameters():
            p.mul_(3.0)  # "trained": far from the init
    masks = magnitude_masks(trained, 0.5)
    model = reinit_model(trained, masks, config, data, cpu)
    remove_masks(model, bake=True)
    own = fresh_model(config.replace(seed=3 + REINIT_SEED_OFFSET), data, cpu)
    for (name, p), q in zip(model.named_parameters(), own.parameters(), strict=True):
        kept = masks.get(name, torch.ones_like(p, dtype=torch.bool))
        assert torch.equal(p[kept], q[kept]), name
        assert not p[~kept].any(), name
    conv = dict(model.named_parameters())["features.2.weight"]  # 8 x 8 x 3 x 3
    kept = conv[masks["features.2.weight"]]
    he_std = (2 / conv[0].numel()) ** 0.5
    assert kept.std().item() == pytest.approx(he_std, rel=0.2)  # He init, not the default (about 2.4x narrower)


HOLDER = """
import sys, time
from lawn.harness.results import ResultsFile
book = ResultsFile(sys.argv[1])
book.open()
assert book.claim(sys.argv[2])
print("held", flush=True)
deadline = time.monotonic() + 300
while len(book.written()) < 2 and time.monotonic() < deadline:
    time.sleep(0.05)
"""


def test_a_point_held_by_another_process_is_waited_for_and_taken_over_if_left_without_rows(tmp_path):
    import os
    import subprocess
    import sys
    from pathlib import Path

    import lawn
    from lawn.harness.lottery import _plan, run_lottery

    spec = LotterySpec.from_dict({**SPEC, "seeds": [0, 1], "sparsities": [0.5], "arms": ["ticket"], "imp_lrs": []})
    results = tmp_path / "rows.jsonl"
    held = _plan(spec, torch.device("cpu"))[0]
    holder = subprocess.Popen(  # claims seed 0's point until seed 1's rows are in, then exits without a row
        [sys.executable, "-c", HOLDER, str(results), held.dense_key],
        env={
            **os.environ,
            "PYTHONPATH": os.pathsep.join([str(Path(lawn.__file__).parents[1]), os.environ.get("PYTHONPATH", "")]),
        },
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout.readline().strip() == "held"
    counts = run_lottery(spec, results, poll_s=0.1)
    assert holder.wait(timeout=60) == 0
    assert counts == {"done": 4, "skipped": 0, "total": 4, "points": 2}  # its own point and the taken-over one
    rows = [(r["config"]["seed"], r["lottery"]["arm"]) for r in read_rows(results)]
    assert rows == [(1, "dense"), (1, "ticket"), (0, "dense"), (0, "ticket")]  # seed 0 once its holder let go
