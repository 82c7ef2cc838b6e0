"""Results as records: one JSON object per line, written atomically, read back as a DataFrame.

A record is what was measured plus everything needed to interpret it later:

    {"lab": "00", "name": "hbm_bandwidth", "value": 2.9e12, "unit": "B/s",
     "params": {...}, "fingerprint": {...}, "time_utc": "...", "commit": "3f2c1ab+dirty"}

This module is the one place that decides where a run's files go (`run_dir()`):
`$LABS_RUN_DIR` when set (the runner and `make test` set it), else `runs/interactive/`
under the repository. Records go to `<run_dir>/records.jsonl`, figures to `<run_dir>/figures/`.

Appends never rewrite the file: each record is one line, written with one `write` call on the
file opened in append mode, under an exclusive lock (two kernels writing at once never interleave
or lose a line). Earlier records are never touched, so a crash loses at most the line being
written; the next append starts on a fresh line. Files are created readable by everyone (0644
under the usual umask), like any other file the user writes.

Every record carries `commit`, the commit its code ran from (`commit()`): `$LABS_COMMIT` when
set (a GPU host whose copy of .git is stale exports it), else the checkout's short hash with
`+dirty` when tracked files differ from it, else None (an installed wheel, no git).

Reading never loses good records to a bad line: `load` skips lines that are truncated, not JSON
or not an object, keeps every other record and warns once, naming the file and the line numbers.
Records written while the machine is busy with other work carry `busy: true` and a
`busy_reason` (see `labs_lib.contention`).

>>> import tempfile, os
>>> d = tempfile.mkdtemp()
>>> p = append({"lab": "xx", "name": "demo", "value": 1.5, "unit": "s"}, path=os.path.join(d, "r.jsonl"))
>>> load(p)[["name", "value"]].to_dict("records")
[{'name': 'demo', 'value': 1.5}]
"""

from __future__ import annotations

import datetime as dt
import errno
import fcntl
import functools
import json
import math
import os
import subprocess
import tempfile
import warnings
from pathlib import Path
from typing import Any

import pandas as pd

REPO_ROOT = Path(__file__).resolve().parents[1]
RECORDS_FILE = "records.jsonl"


class BadRecordsWarning(UserWarning):
    """Some lines of a records file could not be read; the good records were kept."""


class RecordsWriteError(OSError):
    """A record or table could not be written (read-only folder, full disk); names the fix."""


def _default_runs_root() -> Path:
    """<repo>/runs in a checkout of this repository; ./runs where the package is installed
    (never inside site-packages)."""
    if (REPO_ROOT / "pyproject.toml").exists() and (REPO_ROOT / "notebooks").is_dir():
        return REPO_ROOT / "runs"
    return Path.cwd() / "runs"


def run_dir() -> Path:
    """Folder of the current run: $LABS_RUN_DIR, else runs/interactive (created) under the
    checkout, or under the current directory when the package is installed from a wheel."""
    d = Path(os.environ.get("LABS_RUN_DIR") or _default_runs_root() / "interactive")
    try:
        d.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise _write_error(d, e) from None
    return d


def _write_error(path: Path, e: OSError) -> RecordsWriteError:
    """One clear line: which path, why, and what to do."""
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        fix = "free some disk space or point LABS_RUN_DIR (runner: --out) at another disk"
    else:
        fix = "make the folder writable or point LABS_RUN_DIR (runner: --out) elsewhere"
    return RecordsWriteError(e.errno, f"cannot write {path}: {e.strerror or e}; {fix}")


