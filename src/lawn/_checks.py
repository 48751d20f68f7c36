"""Argument checks shared by the library: what counts as an integer or a number argument.

``True`` is an ``int`` to Python, but never a sensible count, size or rate, so both predicates refuse ``bool``.
The callers keep their own messages (each names its argument and the fix); these decide only the type.
"""

from __future__ import annotations

from typing import Any


def is_int(value: Any) -> bool:
    """``value`` is an ``int`` and not a ``bool``."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: Any) -> bool:
    """``value`` is an ``int`` or a ``float`` and not a ``bool``."""
    return isinstance(value, int | float) and not isinstance(value, bool)
