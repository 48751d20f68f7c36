"""Bad input to the ``lawn`` command: a clear error (exit 2) naming the culprit, before anything trains or is
written, and nothing left behind."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lawn.harness.cli import main

TINY_BASE = {"dataset": "digits", "train_limit": 120, "test_limit": 60, "width": 4, "epochs": 1}
TINY_SPEC = {"base": TINY_BASE, "optimizers": ["adam"], "methods": ["plain"], "batch_sizes": [32], "lrs": [1e-3]}
QUIET = ["--threads", "1", "--no-progress", "--device", "cpu", "--jobs", "1"]

pytestmark = pytest.mark.usefixtures("restore_threads")  # the commands set torch's threads (conftest.py)


def _error(argv: list[str], capsys: pytest.CaptureFixture) -> str:
    """Run ``lawn argv``, check it stopped with exit 2 before training, and return its error line."""
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert "final:" not in captured.out and "done" not in captured.out, captured.out
    assert captured.err.startswith(f"lawn {argv[0]}: error:"), captured.err
    return captured.err


def _spec(tmp_path: Path, spec: dict | None = None) -> str:
    path = tmp_path / "spec.json"
    path.write_text(json.dumps(spec or TINY_SPEC))
    return str(path)


def test_results_that_is_a_folder_is_refused_before_training(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    folder = tmp_path / "results"
    folder.mkdir()
    err = _error(["sweep", _spec(tmp_path), "--results", str(folder), *QUIET], capsys)
    assert "--results" in err and "is a folder" in err
    err = _error(["run", "--dataset", "digits", "--epochs", "1", "--results", str(folder), *QUIET[:-2]], capsys)
    assert "--results" in err and "is a folder" in err
    assert list(folder.iterdir()) == [] and sorted(p.name for p in tmp_path.iterdir()) == ["results", "spec.json"]


def test_run_json_in_a_missing_folder_is_refused_before_training(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    target = tmp_path / "nowhere" / "row.json"
    err = _error(["run", "--dataset", "digits", "--epochs", "1", "--json", str(target), *QUIET[:-2]], capsys)
    assert "--json" in err and "does not exist" in err


def test_out_that_is_a_file_is_refused_and_kept(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    rows = tmp_path / "r.jsonl"
    rows.write_text("")
    out = tmp_path / "out"
    out.write_text("mine\n")
    err = _error(["report", str(rows), "--out", str(out)], capsys)
    assert "--out" in err and "is a file" in err
    err = _error(["report", str(rows), "--out", str(out / "sub")], capsys)
    assert "--out" in err and "is a file" in err
    err = _error(["demo", "--dataset", "digits", "--out", str(out), *QUIET], capsys)
    assert "--out" in err and "is a file" in err
    assert out.read_text() == "mine\n"


def test_a_spec_that_is_not_utf8_text_is_named(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    spec = tmp_path / "spec.toml"
    spec.write_bytes(b"\xff\xfe\x00seeds = [0]\n")
    err = _error(["sweep", str(spec), "--results", str(tmp_path / "r.jsonl"), *QUIET], capsys)
    assert str(spec) in err and "UTF-8" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["spec.toml"]


def test_an_unreadable_spec_is_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    spec = Path(_spec(tmp_path))

    def refuse(self: Path, *args: object, **kwargs: object) -> str:
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "read_text", refuse)  # as root, chmod 000 would not stop the read
    err = _error(["sweep", str(spec), "--results", str(tmp_path / "r.jsonl"), *QUIET], capsys)
    assert err.startswith(f"lawn sweep: error: {spec}: cannot read") and "Permission denied" in err


@pytest.mark.parametrize("seeds", ["", " ", ","])
def test_empty_seeds_are_refused_not_replaced_by_the_specs(
    seeds: str, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    err = _error(["sweep", _spec(tmp_path), "--results", str(tmp_path / "r.jsonl"), "--seeds", seeds, *QUIET], capsys)
    assert "--seeds: expected comma-separated integers" in err
    assert not (tmp_path / "r.jsonl").exists()


@pytest.mark.parametrize(
    ("dataset", "missing"), [("fashion_mnist", "train-images-idx3-ubyte"), ("cifar10", "data_batch_1")]
)
def test_a_sweep_over_a_data_dir_without_its_files_stops_before_training(
    dataset: str, missing: str, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """Not one failed run per grid point (exit 1): one error naming the directory and the file, exit 2."""
    empty = tmp_path / "data"
    empty.mkdir()
    spec = _spec(tmp_path, {**TINY_SPEC, "base": {**TINY_BASE, "dataset": dataset, "model": "mlp"}})
    results = tmp_path / "r.jsonl"
    err = _error(["sweep", spec, "--results", str(results), "--data-dir", str(empty), *QUIET], capsys)
    assert str(empty) in err and missing in err
    assert not results.exists() and not Path(f"{results}.lock").exists()

    from lawn.harness.sweep import SweepSpec  # a finished sweep reads no data: it is not refused for the files

    data = json.loads(Path(spec).read_text())
    finished = SweepSpec.from_dict({**data, "base": {**data["base"], "data_dir": str(empty)}})
    results.write_text("".join(json.dumps({"key": config.key()}) + "\n" for config, _ in finished.expand()))
    assert main(["sweep", spec, "--results", str(results), "--data-dir", str(empty), *QUIET]) == 0
    assert "0 run(s) done now, 3 already" in capsys.readouterr().out


def test_a_seed_torch_cannot_take_is_named_before_training(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    huge = str(2**64)
    err = _error(["run", "--dataset", "digits", "--epochs", "1", "--seed", huge, *QUIET[:-2]], capsys)
    assert "seed/data_seed: must be >= 0 and < 2**64" in err and huge in err
    results = tmp_path / "r.jsonl"
    err = _error(["sweep", _spec(tmp_path), "--results", str(results), "--seeds", huge, *QUIET], capsys)
    assert "seed/data_seed" in err and not results.exists()


def test_a_compare_arm_with_a_wrongly_typed_value_names_the_arm(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    rows = tmp_path / "r.jsonl"
    rows.write_text("")
    compare = [{"name": "x", "a": {"method": "lawn"}, "b": {"method": 3}, "margin": 0.01}]
    spec = _spec(tmp_path, {**TINY_SPEC, "compare": compare})
    err = _error(["report", str(rows), "--spec", spec, "--out", str(tmp_path / "rep")], capsys)
    assert "compare[0] ('x').b.method: expected a string, got 3" in err
    assert not (tmp_path / "rep").exists()
