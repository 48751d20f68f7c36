"""The results file: JSON Lines, one finished run per line, appended atomically.

A row is encoded to one line (non-finite floats become ``null``) and written with a single ``write`` on a
file opened with ``O_APPEND``, then ``fsync``-ed. A process killed mid-write can at worst leave a final line
without its newline; readers ignore such a line and the next append first cuts it off, so a killed sweep
never leaves a partial row behind and resumes by skipping the keys already present.

Several processes may share one results file through :class:`ResultsFile`. Next to ``FILE`` sits
``FILE.lock``, an empty file whose bytes carry POSIX record locks: byte 0 is held while a row is appended
(so no process cuts off, as "partial", a line another one is still writing), and byte ``1 + h(key)`` is held
while the run with that key is being trained (a *claim*). The kernel drops a process's locks when it exits,
however it exits, so a killed sweep leaves no stale claim behind. The last process to close the file removes
``FILE.lock`` (only while no other process holds any lock in it, and every lock taken checks that it locked the
file now at that path), so a finished sweep leaves only its results behind.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
from pathlib import Path
from typing import Any

try:
    import fcntl
except ImportError:  # Windows: no record locks; one sweep per results file there
    fcntl = None  # type: ignore[assignment]


def _clean(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


def encode_row(row: dict[str, Any]) -> bytes:
    return (json.dumps(_clean(row), sort_keys=True, allow_nan=False, separators=(",", ":")) + "\n").encode()


def repair(path: str | Path) -> int:
    """Cut a trailing partial line (no final newline) off ``path``; return the number of bytes removed."""
    path = Path(path)
    if not path.exists():
        return 0
    with open(path, "rb+") as f:
        size = f.seek(0, os.SEEK_END)
        if size == 0:
            return 0
        f.seek(size - 1)
        if f.read(1) == b"\n":
            return 0
        keep = 0
        position = size
        while position > 0:  # find the last newline, reading backwards in blocks
            block = min(65536, position)
            position -= block
            f.seek(position)
            chunk = f.read(block)
            cut = chunk.rfind(b"\n")
            if cut >= 0:
                keep = position + cut + 1
                break
        f.truncate(keep)
        f.flush()
        os.fsync(f.fileno())
        return size - keep


def append_row(path: str | Path, row: dict[str, Any]) -> None:
    """Append ``row`` as one line: repair a partial tail, then one ``write`` + ``fsync`` (under the write lock).

    A process that holds claims on ``path`` must append through its own :class:`ResultsFile` instead: closing
    another descriptor of the lock file would drop all of the process's locks on it (POSIX semantics).
    """
    with ResultsFile(path) as results:
        results.append(row)


def _append_unlocked(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    repair(path)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        written = os.write(fd, data)
        while written < len(data):  # regular files take it in one go; be correct anyway
            written += os.write(fd, data[written:])
        os.fsync(fd)
    finally:
        os.close(fd)


def read_rows(path: str | Path) -> list[dict[str, Any]]:
    """All complete rows of ``path``; a trailing line without newline is ignored (an interrupted write).

    A malformed *complete* line is an error naming the file and line: that is damage, not an interruption.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"results file not found: {path}")
    raw = path.read_bytes()
    lines = raw.split(b"\n")
    complete = lines[:-1]  # the piece after the last newline is empty or partial
    rows = []
    for number, line in enumerate(complete, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}:{number}: not a JSON row ({err.msg})") from err
        if not isinstance(row, dict) or "key" not in row:
            raise ValueError(f"{path}:{number}: not a result row (no 'key')")
        rows.append(row)
    return rows


def completed_keys(path: str | Path) -> set[str]:
    """Keys of the runs already in ``path`` (empty if the file does not exist yet)."""
    return {row["key"] for row in read_rows(path)} if Path(path).is_file() else set()


