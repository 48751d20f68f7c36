"""A C++ extension built once per process on first use; after a failed build, one warning and ``None`` for good."""

from __future__ import annotations

from types import ModuleType

from lawn.constraint._warn import warn_at_caller


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
