"""Two sweeps started together on one results file split the grid: every run trained once, no damaged line."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lawn.harness.results import read_rows
from lawn.harness.sweep import SweepSpec, run_sweep
from sweep_helpers import SPEC, by_key, sequential_rows

SRC = Path(__file__).resolve().parents[1] / "src"
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")])}

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one torch thread (conftest.py)


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


def test_two_sweeps_on_one_file_split_the_grid(tmp_path: Path) -> None:
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
    reference = sequential_rows(tmp_path / "reference.jsonl")
    assert by_key(read_rows(path)) == reference  # every run once, no damaged line
    assert out.splitlines()[-1] == "[]"  # the sweep command never imported Ray
