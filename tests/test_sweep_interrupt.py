"""Ctrl-C on a parallel sweep ends its workers, keeps the finished rows and says how to resume."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

from lawn.harness.results import read_rows
from sweep_helpers import SPEC

SRC = Path(__file__).resolve().parents[1] / "src"
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")])}


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
