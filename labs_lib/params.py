"""Parameter checks that fail fast, before any heavy work, with a message that names the fix.

Every public function in labs_lib that takes a size, a count or a choice checks it here, so a
typo in a notebook's parameters cell fails in milliseconds instead of after an engine start.

>>> positive_int("repeats", 5)
5
>>> positive_int("repeats", 0)
Traceback (most recent call last):
...
ValueError: repeats must be an int >= 1, got 0
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def int_in_range(name: str, value: Any, lo: int, hi: int | None = None) -> int:
    """Return `value` if it is an int in [lo, hi]; else raise ValueError naming `name`.

    >>> int_in_range("block_size", 16, 1, 256)
    16
    """
    allowed = f">= {lo}" if hi is None else f"in [{lo}, {hi}]"
    if not _is_int(value) or value < lo or (hi is not None and value > hi):
        raise ValueError(f"{name} must be an int {allowed}, got {value!r}")
    return value


def positive_int(name: str, value: Any) -> int:
    """An int >= 1 (counts, sizes, repeats)."""
    return int_in_range(name, value, 1)


def non_negative_int(name: str, value: Any) -> int:
    """An int >= 0 (warm-up counts)."""
    return int_in_range(name, value, 0)


def positive_float(name: str, value: Any, hi: float | None = None) -> float:
    """A real number > 0 (and <= hi when given).

    >>> positive_float("gpu_memory_utilization", 0.9, hi=1.0)
    0.9
    """
    ok = isinstance(value, int | float) and not isinstance(value, bool) and value > 0
    if ok and hi is not None and value > hi:
        ok = False
    if not ok:
        allowed = "> 0" if hi is None else f"in (0, {hi}]"
        raise ValueError(f"{name} must be a number {allowed}, got {value!r}")
    return float(value)


def choice(name: str, value: Any, allowed: Iterable[Any]) -> Any:
    """`value` if it is one of `allowed`; else ValueError listing them.

    >>> choice("dtype", "bf16", ["fp32", "bf16"])
    'bf16'
    """
    allowed = list(allowed)
    if value not in allowed:
        raise ValueError(f"{name} must be one of {allowed}, got {value!r}")
    return value


def positive_ints(name: str, values: Any) -> list[int]:
    """A non-empty list of ints >= 1 (sweep points).

    >>> positive_ints("batch_sizes", [1, 8])
    [1, 8]
    """
    if isinstance(values, str | bytes) or not isinstance(values, Iterable):
        raise ValueError(f"{name} must be a non-empty list of ints >= 1, got {values!r}")
    out = list(values)
    if not out or not all(_is_int(v) and v >= 1 for v in out):
        raise ValueError(f"{name} must be a non-empty list of ints >= 1, got {values!r}")
    return out
