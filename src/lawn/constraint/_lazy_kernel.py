"""lawn's C++ extension (``csrc/kernels.cpp``), built once per machine and environment on first use; after a failed
build, one warning and ``None`` for good."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import sys
import sysconfig
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

try:
    import fcntl
except ImportError:  # Windows: no flock, torch's own lock file alone
    fcntl = None  # type: ignore[assignment]

from lawn.constraint._warn import warn_at_caller

CSRC = Path(__file__).with_name("csrc")
# OpenMP: at::parallel_for runs on torch's intra-op threads; no errno from sqrt, so that it vectorises
CFLAGS = ("-O3", "-fopenmp", "-fno-math-errno")
LDFLAGS = ("-fopenmp",)


def build_inputs() -> dict[str, Any]:
    """Everything that changes the compiled binary or its build commands: the sources and where they are (the
    build file names them by path, so another checkout would rebuild over this one's), torch (version and
    installation, whose headers and libraries it is built against), the Python ABI, the compiler and its flags."""
    import torch

    return {
        "sources": hashlib.sha256(b"".join(p.read_bytes() for p in sorted(CSRC.glob("*.cpp")))).hexdigest(),
        "checkout": str(CSRC.resolve()),
        "torch": torch.__version__,
        "torch_dir": str(Path(torch.__file__).resolve().parent),
        "python": f"{sys.implementation.cache_tag}{getattr(sys, 'abiflags', '')}",
        "abi": sysconfig.get_config_var("EXT_SUFFIX") or "",
        "compiler": os.environ.get("CXX", "c++"),
        "cflags": list(CFLAGS),
        "ldflags": list(LDFLAGS),
    }


def build_name(inputs: dict[str, Any] | None = None) -> str:
    """The extension's name, ``lawn_kernels_<hash of build_inputs()>``.

    torch caches a build under its name and keys it on the files it is given, not on what they include nor on the
    environment; with one name per combination, two checkouts or virtual environments used in turn on one machine
    each keep their own build instead of rebuilding over each other's, and an edited kernel is never loaded stale.
    """
    data = json.dumps(build_inputs() if inputs is None else inputs, sort_keys=True).encode()
    return f"lawn_kernels_{hashlib.sha256(data).hexdigest()[:16]}"


def _is_built(name: str) -> bool:
    """Whether torch's extension cache already holds the compiled ``name`` (then loading it takes no build)."""
    from torch.utils import cpp_extension

    try:
        directory = Path(cpp_extension._get_build_directory(name, verbose=False))
    except Exception:  # a torch without the helper: say nothing rather than something wrong
        return True
    return any((directory / f"{name}{suffix}").is_file() for suffix in (".so", ".pyd"))


@contextlib.contextmanager
def _build_lock(name: str) -> Iterator[None]:
    """Hold an OS lock on ``<build directory>.flock`` while torch builds or loads ``name``.

    torch's own lock is a file (``<build directory>/lock``) that a build removes when it ends; a build killed
    midway (Ctrl-C, a job's time limit) leaves it, and every later process then waits for it forever, silently.
    The OS releases a ``flock`` when its holder dies, and every lawn process takes it before torch's lock, so a
    torch lock file found while holding it was left by a dead build: lawn says so and removes it.
    """
    from torch.utils import cpp_extension

    if fcntl is None:
        yield
        return
    try:
        directory = Path(cpp_extension._get_build_directory(name, verbose=False))
    except Exception:  # a torch without the helper: torch's lock alone, as before
        yield
        return
    with open(f"{directory}.flock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            stale = directory / "lock"
            if stale.exists():
                print(
                    f"lawn: removing {stale}, left by a build of lawn's C++ kernel that was stopped midway",
                    file=sys.stderr,
                    flush=True,
                )
                stale.unlink(missing_ok=True)
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@functools.cache
def build_extension() -> ModuleType:
    """Compile (or load from torch's extension cache) ``csrc/kernels.cpp``, which includes both kernels' sources.

    A real build says so on stderr, once before and once when done: it takes about a minute of CPU.
    """
    from torch.utils import cpp_extension

    name = build_name()
    with _build_lock(name):
        building = not _is_built(name)
        if building:
            print("lawn: building lawn's C++ kernel (about a minute, once per machine)...", file=sys.stderr, flush=True)
        started = time.monotonic()
        module = cpp_extension.load(
            name=name,
            sources=[str(CSRC / "kernels.cpp")],
            extra_cflags=list(CFLAGS),
            extra_ldflags=list(LDFLAGS),
            verbose=False,
        )
    if building:
        print(f"lawn: built lawn's C++ kernel in {time.monotonic() - started:.0f} s", file=sys.stderr, flush=True)
    return module


class LazyKernel:
    """Subclasses set ``what`` / ``instead`` and ``_build`` (a call to their module's ``build``, looked up at call
    time, so tests can patch it); ``module`` and ``failed`` are per subclass."""

    module: ModuleType | None = None
    failed: bool = False
    what = "the kernel"
    instead = "the unfused path"

    @staticmethod
    def _build() -> ModuleType:
        raise NotImplementedError

    @classmethod
    def get(cls) -> ModuleType | None:
        if cls.module is None and not cls.failed:
            try:
                cls.module = cls._build()
            except Exception as error:  # no compiler, no ninja, a compile error: warn once, use the other path
                cls.failed = True
                warn_at_caller(
                    f"lawn: building {cls.what} failed ({type(error).__name__}: {error}); using {cls.instead} instead"
                )
        return cls.module
