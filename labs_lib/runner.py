"""Execute every lab notebook in order with papermill into one run folder; print a summary.

    python -m labs_lib.runner --out runs/20261122T170000Z [--only 00,01] [-p profile=cpu]

Before anything runs (and before the run folder is created), every `-p name=value` is checked
against the parameters the selected notebooks declare (`labs_lib.nbparams`): an unknown name
or a value of the wrong type is a one-line error; a name only some notebooks declare goes only
to those. A `--only` that matches no notebook and a run folder that cannot be written are
one-line errors too.

Each notebook runs with the run folder in $LABS_RUN_DIR, so its records and figures land beside
the executed copy. A failing notebook is reported with its failing cell and the run goes on;
the exit code is 0 only if every notebook passed. `summary.md` and `summary.json` are written
to the run folder as well, always: also after Ctrl-C or SIGTERM, with the interrupted notebook
marked 'interrupted' (exit code 130 or 143). A lab measured on a busy machine
(`labs_lib.contention`) is marked in the summary.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import json
import os
import re
import signal
import sys
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

from . import nbparams
from .procs import RELAY_TAG, scoped_env
from .records import REPO_ROOT, BadRecordsWarning, load

NOTEBOOK_DIR = REPO_ROOT / "notebooks"


@dataclass
class Result:
    notebook: str
    status: str  # 'ok' | 'failed' | 'interrupted' | 'not run'
    wall_s: float
    headline: str = ""
    error: str = ""
    busy: str = ""  # why the machine was busy while this lab measured ('' if it was not)
    warnings: list[str] = field(default_factory=list)  # e.g. unreadable lines in records.jsonl
    engine_starts: int = 0  # vLLM engines and servers this lab started (its outputs and worker logs)
    engine_start_s: float = 0.0  # the seconds they took to become ready, together


class Interrupted(KeyboardInterrupt):
    """SIGTERM, turned into an exception so the summary is still written."""


def discover(only: list[str] | None = None, root: Path | None = None) -> list[Path]:
    """The numbered notebooks (NN_name.ipynb) in `root`, in order; `only` filters by NN prefix
    or stem. Every entry of `only` must match a notebook (SystemExit naming it otherwise)."""
    root = root or NOTEBOOK_DIR
    nbs = sorted(root.glob("[0-9][0-9]_*.ipynb"))
    if not only:
        if not nbs:
            raise SystemExit(f"no NN_name.ipynb notebook in {root}")
        return nbs

    def matches(p: Path, o: str) -> bool:
        return p.stem == o or p.stem.split("_")[0] == o

    unknown = [o for o in only if not any(matches(p, o) for p in nbs)]
    if unknown:
        raise SystemExit(f"--only {','.join(only)}: {', '.join(map(repr, unknown))} matched no "
                         f"notebook in {root}; known: {', '.join(p.stem for p in nbs)}")
    return [p for p in nbs if any(matches(p, o) for o in only)]


def parse_params(items: list[str]) -> dict[str, str]:
    """['n=3', 'profile=cpu'] -> {'n': '3', 'profile': 'cpu'}: the raw strings, typed later
    against each notebook's declarations (`nbparams.for_notebooks`).

    >>> parse_params(["n=3", "profile=cpu", "sizes=[1,2]"])
    {'n': '3', 'profile': 'cpu', 'sizes': '[1,2]'}
    """
    out: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise SystemExit(f"-p expects name=value, got {item!r}")
        if key in out:
            raise SystemExit(f"-p {key} given twice ({out[key]!r} and {value!r}); give it once")
        out[key] = value
    return out


def check_params(nbs: list[Path], raw: dict[str, str]) -> nbparams.Plan:
    """Typed parameters per notebook, or SystemExit with one line per problem."""
    try:
        return nbparams.for_notebooks(nbs, raw)
    except ValueError as e:
        raise SystemExit(str(e)) from None


def _folder_fix(e: OSError) -> str:
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        return "free some disk space (old run folders under runs/ can go) or pass --out on another disk"
    if e.errno in (errno.ENOTDIR, errno.EEXIST):
        return "a file is in the way: pass another --out"
    return "make it writable or pass another --out"


def prepare_out(out: Path) -> None:
    """Create the run folder and prove it takes a write; SystemExit with one line if not."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".write-test-{os.getpid()}"
        try:
            with open(probe, "wb") as f:
                f.write(b"\0" * 65536)
                f.flush()
                os.fsync(f.fileno())
        finally:
            probe.unlink(missing_ok=True)
    except OSError as e:
        raise SystemExit(f"cannot write the run folder {out}: {e.strerror or e}; "
                         f"{_folder_fix(e)}") from None


