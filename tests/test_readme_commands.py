"""README's Quick start is what a new user types and what CI runs: its test command is `.ci/run`'s last line."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def quick_start_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    block = text.split("## Quick start", 1)[1].split("```bash", 1)[1].split("```", 1)[0]
    return [line for line in block.splitlines() if line and not line.startswith("#")]


def test_readme_test_command_is_what_ci_runs() -> None:
    demo, tests = quick_start_commands()
    ci = [line for line in (ROOT / ".ci/run").read_text().splitlines() if line and not line.startswith("#")]
    assert ci[-1] == tests
    for command in (demo, tests):  # each works on a Debian system Python (PEP 668): in a venv it makes itself
        assert command.startswith("python3 -m venv .venv && . .venv/bin/activate && ")
        assert "python -m pip install -q torch==" in command  # torch first: no CUDA build pulled in by lawn
    assert "-n auto" in tests and ".[test," in tests
    assert ",tensorboard]" in tests  # the --log-dir tests run in CI, not skipped


def test_the_ci_log_says_bringing_up_nodes_once(tmp_path: Path) -> None:
    """Under CI's `-q -n auto` without a terminal, pytest-xdist's status line appears once, not twice."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT / "tests")])}
    command = [sys.executable, "-m", "pytest", "-q", "-n", "2", "-p", "no:cacheprovider", __file__, "-k", "ci_runs"]
    out = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300).stdout
    assert out.count("bringing up nodes...") == 1, out
    assert "1 passed" in out
