"""Where a sweep's runs train: in this process, in a pool of local worker processes, or (``ray_backend``) on Ray.

A backend is a small object the sweep drives (``run_sweep`` owns claims, the results file and the progress
bar; a backend only trains): ``capacity()`` says how many more runs it takes now, ``submit(tag, config)``
starts one, ``wait(timeout)`` returns the :class:`Outcome` of runs that ended (a row, or an error), and
``close(cancel)`` ends it (``cancel=True`` on Ctrl-C: in-flight runs are abandoned, workers ended).

:class:`LocalPool` runs ``jobs`` worker processes, each with ``threads`` torch threads and its own
device (``worker_devices``: ``cuda`` spreads the workers round-robin over the visible GPUs, so ``jobs`` greater
than the GPU count puts several on one GPU). A worker loads its data sets itself (cached across its runs).
A worker that dies (killed, segfault, out of memory) fails the run it held, and only that run: the next
run gets a fresh worker in its slot. Workers ignore SIGINT (Ctrl-C reaches the whole process group; the
driver ends them) and exit when the driver is gone.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
import threading
import time
import traceback
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from typing import Any, Protocol

from lawn.harness.config import RunConfig

DEATH_GRACE_S = 5.0
JOBS_CAP = 4  # more workers than this buys little for the harness's small models and costs memory per worker


@dataclass
class Outcome:
    """The end of one run: its result ``row``, or ``error`` (a message, with the worker's traceback)."""

    tag: int
    row: dict[str, Any] | None = None
    error: str | None = None


class Backend(Protocol):
    def capacity(self) -> int: ...

    def submit(self, tag: int, config: RunConfig) -> str: ...

    def wait(self, timeout: float | None) -> list[Outcome]: ...

    def close(self, cancel: bool) -> None: ...


def _describe(err: BaseException) -> str:
    lines = traceback.format_exception(type(err), err, err.__traceback__)
    return f"{type(err).__name__}: {err}\n" + "".join(lines[-6:])


class InProcess:
    """Runs train in this process, one at a time (the default: no workers, per-run progress bars)."""

    def __init__(self, progress: bool = False) -> None:
        self.progress = progress
        self._queued: tuple[int, RunConfig] | None = None

    def capacity(self) -> int:
        return 0 if self._queued else 1

    def submit(self, tag: int, config: RunConfig) -> str:
        self._queued = (tag, config)
        return f"pid {os.getpid()} {config.device}"

    def wait(self, timeout: float | None) -> list[Outcome]:
        from lawn.harness.train import train

        if self._queued is None:
            return []
        tag, config = self._queued
        self._queued = None
        try:
            return [Outcome(tag, row=train(config, progress=self.progress))]
        except Exception as err:  # the run failed, not the sweep; KeyboardInterrupt still stops it
            return [Outcome(tag, error=_describe(err))]

    def close(self, cancel: bool) -> None:
        self._queued = None


def default_jobs(device: str, gpu_count: int = 0, cores: int | None = None) -> int:
    """``--jobs`` when not given, the one rule of ``lawn demo`` and ``lawn sweep``: on CPU one run per usable core,
    at most ``JOBS_CAP``; with ``cuda`` one per visible GPU; on one named GPU (``cuda:1``) or MPS, one."""
    if device == "cuda":
        return max(1, gpu_count)
    if device != "cpu":
        return 1
    if cores is None:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, min(JOBS_CAP, cores))


def worker_devices(device: str, jobs: int, gpu_count: int) -> list[str]:
    """The device of each of ``jobs`` workers: ``cuda`` → ``cuda:0 … cuda:{gpu_count-1}`` round-robin
    (several workers per GPU when ``jobs > gpu_count``); any other device (``cpu``, ``cuda:1``) → all on it."""
    if jobs < 1:
        raise ValueError(f"--jobs: must be >= 1, got {jobs}")
    if device == "cuda":
        if gpu_count < 1:
            raise ValueError("--device cuda: no CUDA device is visible (check CUDA_VISIBLE_DEVICES, or use cpu)")
        return [f"cuda:{i % gpu_count}" for i in range(jobs)]
    return [device] * jobs


def _watch_parent() -> None:
    parent = os.getppid()  # the driver (spawn) or its fork server, which exits with the driver
    while True:
        time.sleep(1.0)
        if os.getppid() != parent:  # the driver is gone (even killed): do not train for nobody
            os._exit(1)