class ResultsFile:
    """A results file shared safely by the processes that append to it and claim its runs.

    ``written()`` is the set of keys present (read incrementally: only the bytes appended since the last call),
    ``claim(key)`` takes the run's lock without waiting (``False`` if another process holds it),
    ``release(key)`` gives it back, ``append(row)`` writes a row under the write lock. A run is trained only
    by the holder of its claim, and only if ``key`` is not yet in ``written()`` after claiming; the holder
    appends the row before releasing, so no run is trained twice. Use one instance per process and file.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.lock_path = self.path.with_name(self.path.name + ".lock")
        self._fd: int | None = None
        self._claims: set[str] = set()
        self._keys: set[str] = set()
        self._offset = 0
        self._lines = 0

    def __enter__(self) -> ResultsFile:
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def open(self) -> None:
        if self._fd is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o644)

    def close(self) -> None:
        """Close the lock file, which releases every claim this process holds on it; remove it when no other
        process holds a lock in it (the others then lock a new one: see :meth:`_lock`)."""
        if self._fd is not None:
            if fcntl is not None and self._same_file():
                try:
                    fcntl.lockf(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 0, 0)  # the whole file: nobody else in it
                except OSError:
                    pass
                else:
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(self.lock_path)
            os.close(self._fd)
            self._fd = None
        self._claims.clear()

    def _same_file(self) -> bool:
        """Whether ``self._fd`` is the file now at ``lock_path`` (not one removed since it was opened)."""
        assert self._fd is not None
        try:
            now = os.stat(self.lock_path)
        except FileNotFoundError:
            return False
        mine = os.fstat(self._fd)
        return (mine.st_dev, mine.st_ino) == (now.st_dev, now.st_ino)

    def _lock(self, offset: int, blocking: bool) -> bool:
        if fcntl is None:
            return True
        if self._fd is None:
            self.open()
        flags = fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB)
        while True:
            try:
                fcntl.lockf(self._fd, flags, 1, offset)
            except OSError:  # EACCES or EAGAIN: another process holds it
                return False
            if self._claims or self._same_file():
                return True
            # the last other user removed the file after we opened it: lock the one at the path instead
            fcntl.lockf(self._fd, fcntl.LOCK_UN, 1, offset)
            os.close(self._fd)
            self._fd = None
            self.open()

    def _unlock(self, offset: int) -> None:
        if fcntl is not None and self._fd is not None:
            fcntl.lockf(self._fd, fcntl.LOCK_UN, 1, offset)

    @staticmethod
    def _claim_offset(key: str) -> int:
        return 1 + int(hashlib.sha256(key.encode()).hexdigest()[:15], 16)  # < 2**60: any 64-bit off_t

    def claim(self, key: str) -> bool:
        """Take the claim on ``key`` (held until ``release`` or exit); ``False`` if another process holds it."""
        if key in self._claims:
            return True
        if not self._lock(self._claim_offset(key), blocking=False):
            return False
        self._claims.add(key)
        return True

    def release(self, key: str) -> None:
        if key in self._claims:
            self._claims.discard(key)
            self._unlock(self._claim_offset(key))

    def append(self, row: dict[str, Any]) -> None:
        """Append ``row`` (one line, ``fsync``-ed) while holding the write lock."""
        data = encode_row(row)
        self._lock(0, blocking=True)
        try:
            _append_unlocked(self.path, data)
        finally:
            self._unlock(0)

    def written(self) -> set[str]:
        """Keys of the complete rows in the file now (reads only what was appended since the last call)."""
        if not self.path.is_file():
            self._keys, self._offset, self._lines = set(), 0, 0
            return set(self._keys)
        with open(self.path, "rb") as f:
            size = f.seek(0, os.SEEK_END)
            if size < self._offset:  # the file was replaced or cut: read it again from the start
                self._keys, self._offset, self._lines = set(), 0, 0
            f.seek(self._offset)
            data = f.read(size - self._offset)
        end = data.rfind(b"\n") + 1  # a line still being written (or cut off by a kill) is not a row yet
        for line in data[:end].split(b"\n")[:-1]:
            self._lines += 1
            if line.strip():
                self._keys.add(_row_key(line, self.path, self._lines))
        self._offset += end
        return set(self._keys)


def _row_key(line: bytes, path: Path, number: int) -> str:
    try:
        row = json.loads(line)
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}:{number}: not a JSON row ({err.msg})") from err
    if not isinstance(row, dict) or "key" not in row:
        raise ValueError(f"{path}:{number}: not a result row (no 'key')")
    return row["key"]
