"""lawn's C++ extension is cached under a name keyed on everything that changes the binary, and a real build says
so on stderr. No compiler runs here: torch's ``load`` is replaced by a fake that writes the cached file."""

from __future__ import annotations

import sys
import sysconfig
from pathlib import Path
from types import ModuleType

import pytest
import torch
from torch.utils import cpp_extension

from lawn.constraint import _lazy_kernel


def test_build_name_is_stable_for_one_environment() -> None:
    assert _lazy_kernel.build_name() == _lazy_kernel.build_name()
    assert _lazy_kernel.build_name().startswith("lawn_kernels_")


@pytest.mark.parametrize(
    "patch",
    [
        lambda mp: mp.setattr(torch, "__version__", torch.__version__ + ".other"),
        lambda mp: mp.setattr(sys, "abiflags", getattr(sys, "abiflags", "") + "t"),
        lambda mp: mp.setattr(
            sysconfig, "get_config_var", lambda n, _g=sysconfig.get_config_var: "x" if n == "EXT_SUFFIX" else _g(n)
        ),
        lambda mp: mp.setenv("CXX", "clang++-17"),
        lambda mp: mp.setattr(_lazy_kernel, "CFLAGS", (*_lazy_kernel.CFLAGS, "-march=native")),
        lambda mp: mp.setattr(torch, "__file__", "/elsewhere/venv/site-packages/torch/__init__.py"),
    ],
    ids=["torch-version", "python-abiflags", "extension-suffix", "compiler", "cflags", "torch-installation"],
)
def test_build_name_changes_with_what_changes_the_binary(monkeypatch: pytest.MonkeyPatch, patch) -> None:
    before = _lazy_kernel.build_name()
    patch(monkeypatch)
    assert _lazy_kernel.build_name() != before


def test_build_name_changes_with_the_sources_and_their_checkout(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    here = _lazy_kernel.build_name()
    for source in _lazy_kernel.CSRC.glob("*.cpp"):
        (tmp_path / source.name).write_bytes(source.read_bytes())
    monkeypatch.setattr(_lazy_kernel, "CSRC", tmp_path)
    before = _lazy_kernel.build_name()
    assert before != here  # the same sources in another checkout: torch's build file names them by path
    (tmp_path / "kernels.cpp").write_bytes((tmp_path / "kernels.cpp").read_bytes() + b"\n// edited\n")
    assert _lazy_kernel.build_name() != before


def test_a_real_build_is_announced_once_and_a_cached_one_is_silent(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    builds: list[str] = []

    def fake_load(name: str, **kwargs: object) -> ModuleType:
        builds.append(name)
        directory = Path(cpp_extension._get_build_directory(name, verbose=False))
        (directory / f"{name}.so").write_bytes(b"")
        return ModuleType(name)

    monkeypatch.setattr(cpp_extension, "load", fake_load)
    build = _lazy_kernel.build_extension.__wrapped__  # past the per-process cache
    build()
    first = capsys.readouterr()
    assert first.out == ""
    assert first.err.count("building lawn's C++ kernel (about a minute, once per machine)") == 1
    assert first.err.count("built lawn's C++ kernel in") == 1
    build()  # another process in the same environment: torch loads the cached build, nothing to say
    assert capsys.readouterr().err == ""
    assert builds == [_lazy_kernel.build_name()] * 2


def test_a_lock_left_by_a_killed_build_is_removed_instead_of_waited_on_forever(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """torch's lock file outlives a build killed midway, and torch would wait on it for good: lawn, holding its own
    OS lock (released when a holder dies), knows such a file is stale and removes it before torch looks."""
    pytest.importorskip("fcntl")  # the OS lock; on Windows torch's lock file alone, as before
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    name = _lazy_kernel.build_name()
    directory = Path(cpp_extension._get_build_directory(name, verbose=False))
    (directory / "lock").write_bytes(b"")  # what a build stopped by Ctrl-C leaves
    seen: list[bool] = []

    def fake_load(name: str, **kwargs: object) -> ModuleType:
        seen.append((directory / "lock").exists())  # torch's load would wait here while the file exists
        (directory / f"{name}.so").write_bytes(b"")
        return ModuleType(name)

    monkeypatch.setattr(cpp_extension, "load", fake_load)
    _lazy_kernel.build_extension.__wrapped__()
    assert seen == [False]
    assert f"removing {directory / 'lock'}" in capsys.readouterr().err


def test_a_build_in_progress_in_another_process_is_waited_for(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """While another live process holds lawn's OS lock (a build in progress), its torch lock file is left alone:
    lawn waits for that build to end, and then loads what it built."""
    pytest.importorskip("fcntl")
    import os
    import subprocess
    import textwrap

    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    name = _lazy_kernel.build_name()
    holder = textwrap.dedent(
        f"""
        import fcntl, time
        from pathlib import Path
        from torch.utils import cpp_extension
        d = Path(cpp_extension._get_build_directory({name!r}, verbose=False))
        h = open(f"{{d}}.flock", "a"); fcntl.flock(h, fcntl.LOCK_EX)
        (d / "lock").write_bytes(b""); print("held", flush=True); time.sleep(2)
        (d / "lock").unlink(); (d / {name + ".so"!r}).write_bytes(b"")
        """
    )
    process = subprocess.Popen([sys.executable, "-c", holder], env=dict(os.environ), stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None and process.stdout.readline().strip() == "held"
        directory = tmp_path / name
        seen: list[tuple[bool, bool]] = []

        def fake_load(name: str, **kwargs: object) -> ModuleType:
            seen.append(((directory / "lock").exists(), (directory / f"{name}.so").exists()))
            return ModuleType(name)

        monkeypatch.setattr(cpp_extension, "load", fake_load)
        _lazy_kernel.build_extension.__wrapped__()
        assert seen == [(False, True)]  # after the other build: its lock gone, its binary there
        assert "removing" not in capsys.readouterr().err
    finally:
        process.wait(timeout=30)