def _worker_main(conn: Connection, threads: int | None) -> None:
    """A worker process: receive ``(tag, config dict)``, train, send back ``("ok"|"error", tag, payload)``."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    threading.Thread(target=_watch_parent, daemon=True).start()
    import torch

    from lawn.harness.train import train

    if threads is not None:
        torch.set_num_threads(threads)
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):
            return
        if message is None:
            return
        tag, fields = message
        try:
            conn.send(("ok", tag, train(RunConfig.from_dict(fields), progress=False)))
        except Exception as err:
            conn.send(("error", tag, _describe(err)))


@dataclass
class _Worker:
    process: Any
    conn: Connection
    tag: int | None = None


class LocalPool:
    """``jobs`` worker processes on this machine, forked from a fork server that imported the training code."""

    def __init__(self, jobs: int, threads: int | None = None, devices: list[str] | None = None) -> None:
        if jobs < 1:
            raise ValueError(f"--jobs: must be >= 1, got {jobs}")
        if threads is not None and threads < 1:
            raise ValueError(f"--threads: must be >= 1, got {threads}")
        if devices is not None and len(devices) != jobs:
            raise ValueError(f"LocalPool: {len(devices)} devices for {jobs} jobs")
        self.jobs = jobs
        self.threads = threads if threads is not None else max(1, (os.cpu_count() or 1) // jobs)
        self.devices = devices
        self._context = _context()
        self._slots: list[_Worker | None] = [None] * jobs

    def pids(self) -> list[int]:
        """Process ids of the live workers."""
        return [w.process.pid for w in self._slots if w is not None and w.process.is_alive()]

    def capacity(self) -> int:
        return sum(w is None or w.tag is None for w in self._slots)

    def _start(self, slot: int) -> _Worker:
        ours, theirs = self._context.Pipe(duplex=True)
        process = self._context.Process(
            target=_worker_main, args=(theirs, self.threads), daemon=True, name=f"lawn-sweep-{slot}"
        )
        process.start()
        theirs.close()
        worker = _Worker(process, ours)
        self._slots[slot] = worker
        return worker

    def submit(self, tag: int, config: RunConfig) -> str:
        for slot, worker in enumerate(self._slots):
            if worker is not None and worker.tag is None and not worker.process.is_alive():
                self._bury(slot)
                worker = None
            if worker is None or worker.tag is None:
                worker = worker or self._start(slot)
                if self.devices is not None:
                    config = config.replace(device=self.devices[slot])
                with contextlib.suppress(BrokenPipeError, OSError):  # died just now: wait() reports the run
                    worker.conn.send((tag, config.to_dict()))
                worker.tag = tag
                return f"worker {slot} (pid {worker.process.pid}) {config.device}"
        raise RuntimeError("LocalPool.submit: no free worker (check capacity() first)")

    def _bury(self, slot: int) -> None:
        worker = self._slots[slot]
        if worker is not None:
            worker.conn.close()
            worker.process.join(timeout=DEATH_GRACE_S)
            self._slots[slot] = None

    def wait(self, timeout: float | None) -> list[Outcome]:
        busy = [(slot, w) for slot, w in enumerate(self._slots) if w is not None and w.tag is not None]
        if not busy:
            return []
        ready = set(wait([w.conn for _, w in busy] + [w.process.sentinel for _, w in busy], timeout))
        outcomes = []
        for slot, worker in busy:
            if worker.conn not in ready and worker.process.sentinel not in ready:
                continue
            tag = worker.tag
            assert tag is not None
            try:
                if worker.conn.poll():  # a result sent before any death is still a result
                    status, got, payload = worker.conn.recv()
                    assert got == tag, (got, tag)
                    worker.tag = None
                    outcomes.append(Outcome(tag, row=payload) if status == "ok" else Outcome(tag, error=payload))
                    continue
            except (EOFError, OSError):
                pass
            worker.process.join(timeout=DEATH_GRACE_S)
            outcomes.append(Outcome(tag, error=f"worker pid {worker.process.pid} died ({_exit_text(worker.process)})"))
            self._bury(slot)
        return outcomes

    def close(self, cancel: bool) -> None:
        """End the workers: idle ones are told to exit; with ``cancel`` busy ones are terminated too."""
        for worker in self._slots:
            if worker is None:
                continue
            if worker.tag is None or not cancel:
                with contextlib.suppress(BrokenPipeError, OSError):
                    worker.conn.send(None)
            else:
                worker.process.terminate()
        deadline = time.monotonic() + DEATH_GRACE_S
        for slot, worker in enumerate(self._slots):
            if worker is None:
                continue
            worker.process.join(timeout=max(0.0, deadline - time.monotonic()))
            if worker.process.is_alive():
                worker.process.kill()
                worker.process.join(timeout=DEATH_GRACE_S)
            worker.conn.close()
            self._slots[slot] = None


def _context() -> Any:
    """A fork server that has imported the training code once (workers then start in milliseconds, with no
    CUDA context or torch threads inherited from the driver); plain spawn where there is no fork server."""
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["lawn.harness.train"])  # ignored if this process's server already runs
    return context


def _exit_text(process: Any) -> str:
    code = process.exitcode
    if code is None:
        return "still running"
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit status {code}"