def _umask() -> int:
    """This process's umask, read without changing it where Linux allows."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    old = os.umask(0o022)
    os.umask(old)
    return old


def _publish(tmp: str | Path, path: Path) -> None:
    """Give a mkstemp file (mode 0600) the mode a plain open() would, then rename it."""
    os.chmod(tmp, 0o666 & ~_umask())
    os.replace(tmp, path)


def figures_dir() -> Path:
    d = run_dir() / "figures"
    d.mkdir(parents=True, exist_ok=True)
    return d


def records_path() -> Path:
    return run_dir() / RECORDS_FILE


def _jsonable(x: Any) -> Any:
    """Plain JSON types only: numpy scalars -> Python, NaN/inf -> None, paths -> str."""
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_jsonable(v) for v in x]
    if hasattr(x, "item") and not isinstance(x, str | bytes):  # numpy / torch scalars
        try:
            x = x.item()
        except (ValueError, TypeError):
            return str(x)
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, str | int | float | bool) or x is None:
        return x
    return str(x)


def append(record: dict[str, Any], path: str | os.PathLike | None = None) -> Path:
    """Append one record (a dict) to `path` (default: this run's records.jsonl) as one line,
    with `time_utc` and `commit` added; earlier lines are left as they are."""
    if not isinstance(record, dict):
        raise ValueError(f"record must be a dict, got {type(record).__name__}")
    for key in ("lab", "name"):
        if key not in record:
            raise ValueError(f"record needs a {key!r} key, got keys {sorted(record)}")
    rec = {"time_utc": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"), "commit": commit(),
           **record}
    line = json.dumps(_jsonable(rec), sort_keys=False) + "\n"
    path = Path(path) if path is not None else records_path()
    try:
        _append_line(path, line.encode())
    except RecordsWriteError:
        raise
    except OSError as e:
        raise _write_error(path, e) from None
    return path


def _append_line(path: Path, line: bytes) -> None:
    """Add `line` at the end of `path` with one write call; earlier bytes are never rewritten."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+b", buffering=0) as f:  # append mode: every write lands at the end
        fcntl.flock(f, fcntl.LOCK_EX)  # two writers never interleave; released on close
        size = f.seek(0, os.SEEK_END)
        if size:
            f.seek(size - 1)
            if f.read(1) != b"\n":  # a line cut short by a crash must not swallow this one
                line = b"\n" + line
        done = f.write(line)
        while done < len(line):  # only a full disk writes part of a line; the rest raises
            done += f.write(line[done:])
        os.fsync(f.fileno())


def git_commit(root: str | os.PathLike) -> str | None:
    """Short hash of HEAD of the git checkout whose top level is `root`, with `+dirty` when
    tracked files differ from it (untracked files do not count); None when git is missing or
    `root` is not the top of a checkout (e.g. site-packages, even inside a checkout's .venv).

    >>> import tempfile
    >>> git_commit(tempfile.mkdtemp()) is None  # not a checkout
    True
    """
    root = Path(root).resolve()

    def git(*args: str) -> str | None:
        try:
            p = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True,
                               timeout=10, env={**os.environ, "GIT_OPTIONAL_LOCKS": "0"})
        except (OSError, subprocess.SubprocessError):
            return None
        return p.stdout if p.returncode == 0 else None

    out = git("rev-parse", "--show-toplevel", "--short", "HEAD")
    lines = out.splitlines() if out else []
    if len(lines) != 2 or Path(lines[0]).resolve() != root:
        return None
    status = git("status", "--porcelain", "--untracked-files=no")
    if status is None:
        return None
    return lines[1] + ("+dirty" if status.strip() else "")


@functools.cache
def commit() -> str | None:
    """The commit this process's code comes from, for every record: `$LABS_COMMIT` when set,
    else `git_commit` of this repository, else None. Computed once per process.

    >>> c = commit()  # e.g. '3f2c1ab', '3f2c1ab+dirty', or None outside a checkout
    >>> c is None or len(c.removesuffix("+dirty")) >= 7
    True
    """
    return os.environ.get("LABS_COMMIT") or git_commit(REPO_ROOT)


