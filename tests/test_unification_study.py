"""The unification study script runs end to end in smoke mode and writes its rows, summary and plot."""

import importlib.util
import json
import sys
from pathlib import Path

import torch

STUDY = Path(__file__).resolve().parents[1] / "benchmarks" / "unification_study.py"


def test_study_smoke(tmp_path, monkeypatch):
    spec = importlib.util.spec_from_file_location("unification_study", STUDY)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "unification_study", module)
    spec.loader.exec_module(module)
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
