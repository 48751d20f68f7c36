"""Test-session settings shared by every test file."""

from __future__ import annotations

import os

import pytest


def pytest_configure(config) -> None:
    """Under pytest-xdist (`-n auto`: one worker process per core) each worker gets one torch thread: torch's
    default of one thread per core in every worker oversubscribes the cores (and OpenMP's spinning threads then
    burn CPU time waiting for each other). Tests that need another count set it themselves."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        import torch

        torch.set_num_threads(1)


def pytest_sessionstart(session) -> None:
    """pytest-xdist prints its status line, without a terminal "bringing up nodes..." under ``-q``, once when the
    workers start and again when they have collected: keep the first, so CI's log says it once."""
    reporter = session.config.pluginmanager.getplugin("terminaldistreporter")
    show = getattr(reporter, "ensure_show_status", None)
    if show is None or session.config.option.verbose >= 0:  # verbose: the second line counts the tests
        return
    shown: list[bool] = []

    def once() -> None:
        if not shown:
            shown.append(True)
            show()

    reporter.ensure_show_status = once


@pytest.fixture
def one_thread():
    """One torch thread for the test, the old count restored after it: the harness's tiny models run fastest on
    one thread, and much faster than on the default count on a busy machine. A test file opts in with
    ``pytestmark = pytest.mark.usefixtures("one_thread")``; nothing else changes its thread count."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def restore_threads():
    """torch's thread count restored after the test (for tests of commands that set it, such as ``--threads``)."""
    import torch

    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def report_with_spec(tmp_path):
    """``report_with_spec(rows, spec_text, name)``: write ``rows`` (JSONL) and the spec into ``tmp_path``, run
    ``lawn report ROWS --spec SPEC --out tmp_path/<name>_report``; return (exit status, rows file, out folder)."""
    import json

    from lawn.harness.cli import main

    def run(rows, spec_text: str, name: str = "rows"):
        results, spec, out = tmp_path / f"{name}.jsonl", tmp_path / f"{name}.toml", tmp_path / f"{name}_report"
        results.write_text("".join(json.dumps(r) + "\n" for r in rows))
        spec.write_text(spec_text)
        return main(["report", str(results), "--spec", str(spec), "--out", str(out)]), results, out

    return run
