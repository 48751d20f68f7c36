"""lawn's C++ extension (``csrc/kernels.cpp``), built once per process on first use; after a failed build, one
warning and ``None`` for good."""

from __future__ import annotations

import functools
import hashlib
from pathlib import Path
from types import ModuleType

from lawn.constraint._warn import warn_at_caller

CSRC = Path(__file__).with_name("csrc")


@functools.cache
def build_extension() -> ModuleType:
    """Compile (or load from torch's extension cache) ``csrc/kernels.cpp``, which includes both kernels' sources.

    torch keys its cache on the files it is given, not on what they include, so the extension's name carries a
    hash of every source: an edited kernel is rebuilt, never loaded stale.
    """
    from torch.utils import cpp_extension

    digest = hashlib.sha256(b"".join(p.read_bytes() for p in sorted(CSRC.glob("*.cpp")))).hexdigest()[:12]
    return cpp_extension.load(
        name=f"lawn_kernels_{digest}",
        sources=[str(CSRC / "kernels.cpp")],
        # OpenMP: at::parallel_for runs on torch's intra-op threads; no errno from sqrt, so that it vectorises
        extra_cflags=["-O3", "-fopenmp", "-fno-math-errno"],
        extra_ldflags=["-fopenmp"],
        verbose=False,
    )


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
