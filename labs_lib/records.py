"""Results as records: one JSON object per line, written atomically, read back as a DataFrame.

A record is what was measured plus everything needed to interpret it later:

    {"lab": "00", "name": "hbm_bandwidth", "value": 2.9e12, "unit": "B/s",
     "params": {...}, "fingerprint": {...}, "time_utc": "..."}

This module is the one place that decides where a run's files go (`run_dir()`):
`$LABS_RUN_DIR` when set (the runner and `make test` set it), else `runs/interactive/`
under the repository. Records go to `<run_dir>/records.jsonl`, figures to `<run_dir>/figures/`.

Appends are atomic: the file is rewritten to a temporary file and renamed over the old one,
so a crash (or two kernels writing at once) never leaves a half-written line.

>>> import tempfile, os
>>> d = tempfile.mkdtemp()
>>> p = append({"lab": "xx", "name": "demo", "value": 1.5, "unit": "s"}, path=os.path.join(d, "r.jsonl"))
>>> load(p)[["name", "value"]].to_dict("records")
[{'name': 'demo', 'value': 1.5}]
"""

from __future__ import annotations

import datetime as dt
import fcntl
import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any

import pandas as pd

REPO_ROOT = Path(__file__).resolve().parents[1]
RECORDS_FILE = "records.jsonl"


def run_dir() -> Path:
    """Folder of the current run: $LABS_RUN_DIR, else <repo>/runs/interactive (created)."""
    d = Path(os.environ.get("LABS_RUN_DIR") or REPO_ROOT / "runs" / "interactive")
    d.mkdir(parents=True, exist_ok=True)
    return d


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
    """Append one record (a dict) to `path` (default: this run's records.jsonl), atomically."""
    if not isinstance(record, dict):
        raise ValueError(f"record must be a dict, got {type(record).__name__}")
    for key in ("lab", "name"):
        if key not in record:
            raise ValueError(f"record needs a {key!r} key, got keys {sorted(record)}")
    rec = {"time_utc": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"), **record}
    line = json.dumps(_jsonable(rec), sort_keys=False) + "\n"
    path = Path(path) if path is not None else records_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_suffix(path.suffix + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # two writers never lose each other's lines
        old = path.read_bytes() if path.exists() else b""
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".records-")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(old + line.encode())
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    return path


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
               "params": self.params, "fingerprint": self.fingerprint}
        append(rec, self.path)
        return rec

    def headline(self, text: str) -> None:
        """The one-line result the runner's summary table shows for this lab."""
        append({"lab": self.lab, "name": "headline", "value": text, "unit": "text"}, self.path)

    def frame(self) -> pd.DataFrame:
        df = load(self.path)
        return df[df["lab"] == self.lab].reset_index(drop=True) if len(df) else df


def save_table(df: pd.DataFrame, name: str) -> Path:
    """Write a per-item table (e.g. one row per request) as `<run_dir>/tables/<name>.csv`,
    atomically. Records hold summaries; tables hold the raw samples behind them."""
    d = run_dir() / "tables"
    d.mkdir(parents=True, exist_ok=True)
    path = d / f"{name}.csv"
    fd, tmp = tempfile.mkstemp(dir=d, prefix=".table-")
    os.close(fd)
    df.to_csv(tmp, index=False)
    os.replace(tmp, path)
    return path


def load(path: str | os.PathLike | None = None) -> pd.DataFrame:
    """All records of a file as a flat DataFrame (nested keys become 'params.x' columns)."""
    path = Path(path) if path is not None else records_path()
    if not path.exists():
        return pd.DataFrame()
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return pd.json_normalize(rows)
