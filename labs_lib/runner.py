"""Execute every lab notebook in order with papermill into one run folder; print a summary.

    python -m labs_lib.runner --out runs/20261122T170000Z [--only 00,01] [-p profile=cpu]

Each notebook runs with the run folder in $LABS_RUN_DIR, so its records and figures land beside
the executed copy. A failing notebook is reported with its failing cell and the run goes on;
the exit code is 0 only if every notebook passed. `summary.md` and `summary.json` are written
to the run folder as well.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from .records import REPO_ROOT, load

NOTEBOOK_DIR = REPO_ROOT / "notebooks"


@dataclass
class Result:
    notebook: str
    status: str  # 'ok' | 'failed'
    wall_s: float
    headline: str = ""
    error: str = ""


def discover(only: list[str] | None = None) -> list[Path]:
    """The numbered notebooks (NN_name.ipynb), in order; `only` filters by NN prefix or stem."""
    nbs = sorted(NOTEBOOK_DIR.glob("[0-9][0-9]_*.ipynb"))
    if only:
        nbs = [p for p in nbs if any(p.stem == o or p.stem.split("_")[0] == o for o in only)]
        if not nbs:
            raise SystemExit(f"--only {','.join(only)} matched no notebook in {NOTEBOOK_DIR}")
    return nbs


def parse_params(items: list[str]) -> dict[str, object]:
    """['n=3', 'profile=cpu'] -> {'n': 3, 'profile': 'cpu'} (values parsed as JSON if possible).

    >>> parse_params(["n=3", "profile=cpu", "sizes=[1,2]"])
    {'n': 3, 'profile': 'cpu', 'sizes': [1, 2]}
    """
    out: dict[str, object] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SystemExit(f"-p expects name=value, got {item!r}")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def headline(out: Path, lab: str) -> str:
    df = load(out / "records.jsonl")
    if df.empty or "lab" not in df:
        return ""
    rows = df[(df["lab"] == lab) & (df["name"] == "headline")]
    return str(rows["value"].iloc[-1]) if len(rows) else ""


@contextlib.contextmanager
def _stderr_to(path: Path):
    """Send this process's stderr, and so the kernel's (which inherits it), to `path`: kernel
    warnings and engine logs stay out of the one-line-per-notebook progress."""
    sys.stderr.flush()
    saved = os.dup(2)
    with open(path, "ab") as f:
        os.dup2(f.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)


def run_one(nb: Path, out: Path, parameters: dict[str, object]) -> Result:
    import papermill as pm

    t0 = time.perf_counter()
    (out / "logs").mkdir(parents=True, exist_ok=True)
    try:
        with _stderr_to(out / "logs" / f"{nb.stem}.stderr.log"):
            pm.execute_notebook(str(nb), str(out / nb.name), parameters=parameters,
                                kernel_name="python3", cwd=str(nb.parent), progress_bar=False,
                                log_output=False)
        status, error = "ok", ""
    except pm.PapermillExecutionError as e:
        status, error = "failed", f"cell {e.exec_count}: {e.ename}: {str(e.evalue)[:300]}"
    except Exception as e:  # kernel died, bad notebook file...
        status, error = "failed", f"{type(e).__name__}: {str(e)[:300]}"
    return Result(nb.stem, status, time.perf_counter() - t0, headline(out, nb.stem.split("_")[0]),
                  error)


def summary_table(results: list[Result]) -> str:
    rows = ["| notebook | status | wall time | headline |", "|---|---|---|---|"]
    for r in results:
        note = r.headline if r.status == "ok" else r.error
        rows.append(f"| {r.notebook} | {r.status} | {r.wall_s:.0f} s | {note} |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--out", required=True, help="run folder to create")
    ap.add_argument("--only", default="", help="comma-separated notebook numbers or names")
    ap.add_argument("-p", "--param", action="append", default=[], help="name=value for every notebook")
    args = ap.parse_args(argv)
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    os.environ["LABS_RUN_DIR"] = str(out)
    nbs = discover([s for s in args.only.split(",") if s])
    parameters = parse_params(args.param)
    print(f"perf-labs: {len(nbs)} notebooks -> {out}", flush=True)
    results: list[Result] = []
    for i, nb in enumerate(nbs, 1):
        print(f"[{i}/{len(nbs)}] {nb.stem} ...", end=" ", flush=True)
        r = run_one(nb, out, parameters)
        results.append(r)
        print(f"{r.status} in {r.wall_s:.0f} s  {r.headline if r.status == 'ok' else r.error}",
              flush=True)
    table = summary_table(results)
    (out / "summary.md").write_text(table + "\n")
    (out / "summary.json").write_text(json.dumps([asdict(r) for r in results], indent=2))
    print("\n" + table)
    failed = [r.notebook for r in results if r.status != "ok"]
    print(f"\n{len(results) - len(failed)} passed, {len(failed)} failed"
          + (f": {', '.join(failed)}" if failed else "") + f"  (run folder: {out})")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
