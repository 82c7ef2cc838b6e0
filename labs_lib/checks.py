"""Checks of the laws a lab states: print each as PASS/FAIL, record it, fail loudly.

    verify({"decode batch 1 left of ridge": intensity < ridge}, rec)

Each check's name should carry its measured values and tolerance, so the printed line (and the
record) says why it passed or failed. A failing check raises AssertionError listing the failures,
which makes papermill and nbval report the notebook as failed.

>>> verify({"2 > 1": 2 > 1})
PASS 2 > 1
>>> verify({"1 > 2": 1 > 2})
Traceback (most recent call last):
...
AssertionError: failed checks: ['1 > 2']
"""

from __future__ import annotations

from typing import Any


def verify(checks: dict[str, Any], rec: Any = None) -> None:
    """Print PASS/FAIL for each named check, write them to `rec` (a records.Recorder) if given,
    and raise AssertionError if any failed."""
    if not checks:
        raise ValueError("checks must not be empty: a check that checks nothing cannot fail")
    failed = []
    for name, ok in checks.items():
        ok = bool(ok)
        print(("PASS " if ok else "FAIL ") + name)
        if rec is not None:
            rec.write("check", ok, "bool", check=name)
        if not ok:
            failed.append(name)
    if failed:
        raise AssertionError(f"failed checks: {failed}")
