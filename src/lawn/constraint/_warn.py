"""Warnings that point at the user's line (the ``opt.step()`` call), not into lawn or torch."""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import torch

_INSIDE = (str(Path(__file__).resolve().parents[1]), str(Path(torch.__file__).resolve().parent))


def caller_stacklevel() -> int:
    """The ``stacklevel`` of the first frame outside lawn's and torch's source, seen from the caller of this."""
    frame, level = sys._getframe(1), 1
    while frame is not None and str(Path(frame.f_code.co_filename).resolve()).startswith(_INSIDE):
        frame, level = frame.f_back, level + 1
    return level


def warn_at_caller(message: str, category: type[Warning] = RuntimeWarning) -> None:
    """``warnings.warn`` attributed to the user's code that called into lawn."""
    warnings.warn(message, category, stacklevel=caller_stacklevel())
