"""The unification study driver runs end to end in smoke mode and writes its rows, summary and plot."""

import json

import torch

from lawn.harness.studies import unification as module


def test_study_smoke(tmp_path):
    threads = torch.get_num_threads()
    try:
        assert module.main(["--smoke", "--seeds", "1", "--out", str(tmp_path)]) == 0
    finally:
        torch.set_num_threads(threads)
    rows = [json.loads(line) for line in (tmp_path / "rows.jsonl").read_text().splitlines()]
    arms = {(r["arm"], r["setting"]) for r in rows if r["split"] == "test"}
    assert len(arms) == 1 + 2 * len(module.SETTINGS)
    for r in rows:
        if r["arm"] != "dense":
            assert 0 < r["bits_ratio"] < 1 and 0 < r["multiplies_ratio"] < 1
    assert "| unify 0.4 + prune 0.5 | admm |" in (tmp_path / "summary.md").read_text()
    assert (tmp_path / "accuracy_vs_cost.png").stat().st_size > 0
    (tmp_path / "summary.md").unlink()
    assert module.main(["--report-only", "--out", str(tmp_path)]) == 0  # the table again, from the rows alone
    assert "ADMM − one-shot, paired by seed" in (tmp_path / "summary.md").read_text()
