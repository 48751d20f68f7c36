"""Parallel sweeps: worker processes give the sequential rows, a dead worker fails only its run, a failing run fails
alone. Two sweeps on one file: test_sweep_shared_file.py; Ctrl-C: test_sweep_interrupt.py."""

from __future__ import annotations

import json
import os
import re
import signal
from pathlib import Path

import pytest

from lawn.harness.cli import main
from lawn.harness.parallel import LocalPool, worker_devices
from lawn.harness.results import read_rows
from lawn.harness.sweep import SweepEvent, SweepFailed, SweepSpec, run_sweep
from sweep_helpers import SPEC, by_key, sequential_rows

SRC = Path(__file__).resolve().parents[1] / "src"
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")])}


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one torch thread (conftest.py)


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> list[dict]:
    return sequential_rows(tmp_path_factory.mktemp("ref") / "results.jsonl")


def test_worker_devices_spread_runs_over_the_visible_gpus() -> None:
    assert worker_devices("cuda", 5, gpu_count=2) == ["cuda:0", "cuda:1", "cuda:0", "cuda:1", "cuda:0"]
    assert worker_devices("cuda", 2, gpu_count=4) == ["cuda:0", "cuda:1"]
    assert worker_devices("cuda:1", 3, gpu_count=4) == ["cuda:1"] * 3
    assert worker_devices("cpu", 2, gpu_count=0) == ["cpu", "cpu"]
    with pytest.raises(ValueError, match="--device cuda: no CUDA device is visible"):
        worker_devices("cuda", 2, gpu_count=0)
    with pytest.raises(ValueError, match="--jobs: must be >= 1"):
        worker_devices("cpu", 0, gpu_count=0)


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--jobs", "0"], "--jobs: must be >= 1"),
        (["--jobs", "2", "--threads", "0"], "--threads: must be >= 1"),
        (["--gpus-per-run", "0.5"], "--cpus-per-run/--gpus-per-run: only with --ray"),
    ],
)
def test_bad_jobs_options_are_named(flags: list[str], message: str, tmp_path: Path, capsys) -> None:
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps(SPEC))
    assert main(["sweep", str(spec), "--results", str(tmp_path / "r.jsonl"), *flags]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "r.jsonl").exists()


def test_jobs_2_gives_the_sequential_rows_bit_for_bit(reference: list[dict], tmp_path: Path) -> None:
    path = tmp_path / "results.jsonl"
    events: list[SweepEvent] = []
    counts = run_sweep(SweepSpec.from_dict(SPEC), path, backend=LocalPool(2, threads=1), on_event=events.append)
    assert counts == {"done": 8, "skipped": 0, "total": 8}
    assert by_key(read_rows(path)) == reference
    pids = {re.search(r"pid (\d+)", e.where).group(1) for e in events if e.kind == "start"}
    assert len(pids) == 2 and str(os.getpid()) not in pids  # two workers trained, not this process
    assert [e.finished for e in events if e.kind == "done"] == list(range(1, 9))
    # rerunning resumes: nothing left to do, and no worker is even started
    pool = LocalPool(2, threads=1)
    assert run_sweep(SweepSpec.from_dict(SPEC), path, backend=pool) == {"done": 0, "skipped": 8, "total": 8}
    assert pool.pids() == []


def test_a_killed_worker_fails_only_its_run(reference: list[dict], tmp_path: Path) -> None:
    path = tmp_path / "results.jsonl"
    starts: list[SweepEvent] = []

    def kill_the_third(event: SweepEvent) -> None:
        if event.kind == "start":
            starts.append(event)
            if len(starts) == 3:  # the run has just been handed to this worker
                os.kill(int(re.search(r"pid (\d+)", event.where).group(1)), signal.SIGKILL)

    with pytest.raises(SweepFailed) as failed:
        run_sweep(SweepSpec.from_dict(SPEC), path, backend=LocalPool(2, threads=1), on_event=kill_the_third)
    assert failed.value.counts == {"done": 7, "skipped": 0, "total": 8, "failed": 1}
    ((config, error),) = failed.value.failures
    assert config.key() == starts[2].config.key() and "died (killed by SIGKILL)" in error
    assert len(starts) == 8  # the others went on, one on a fresh worker
    assert config.key() not in {row["key"] for row in read_rows(path)}
    assert run_sweep(SweepSpec.from_dict(SPEC), path) == {"done": 1, "skipped": 7, "total": 8}  # resume retries it
    assert by_key(read_rows(path)) == reference


def test_a_run_that_raises_in_a_worker_is_reported_and_devices_reach_the_workers(tmp_path: Path) -> None:
    """No GPU here: the device each worker is given shows in the error its run raises."""
    spec = SweepSpec.from_dict({**SPEC, "methods": ["plain"], "seeds": [0]})
    path = tmp_path / "results.jsonl"
    pool = LocalPool(2, threads=1, devices=worker_devices("cuda", 2, gpu_count=2))
    with pytest.raises(SweepFailed, match="2 of 2 run") as failed:
        run_sweep(spec, path, backend=pool)
    assert not path.exists()
    assert sorted(error.splitlines()[0] for _, error in failed.value.failures) == [
        "ValueError: device: 'cuda:0' requested but CUDA is not available (use --device cpu)",
        "ValueError: device: 'cuda:1' requested but CUDA is not available (use --device cpu)",
    ]


def test_a_failing_run_in_process_fails_alone(tmp_path: Path) -> None:
    """The sequential path too: each run that raises is reported at the end, after the others ran."""
    missing = tmp_path / "no-such-dir"
    spec = SweepSpec.from_dict({**SPEC, "base": {**SPEC["base"], "dataset": "mnist", "data_dir": str(missing)}})
    with pytest.raises(SweepFailed, match="8 of 8 run") as failed:
        run_sweep(spec, tmp_path / "r.jsonl")
    assert all(str(missing) in error for _, error in failed.value.failures)
    assert failed.value.counts == {"done": 0, "skipped": 0, "total": 8, "failed": 8}
