"""The results file: JSON Lines, one finished run per line, appended atomically.

A row is encoded to one line (non-finite floats become ``null``) and written with a single ``write`` on a
file opened with ``O_APPEND``, then ``fsync``-ed. A process killed mid-write can at worst leave a final line
without its newline; readers ignore such a line and the next append first cuts it off, so a killed sweep
never leaves a partial row behind and resumes by skipping the keys already present.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any


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
    """Append ``row`` as one line: repair a partial tail, then one ``write`` + ``fsync``."""
    path = Path(path)
    data = encode_row(row)
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