def lab_notes(out: Path, lab: str) -> tuple[str, str]:
    """(headline, busy reason) of a lab from the run's records; never raises: a records
    problem must not abort the run (records.load already skips and names bad lines)."""
    try:
        df = load(out / "records.jsonl")
        if df.empty or "lab" not in df:
            return "", ""
        mine = df[df["lab"] == lab]
        rows = mine[mine["name"] == "headline"]
        head = str(rows["value"].iloc[-1]) if len(rows) else ""
        busy = ""
        if "busy" in mine and "busy_reason" in mine:
            flagged = mine[mine["busy"] == True]  # noqa: E712 (NaN-safe)
            reasons = flagged["busy_reason"].dropna().astype(str).unique().tolist()
            if len(flagged):
                busy = (f"{len(flagged)} of {len(mine)} records measured on a busy machine"
                        + (f" ({reasons[0]})" if reasons else ""))
        return head, busy
    except Exception as e:  # a notebook's result must never be lost to a summary problem
        return f"(records unreadable: {type(e).__name__}: {e})", ""


def headline(out: Path, lab: str) -> str:
    return lab_notes(out, lab)[0]


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


_READY = re.compile(r"vLLM (?:engine|server) ready (?:at \S+ )?in ([\d.]+) s")


def engine_starts(executed: Path, logs: Path, since: float) -> tuple[int, float]:
    """(how many, seconds in all) vLLM engines and servers became ready: the "ready in X s" lines
    that `labs_lib.engine` prints, in the executed notebook's outputs and in the worker logs
    under `logs` written since `since` (a time.time()). A missing or unreadable file counts 0.
    A log line tagged for relay (`procs.report` in a worker) was printed in the notebook too,
    so it is counted there only, once.

    >>> import tempfile
    >>> d = Path(tempfile.mkdtemp())
    >>> _ = (d / "w.log").write_text("vLLM engine ready in 66.5 s\\nvLLM server ready at http://h:1 in 3.5 s\\n")
    >>> engine_starts(d / "missing.ipynb", d, since=0)
    (2, 70.0)
    """
    texts = []
    try:
        cells = json.loads(executed.read_text()).get("cells", [])
        texts += ["".join(o.get("text", "")) for c in cells for o in c.get("outputs", [])
                  if o.get("output_type") == "stream"]
    except (OSError, ValueError):
        pass
    for log in sorted(logs.glob("*.log")) if logs.is_dir() else []:
        try:
            if log.stat().st_mtime >= since:
                texts.append("\n".join(line for line in log.read_text(errors="replace").splitlines()
                                        if RELAY_TAG not in line))  # as relay() reads them
        except OSError:
            pass
    found = [float(m) for t in texts for m in _READY.findall(t)]
    return len(found), round(sum(found), 1)


def run_one(nb: Path, out: Path, parameters: dict[str, object]) -> Result:
    import papermill as pm

    t0, since = time.perf_counter(), time.time()
    try:
        (out / "logs").mkdir(parents=True, exist_ok=True)
        with _stderr_to(out / "logs" / f"{nb.stem}.stderr.log"):
            pm.execute_notebook(str(nb), str(out / nb.name), parameters=parameters,
                                kernel_name="python3", cwd=str(nb.parent), progress_bar=False,
                                log_output=False)
        status, error = "ok", ""
    except pm.PapermillExecutionError as e:
        status, error = "failed", f"cell {e.exec_count}: {e.ename}: {str(e.evalue)[:300]}"
        if e.ename == "KeyboardInterrupt":  # Ctrl-C reached the kernel too
            status, error = "interrupted", f"cell {e.exec_count}: interrupted"
    except Exception as e:  # kernel died, bad notebook file...
        status, error = "failed", f"{type(e).__name__}: {str(e)[:300]}"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        head, busy = lab_notes(out, nb.stem.split("_")[0])
    starts, start_s = engine_starts(out / nb.name, out / "logs", since)
    return Result(nb.stem, status, time.perf_counter() - t0, head, error, busy,
                  [str(w.message) for w in caught if issubclass(w.category, BadRecordsWarning)],
                  starts, start_s)


def summary_table(results: list[Result]) -> str:
    rows = ["| notebook | status | wall time | engine starts | headline |", "|---|---|---|---|---|"]
    for r in results:
        note = r.headline if r.status == "ok" else r.error
        if r.busy:
            note += f" [busy machine: {r.busy}]"
        rows.append(f"| {r.notebook} | {r.status} | {r.wall_s:.0f} s | {_starts(r)} | {note} |")
    if len(results) > 1:
        n, s = sum(r.engine_starts for r in results), sum(r.engine_start_s for r in results)
        rows.append(f"| all | | {sum(r.wall_s for r in results):.0f} s | {_starts(n, s)} | |")
    return "\n".join(rows)


def _starts(n: int | Result, seconds: float = 0.0) -> str:
    """'6 in 410 s' (engine starts and their seconds), or '0'."""
    if isinstance(n, Result):
        n, seconds = n.engine_starts, n.engine_start_s
    return f"{n} in {seconds:.0f} s" if n else "0"


