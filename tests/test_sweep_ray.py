"""Sweeps on Ray: a local instance with 2 CPUs gives the sequential rows; data load on the workers; a run
that fails on a worker is reported; per-run requests decide how many runs are in flight."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

ray = pytest.importorskip("ray")

from lawn.harness import datasets  # noqa: E402
from lawn.harness.cli import main  # noqa: E402
from lawn.harness.ray_backend import RayBackend  # noqa: E402
from lawn.harness.results import read_rows  # noqa: E402
from lawn.harness.sweep import SweepFailed, SweepSpec, run_sweep  # noqa: E402
from sweep_helpers import SPEC, by_key  # noqa: E402

pytestmark = pytest.mark.ray
SRC = Path(__file__).resolve().parents[1] / "src"


@pytest.fixture(scope="module")
def local_ray():
    """One local Ray instance with 2 CPUs for the module; its workers import this checkout's lawn."""
    path = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join([str(SRC), path or ""])
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()
    if path is None:
        del os.environ["PYTHONPATH"]
    else:
        os.environ["PYTHONPATH"] = path


def test_ray_gives_the_sequential_rows_and_loads_data_on_the_workers(local_ray: None, tmp_path: Path) -> None:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        run_sweep(SweepSpec.from_dict(SPEC), tmp_path / "sequential.jsonl")
    finally:
        torch.set_num_threads(threads)
    datasets._cached.cache_clear()
    path = tmp_path / "ray.jsonl"
    backend = RayBackend(threads=1)
    assert backend.slots() == 2  # 2 CPUs, 1 CPU per run
    assert run_sweep(SweepSpec.from_dict(SPEC), path, backend=backend) == {"done": 8, "skipped": 0, "total": 8}
    assert by_key(read_rows(path)) == by_key(read_rows(tmp_path / "sequential.jsonl"))
    assert datasets._cached.cache_info().currsize == 0  # the driver never loaded the data set
    assert ray.is_initialized()  # the backend leaves an instance it did not start running
    again = run_sweep(SweepSpec.from_dict(SPEC), path, backend=RayBackend(threads=1))
    assert again == {"done": 0, "skipped": 8, "total": 8}


def test_a_run_failing_on_a_ray_worker_is_reported(local_ray: None, tmp_path: Path) -> None:
    missing = tmp_path / "no-such-dir"
    spec = SweepSpec.from_dict({**SPEC, "base": {"dataset": "mnist", "data_dir": str(missing), "epochs": 1}})
    with pytest.raises(SweepFailed, match="8 of 8 run") as failed:
        run_sweep(spec, tmp_path / "r.jsonl", backend=RayBackend(threads=1))
    assert all(str(missing) in error for _, error in failed.value.failures)
    assert not (tmp_path / "r.jsonl").exists()


def test_per_run_requests_set_the_runs_in_flight(local_ray: None) -> None:
    assert RayBackend(cpus_per_run=0.5).slots() == 4
    assert RayBackend(cpus_per_run=0.5, max_in_flight=3).slots() == 3
    assert RayBackend(gpus_per_run=0.25).device == "cuda" and RayBackend().device == "cpu"


def test_a_gpu_request_on_a_cluster_without_gpus_is_refused_at_start(
    local_ray: None, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    with pytest.raises(ValueError, match=r"--gpus-per-run 0.25: the Ray cluster \(local\) has 0 GPU"):
        RayBackend(gpus_per_run=0.25).slots()
    spec = tmp_path / "spec.json"
    spec.write_text('{"base": {"dataset": "digits"}, "lrs": [0.001], "methods": ["plain"]}')
    argv = ["sweep", str(spec), "--results", str(tmp_path / "r.jsonl"), "--ray", "--gpus-per-run", "0.25"]
    assert main(argv) == 2
    assert "use --gpus-per-run 0 to train on CPUs" in capsys.readouterr().err
    assert not (tmp_path / "r.jsonl").exists()
    assert ray.is_initialized()  # an instance the sweep did not start is left running


def test_sigterm_stops_a_ray_sweep_cleanly(tmp_path: Path) -> None:
    """SIGTERM to the driver of ``--ray`` (its own local instance) while runs train: exit 130 and the resume hint,
    as with --jobs; no Ray or C++ dump."""
    import json
    import signal
    import subprocess
    import sys

    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({**SPEC, "base": {**SPEC["base"], "epochs": 5000}}))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")])}
    env.pop("RAY_ADDRESS", None)
    cli = "import sys; from lawn.harness.cli import main; sys.exit(main(sys.argv[1:]))"
    argv = ["sweep", str(spec), "--results", str(tmp_path / "r.jsonl"), "--ray", "--jobs", "2", "--no-progress"]
    driver = subprocess.Popen(
        [sys.executable, "-c", cli, *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    )
    try:
        assert driver.stdout is not None
        started = 0
        while started < 2:
            line = driver.stdout.readline()
            assert line, f"the sweep ended early: {driver.stderr.read() if driver.stderr else ''}"
            started += " start " in line
        driver.send_signal(signal.SIGTERM)
        _, err = driver.communicate(timeout=120)
    finally:
        if driver.poll() is None:
            driver.kill()
    assert driver.returncode == 130, err
    assert "lawn sweep: interrupted; rerun the same command to resume" in err
    assert "SIGTERM received" not in err and "Traceback" not in err, err


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--ray", "--gpus-per-run", "0.5", "--device", "cpu"], "--device cpu with --ray --gpus-per-run 0.5"),
        (["--ray", "--device", "cuda:1"], "--device cuda:1 with --ray"),
        (["--ray", "--gpus-per-run", "1.5"], "--gpus-per-run: a fraction must be below 1"),
        (["--ray", "--cpus-per-run", "0"], "--cpus-per-run: must be > 0"),
    ],
)
def test_bad_backend_options_are_named(
    flags: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    spec = tmp_path / "spec.json"
    spec.write_text('{"base": {"dataset": "digits"}, "lrs": [0.001], "methods": ["plain"]}')
    assert main(["sweep", str(spec), "--results", str(tmp_path / "r.jsonl"), *flags]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "r.jsonl").exists()