class Recorder:
    """Writes records that share a lab id, a fingerprint and parameters.

    >>> import tempfile, os
    >>> rec = Recorder("xx", fingerprint={"gpu": "none"}, params={"n": 3},
    ...                path=os.path.join(tempfile.mkdtemp(), "r.jsonl"))
    >>> _ = rec.write("latency_p50", 0.012, "s", batch=4)
    >>> rec.frame()[["name", "value", "batch", "params.n"]].values.tolist()
    [['latency_p50', 0.012, 4, 3]]
    """

    def __init__(
        self,
        lab: str,
        fingerprint: dict[str, Any] | None = None,
        params: dict[str, Any] | None = None,
        path: str | os.PathLike | None = None,
    ):
        self.lab, self.fingerprint, self.params = lab, fingerprint or {}, params or {}
        self.path = Path(path) if path is not None else records_path()

    def write(self, name: str, value: Any, unit: str, **extra: Any) -> dict[str, Any]:
        """One measured value with its unit; `extra` holds the point's own coordinates."""
        rec = {"lab": self.lab, "name": name, "value": value, "unit": unit, **extra,
               "params": self.params, "fingerprint": self.fingerprint, **_busy_flag()}
        append(rec, self.path)
        return rec

    def headline(self, text: str) -> None:
        """The one-line result the runner's summary table shows for this lab."""
        append({"lab": self.lab, "name": "headline", "value": text, "unit": "text",
                **_busy_flag()}, self.path)

    def frame(self) -> pd.DataFrame:
        df = load(self.path)
        return df[df["lab"] == self.lab].reset_index(drop=True) if len(df) else df


def save_table(df: pd.DataFrame, name: str) -> Path:
    """Write a per-item table (e.g. one row per request) as `<run_dir>/tables/<name>.csv`,
    atomically. Records hold summaries; tables hold the raw samples behind them."""
    d = run_dir() / "tables"
    path = d / f"{name}.csv"
    tmp = None
    try:
        d.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=d, prefix=".table-")
        os.close(fd)
        df.to_csv(tmp, index=False)
        _publish(tmp, path)
    except OSError as e:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        raise _write_error(path, e) from None
    return path


def _busy_flag() -> dict[str, Any]:
    """{'busy': bool[, 'busy_reason': str]} from a cached contention check; {} if it fails."""
    try:
        from . import contention

        state = contention.cached()
    except Exception:  # a measurement is never lost to the contention check
        return {}
    return {"busy": True, "busy_reason": state.reason()} if state.busy else {"busy": False}


_WARNED: set[tuple[str, tuple[int, ...]]] = set()


def read_lines(path: str | os.PathLike) -> tuple[list[dict[str, Any]], list[int]]:
    """(the records of a JSON-lines file, the 1-based numbers of lines that are not records).

    >>> import tempfile, os
    >>> p = os.path.join(tempfile.mkdtemp(), "r.jsonl")
    >>> _ = open(p, "w").write('{"lab": "a", "name": "x"}\\n{"lab": "a", "na\\n[1]\\n\\n{"lab": "b", "name": "y"}\\n')
    >>> rows, bad = read_lines(p)
    >>> [r["name"] for r in rows], bad
    (['x', 'y'], [2, 3])
    """
    rows: list[dict[str, Any]] = []
    bad: list[int] = []
    with open(path, "rb") as f:
        for i, raw in enumerate(f, 1):
            if not raw.strip():
                continue
            try:
                rec = json.loads(raw.decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError):
                rec = None
            if isinstance(rec, dict):
                rows.append(rec)
            else:
                bad.append(i)
    return rows, bad


def load(path: str | os.PathLike | None = None) -> pd.DataFrame:
    """All records of a file as a flat DataFrame (nested keys become 'params.x' columns).

    Lines that are not records (cut short by a crash or a full disk, edited by hand) are
    skipped with one BadRecordsWarning naming the file and the lines; every good record is kept.
    """
    path = Path(path) if path is not None else records_path()
    if not path.exists():
        return pd.DataFrame()
    rows, bad = read_lines(path)
    if bad and (str(path), tuple(bad)) not in _WARNED:
        _WARNED.add((str(path), tuple(bad)))
        shown = ", ".join(map(str, bad[:10])) + (f" and {len(bad) - 10} more" if len(bad) > 10 else "")
        warnings.warn(f"{path}: skipped {len(bad)} line{'s' if len(bad) > 1 else ''} that "
                      f"{'are' if len(bad) > 1 else 'is'} not a JSON record (line "
                      f"{shown}: cut short or edited?); kept the other {len(rows)} records. "
                      "Fix or delete those lines to silence this.", BadRecordsWarning, stacklevel=2)
    return pd.json_normalize(rows) if rows else pd.DataFrame()
