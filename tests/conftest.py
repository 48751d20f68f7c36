"""Test-session settings shared by every test file."""

from __future__ import annotations

import os


def pytest_configure(config) -> None:
    """Under pytest-xdist (`-n auto`: one worker process per core) each worker gets one torch thread: torch's
    default of one thread per core in every worker oversubscribes the cores (and OpenMP's spinning threads then
    burn CPU time waiting for each other). Tests that need another count set it themselves."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        import torch

        torch.set_num_threads(1)
