"""Parallel sweeps: worker processes give the sequential rows, a dead worker fails only its run, two sweeps on
one results file split the grid, Ctrl-C ends the workers and keeps the finished rows."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from lawn.harness.cli import main
from lawn.harness.parallel import LocalPool, worker_devices
from lawn.harness.results import read_rows
from lawn.harness.sweep import SweepEvent, SweepFailed, SweepSpec, run_sweep
from sweep_helpers import SPEC, by_key

SRC = Path(__file__).resolve().parents[1] / "src"
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")])}


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one torch thread (conftest.py)


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> list[dict]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    path = tmp_path_factory.mktemp("ref") / "results.jsonl"
    assert run_sweep(SweepSpec.from_dict(SPEC), path) == {"done": 8, "skipped": 0, "total": 8}
    torch.set_num_threads(threads)
    return by_key(read_rows(path))


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


SHARED = """
import json, sys, time, torch
from pathlib import Path
torch.set_num_threads(1)
from lawn.harness.cli import main
spec, results, me, other = sys.argv[1:5]
Path(me).touch()
while not Path(other).exists():  # start both sweeps at the same moment
    time.sleep(0.01)
main(["sweep", spec, "--results", results, "--threads", "1", "--no-progress"])
print(sorted(m for m in sys.modules if m == "ray" or m.startswith("ray.")))
"""


def test_two_sweeps_on_one_file_split_the_grid(reference: list[dict], tmp_path: Path) -> None:
    """One sweep in a subprocess (the command), one here, started together on the same results file."""
    spec, path = tmp_path / "spec.json", tmp_path / "results.jsonl"
    spec.write_text(json.dumps(SPEC))
    there, here = tmp_path / "there.ready", tmp_path / "here.ready"
    command = [sys.executable, "-c", SHARED, str(spec), str(path), str(there), str(here)]
    other = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
    try:
        while not there.exists():
            assert other.poll() is None, other.communicate()
            time.sleep(0.01)
        here.touch()
        counts = run_sweep(SweepSpec.from_dict(SPEC), path, poll_s=0.1)
        out, err = other.communicate(timeout=300)
    finally:
        other.kill()
    assert other.returncode == 0, err
    done_there = int(re.search(r"sweep: (\d+) run\(s\) done now, (\d+) already", out).group(1))
    assert counts["done"] + done_there == 8  # no run trained twice
    assert counts["done"] >= 1 and done_there >= 1  # both trained: they really shared the grid
    assert counts["done"] + counts["skipped"] == 8
    assert by_key(read_rows(path)) == reference  # every run once, no damaged line
    assert out.splitlines()[-1] == "[]"  # the sweep command never imported Ray


def test_ctrl_c_ends_the_workers_and_keeps_finished_rows(tmp_path: Path) -> None:
    """Two quick runs, then two that would take minutes: Ctrl-C (SIGINT to the process group) while they train."""
    spec = tmp_path / "spec.json"
    base = {k: v for k, v in SPEC["base"].items() if k != "epochs"}
    grid = {"methods": ["plain"], "seeds": [0], "vary": {"epochs": [1, 5000]}}
    spec.write_text(json.dumps({**SPEC, "base": base, **grid}))
    path = tmp_path / "results.jsonl"
    # A job a shell starts in the background (`pytest ... &`) inherits SIGINT *ignored*, and so would the driver:
    # give it Ctrl-C's default handler, as in a terminal, whatever started this test run.
    cli = "import signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); " + (
        "from lawn.harness.cli import main; sys.exit(main(sys.argv[1:]))"
    )
    command = [sys.executable, "-c", cli, "sweep", str(spec), "--results", str(path)]
    driver = subprocess.Popen(
        [*command, "--jobs", "2", "--threads", "1", "--no-progress"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=ENV,
        start_new_session=True,
    )
    lines: list[str] = []
    try:
        while sum(" start " in line for line in lines) < 4 or sum(" done " in line for line in lines) < 2:
            line = driver.stdout.readline()
            assert line, f"the sweep ended early: {lines} {driver.stderr.read()}"
            lines.append(line)
        time.sleep(0.5)
        os.killpg(driver.pid, signal.SIGINT)
        rc = driver.wait(timeout=30)
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
    assert rc == 130 and "interrupted; rerun the same command to resume" in driver.stderr.read()
    workers = {int(pid) for line in lines for pid in re.findall(r"\(pid (\d+)\)", line)}
    assert len(workers) == 2
    deadline = time.monotonic() + 10  # ended, and reaped by their parent
    while [pid for pid in workers if Path(f"/proc/{pid}").exists()] and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not [pid for pid in workers if Path(f"/proc/{pid}").exists()]
    assert path.read_bytes().endswith(b"\n")
    assert [row["config"]["epochs"] for row in read_rows(path)] == [1, 1]
