"""The results file: one JSON row per line, appended atomically; partial tails are ignored and repaired."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest

from lawn.harness.cli import main
from lawn.harness.results import append_row, completed_keys, read_rows, repair


def test_rows_round_trip_and_non_finite_becomes_null(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "r.jsonl"
    append_row(path, {"key": "a", "x": 1.5, "bad": math.nan, "nested": [math.inf, {"y": -math.inf}]})
    append_row(path, {"key": "b"})
    rows = read_rows(path)
    assert rows == [{"key": "a", "x": 1.5, "bad": None, "nested": [None, {"y": None}]}, {"key": "b"}]
    assert path.read_bytes().count(b"\n") == 2
    assert completed_keys(path) == {"a", "b"}
    assert completed_keys(tmp_path / "absent.jsonl") == set()


def test_a_partial_last_line_is_ignored_then_cut_off(tmp_path: Path) -> None:
    path = tmp_path / "r.jsonl"
    append_row(path, {"key": "a"})
    append_row(path, {"key": "b", "v": [1, 2, 3]})
    complete = path.read_bytes()
    with open(path, "ab") as f:  # a process killed in the middle of a write
        f.write(b'{"key":"c","hist')
    assert [r["key"] for r in read_rows(path)] == ["a", "b"]
    assert completed_keys(path) == {"a", "b"}
    append_row(path, {"key": "c"})
    assert path.read_bytes() == complete + b'{"key":"c"}\n'


def test_repair_handles_edge_cases(tmp_path: Path) -> None:
    path = tmp_path / "r.jsonl"
    assert repair(path) == 0  # absent
    path.write_bytes(b"")
    assert repair(path) == 0
    path.write_bytes(b'{"key":')
    assert repair(path) == 7 and path.read_bytes() == b""
    path.write_bytes(b'{"key":"a"}\n')
    assert repair(path) == 0 and path.read_bytes() == b'{"key":"a"}\n'


def test_damage_inside_the_file_is_an_error_naming_the_line(tmp_path: Path) -> None:
    path = tmp_path / "r.jsonl"
    path.write_bytes(b'{"key":"a"}\n{oops\n{"key":"b"}\n')
    with pytest.raises(ValueError, match=r"r.jsonl:2: not a JSON row"):
        read_rows(path)
    path.write_bytes(b'{"nokey":1}\n')
    with pytest.raises(ValueError, match=r"r.jsonl:1: not a result row"):
        read_rows(path)
    with pytest.raises(FileNotFoundError, match="results file not found"):
        read_rows(tmp_path / "missing.jsonl")


def test_report_counts_shared_runs_once_and_refuses_rows_without_config(tmp_path: Path, capsys):
    spec = tmp_path / "spec.json"
    base = {"dataset": "digits", "train_limit": 60, "test_limit": 30, "width": 4, "epochs": 1}
    spec.write_text(
        json.dumps(
            {"base": base, "optimizers": ["adam"], "methods": ["plain"], "batch_sizes": [32], "lrs": [1e-3],
             "seeds": [0, 1, 2]}
        )
    )  # fmt: skip
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    assert main(["sweep", str(spec), "--results", str(a), "--no-progress", "--threads", "1"]) == 0
    shutil.copy(a, b)  # the workflow of docs/harness.md: a file and a copy that shares its runs
    capsys.readouterr()
    assert main(["report", str(a), str(b), "--out", str(tmp_path / "r")]) == 0
    text = capsys.readouterr().out
    assert "(3 runs)" in text and " (3) |" in text and "(6" not in text  # was 6 runs, 6 seeds
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"key": "k1", "final": {}}) + "\n")
    assert main(["report", str(bad), "--out", str(tmp_path / "r2")]) == 2  # was a traceback, exit 1
    assert "lawn report: error: result row 'k1'" in capsys.readouterr().err
