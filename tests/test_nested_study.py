"""The nested-network study driver runs end to end on a tiny subset and writes its report (numbers mean nothing)."""

import json
from pathlib import Path

import pytest

from lawn.harness.studies import nested as module


@pytest.mark.slow
def test_nested_study_writes_rows_and_report(tmp_path):
    from lawn.harness.data_files import FASHION_MNIST_DIR

    if not Path(FASHION_MNIST_DIR).is_dir():
        pytest.skip(f"needs Fashion-MNIST at {FASHION_MNIST_DIR}")
    args = ["--out", str(tmp_path), "--seeds", "0", "1", "--train", "256", "--test", "128", "--ood", "64",
            "--epochs", "1", "--samples", "2", "--reps", "1"]  # fmt: skip
    assert module.main(args) == 0
    rows = [json.loads(line) for line in (tmp_path / "rows.jsonl").read_text().splitlines()]
    assert {r["arm"] for r in rows} == {"nested_dropout", "learned_order", "bayes_nested", "bayes_mean", "narrow"}
    assert len(rows) == 2 * 5 * 4
    timing = [json.loads(line) for line in (tmp_path / "timing.jsonl").read_text().splitlines()]
    assert [t["width"] for t in timing] == [1.0, 0.75, 0.5, 0.25]
    assert all(t["max_abs_diff"] < 1e-4 for t in timing)
    assert timing[0]["params"] > timing[1]["params"] > timing[2]["params"] > timing[3]["params"]
    text = (tmp_path / "report.md").read_text()
    assert "--epochs 1" in text and "better at every width?" in text and "| bayes_nested | ece |" in text
    assert module.main(args + ["--report-only"]) == 0
    assert (tmp_path / "report.md").read_text() == text