def write_summary(out: Path, results: list[Result]) -> str:
    """summary.md and summary.json in the run folder; a write error is one line on stderr."""
    table = summary_table(results)
    try:
        (out / "summary.md").write_text(table + "\n")
        (out / "summary.json").write_text(json.dumps([asdict(r) for r in results], indent=2))
    except OSError as e:
        print(f"perf-labs: cannot write the summary to {out}: {e.strerror or e}; "
              f"{_folder_fix(e)}", file=sys.stderr, flush=True)
    return table


def _stop_children(keep: set[int], grace: float = 5.0) -> None:
    """Terminate child processes started during this run (kernels); their servers' reapers
    see them go and clean up the servers."""
    import psutil

    me = psutil.Process()
    kids = [p for p in me.children() if p.pid not in keep]
    for p in kids:
        with contextlib.suppress(psutil.Error):
            p.terminate()
    _, alive = psutil.wait_procs(kids, timeout=grace)
    for p in alive:
        with contextlib.suppress(psutil.Error):
            p.kill()


def _on_sigterm(signum: int, frame: object) -> None:
    raise Interrupted("SIGTERM")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--out", required=True, help="run folder to create")
    ap.add_argument("--only", default="", help="comma-separated notebook numbers or names")
    ap.add_argument("-p", "--param", action="append", default=[],
                    help="name=value, checked against each notebook's parameters cell")
    ap.add_argument("--notebooks", default=str(NOTEBOOK_DIR), help="folder of NN_name.ipynb")
    args = ap.parse_args(argv)
    out = Path(args.out).resolve()
    nbs = discover([s.strip() for s in args.only.split(",") if s.strip()], Path(args.notebooks))
    plan = check_params(nbs, parse_params(args.param))
    prepare_out(out)  # only now: a typo above leaves no empty run folder behind
    # the notebooks' kernels inherit the run folder; a caller in Python keeps its own environment
    with scoped_env({"LABS_RUN_DIR": str(out)}):
        return _run(out, nbs, plan)


def _run(out: Path, nbs: list[Path], plan: nbparams.Plan) -> int:
    """Run `nbs` in order into `out` (checked and created by `main`) and write the summary."""
    print(f"perf-labs: {len(nbs)} notebooks -> {out}", flush=True)
    for note in plan.notes:
        print(f"  {note}", flush=True)
    _warn_if_busy()

    import psutil

    before = {p.pid for p in psutil.Process().children()}
    old_term = None
    with contextlib.suppress(ValueError):  # not the main thread: leave SIGTERM alone
        old_term = signal.signal(signal.SIGTERM, _on_sigterm)
    results: list[Result] = []
    interrupted = ""
    t0 = time.perf_counter()
    try:
        for i, nb in enumerate(nbs, 1):
            print(f"[{i}/{len(nbs)}] {nb.stem} ...", end=" ", flush=True)
            t0 = time.perf_counter()
            r = run_one(nb, out, plan.per_notebook[nb.stem])
            results.append(r)
            print(f"{r.status} in {r.wall_s:.0f} s (engine starts: {_starts(r)})  "
                  f"{r.headline if r.status == 'ok' else r.error}"
                  + (f"  [busy machine: {r.busy}]" if r.busy else ""), flush=True)
            for w in r.warnings:
                print(f"  warning: {w}", flush=True)
            if r.status == "interrupted":
                interrupted = "SIGINT"
                break
    except KeyboardInterrupt as e:
        interrupted = "SIGTERM" if isinstance(e, Interrupted) else "SIGINT"
        if len(results) < len(nbs):
            nb = nbs[len(results)]
            head, busy = lab_notes(out, nb.stem.split("_")[0])
            results.append(Result(nb.stem, "interrupted", time.perf_counter() - t0, head,
                                  f"interrupted by {interrupted} (Ctrl-C or kill)", busy))
        print(f"interrupted by {interrupted}", flush=True)
    finally:
        if old_term is not None:
            signal.signal(signal.SIGTERM, old_term)
        if interrupted:
            _stop_children(before)
            results += [Result(nb.stem, "not run", 0.0) for nb in nbs[len(results):]]
        table = write_summary(out, results)
    print("\n" + table)
    failed = [r.notebook for r in results if r.status not in ("ok", "not run")]
    print(f"\n{sum(r.status == 'ok' for r in results)} passed, {len(failed)} failed"
          + (f": {', '.join(failed)}" if failed else "")
          + (f"; interrupted by {interrupted}, summary written" if interrupted else "")
          + f"  (run folder: {out})")
    if interrupted:
        return 143 if interrupted == "SIGTERM" else 130
    return 1 if failed else 0


def _warn_if_busy() -> None:
    from . import contention

    with contextlib.suppress(Exception):
        state = contention.check()
        if state.busy:
            print(f"  WARNING: {state.message()}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
