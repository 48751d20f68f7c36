"""The results file's lock file (``FILE.lock``) holds the sweeps' claims; the last process to close it removes it,
and never while another process holds a lock in it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from lawn.harness.results import ResultsFile, append_row

SRC = Path(__file__).resolve().parents[1] / "src"
HOLDER = """
import sys
from lawn.harness.results import ResultsFile
book = ResultsFile(sys.argv[1])
book.open()
print("open", flush=True)
for line in sys.stdin:
    command = line.strip()
    if command == "claim":
        print(book.claim("k"), flush=True)
    elif command == "close":
        book.close()
        print("closed", flush=True)
"""

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX record locks")


class Holder:
    """Another process with the results file open, driven line by line."""

    def __init__(self, path: Path) -> None:
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")])}
        self.process = subprocess.Popen(
            [sys.executable, "-c", HOLDER, str(path)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env
        )
        assert self.ask(None) == "open"

    def ask(self, command: str | None) -> str:
        assert self.process.stdin is not None and self.process.stdout is not None
        if command is not None:
            self.process.stdin.write(command + "\n")
            self.process.stdin.flush()
        return self.process.stdout.readline().strip()

    def stop(self) -> None:
        assert self.process.stdin is not None
        self.process.stdin.close()
        self.process.wait(timeout=30)


def test_a_finished_writer_leaves_no_lock_file(tmp_path: Path) -> None:
    results = tmp_path / "r.jsonl"
    append_row(results, {"key": "a"})
    with ResultsFile(results) as book:
        assert book.claim("b")
        book.append({"key": "b"})
        book.release("b")
        assert (tmp_path / "r.jsonl.lock").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.jsonl"]


def test_the_lock_file_stays_while_another_process_holds_a_claim(tmp_path: Path) -> None:
    results = tmp_path / "r.jsonl"
    holder = Holder(results)
    try:
        assert holder.ask("claim") == "True"
        with ResultsFile(results) as book:
            assert not book.claim("k")  # held there
        assert (tmp_path / "r.jsonl.lock").exists()
        assert holder.ask("close") == "closed"  # the last one out removes it
        assert not (tmp_path / "r.jsonl.lock").exists()
    finally:
        holder.stop()


def test_a_process_that_opened_a_removed_lock_file_locks_the_new_one(tmp_path: Path) -> None:
    results = tmp_path / "r.jsonl"
    holder = Holder(results)  # opened the lock file, holds nothing yet
    try:
        with ResultsFile(results):
            pass  # nobody holds a lock: closing removes the file
        assert not (tmp_path / "r.jsonl.lock").exists()
        assert holder.ask("claim") == "True"  # on a fresh lock file at the path, not the removed one
        assert (tmp_path / "r.jsonl.lock").exists()
        with ResultsFile(results) as book:
            assert not book.claim("k")  # so a second sweep sees the claim and never trains the run twice
    finally:
        holder.stop()
