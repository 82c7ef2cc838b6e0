"""Is this machine busy with other work? Measurements taken while it is are flagged.

Two runs at once on a 2-core machine each ran their engine about 30 times slower, and the slower
one recorded its TTFT as a result. A timing only describes the machine when the machine was
ours, so `check()` looks for work that is not ours:

- CPU time used by processes outside our own process tree, in cores. Ours are this process,
  its ancestors (the runner, pytest, the Jupyter server) and its descendants (our servers, engines
  and workers), so our own engine's load never counts against us;
- other vLLM servers or engines, and other labs' experiment workers, that are not ours;
- the 1-minute load average far above the number of cores.

The CPU share is measured between two snapshots of every process's CPU time: the previous check
and now (the first check waits a fraction of a second). So a check right after a measurement
covers that measurement. `cached()` reuses a check for a few seconds: `records.Recorder` calls it
on every write and marks records `busy: true` with a `busy_reason`; `labs_lib.setup()` and the
runner print a warning. Set LABS_CONTENTION_CHECK=0 to turn the check off.

>>> prev = {1: Proc(1, 0.0, 10.0, "python", "python other.py")}
>>> cur = {1: Proc(1, 0.0, 11.8, "python", "python other.py")}
>>> s = evaluate(prev, cur, ours=set(), seconds=1.0, cores=2, load1=1.0)
>>> s.busy, s.reason()
(True, 'other processes used 1.8 of 2 cores (pid 1 python 1.8)')
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

ENGINE_MARKERS = ("vllm.entrypoints", "labs_lib.experiments", "labs_lib.vllm_serve")
# A CPU-tier engine (server or worker) is forked from a forkserver and has its command line, as
# has the idle forkserver itself, which another notebook (or a test run) keeps: such a process
# counts as an engine only while it works.
FORKSERVER = "multiprocessing.forkserver"
MAX_AGE_S = 5.0


@dataclass(frozen=True)
class Proc:
    """One process in a snapshot: CPU seconds so far (user + system), name and command line."""

    pid: int
    create_time: float
    cpu_s: float
    name: str = ""
    cmdline: str = ""


@dataclass
class State:
    """The verdict: busy or not, and why, with the numbers behind it."""

    busy: bool
    reasons: list[str] = field(default_factory=list)
    cores: int = 1
    load1: float = 0.0
    foreign_cores: float = 0.0  # CPU used by processes that are not ours, in cores
    top: list[tuple[int, float, str]] = field(default_factory=list)  # (pid, cores, name), busiest first
    engines: list[str] = field(default_factory=list)  # other engines: "pid N: command"

    def reason(self) -> str:
        return "; ".join(self.reasons)

    def message(self) -> str:
        """The warning a lab prints.

        >>> State(True, ["load average 9.0 on 2 cores"]).message()
        'this machine is busy with other work (load average 9.0 on 2 cores): timings measured now are slower than this machine can do and are marked busy in the records. Stop the other work (see README, "When something goes wrong") and re-run for clean numbers.'
        """
        if not self.busy:
            return "this machine is not busy with other work"
        return (f"this machine is busy with other work ({self.reason()}): timings measured now "
                "are slower than this machine can do and are marked busy in the records. Stop "
                'the other work (see README, "When something goes wrong") and re-run for clean '
                "numbers.")


def cores() -> int:
    """CPU cores this process may use: its affinity, capped by a cgroup CPU quota if any."""
    n = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    try:
        quota, period = open("/sys/fs/cgroup/cpu.max").read().split()[:2]
        if quota != "max":
            n = min(n, max(1, round(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return max(1, n)


def is_engine(p: Proc) -> bool:
    """A vLLM server or engine, or a labs experiment worker (not the reaper that watches one).

    >>> is_engine(Proc(7, 0, 0, "python", "python -m vllm.entrypoints.openai.api_server --port 1"))
    True
    >>> is_engine(Proc(8, 0, 0, "VLLM::EngineCore", "VLLM::EngineCore"))
    True
    """
    if "labs_lib.procs" in p.cmdline:
        return False
    argv = p.cmdline.split()
    serve = len(argv) > 1 and os.path.basename(argv[0]) == "vllm" and argv[1] == "serve"
    return serve or p.name.startswith("VLLM::") or any(m in p.cmdline for m in ENGINE_MARKERS)


def evaluate(prev: Mapping[int, Proc], cur: Mapping[int, Proc], *, ours: set[int],
             seconds: float, cores: int, load1: float, min_cores: float | None = None) -> State:
    """The verdict from two snapshots `seconds` apart. Busy when processes that are not `ours`
    used at least `min_cores` (default max(0.5, cores / 4)), when another engine runs, or when
    the load average exceeds twice the cores."""
    min_cores = max(0.5, cores / 4) if min_cores is None else min_cores
    used: list[tuple[int, float, str]] = []
    engines: list[str] = []
    for pid, p in cur.items():
        if pid in ours:
            continue
        before = prev.get(pid)
        if before is not None and before.create_time == p.create_time:
            delta = p.cpu_s - before.cpu_s
        else:  # started since the last snapshot: all its CPU time is new
            delta = p.cpu_s
        if delta > 0:
            used.append((pid, delta / max(seconds, 1e-3), p.name))
        if is_engine(p) and (delta / max(seconds, 1e-3) >= 0.05 or FORKSERVER not in p.cmdline):
            engines.append(f"pid {pid}: {p.cmdline[:120]}")
    used.sort(key=lambda x: -x[1])
    foreign = sum(c for _, c, _ in used)
    reasons = []
    if foreign >= min_cores:
        top = ", ".join(f"pid {pid} {name} {c:.1f}" for pid, c, name in used[:3] if c >= 0.05)
        reasons.append(f"other processes used {foreign:.1f} of {cores} cores ({top})")
    if engines:
        reasons.append(f"{len(engines)} other vLLM engine or lab worker process"
                       f"{'es' if len(engines) > 1 else ''} running ({engines[0]})")
    if load1 > 2 * cores:
        reasons.append(f"load average {load1:.1f} on {cores} cores")
    return State(bool(reasons), reasons, cores, load1, foreign, used, engines)


def our_tree() -> set[int]:
    """This process, its ancestors and its descendants: work that is ours."""
    import psutil

    me = psutil.Process()
    pids = {me.pid}
    try:
        pids |= {p.pid for p in me.parents()}
    except psutil.Error:
        pass
    try:
        pids |= {p.pid for p in me.children(recursive=True)}
    except psutil.Error:
        pass
    return pids


def snapshot() -> dict[int, Proc]:
    """Every visible process's CPU time now."""
    import psutil

    out: dict[int, Proc] = {}
    for p in psutil.process_iter(["create_time", "cpu_times", "name", "cmdline"]):
        info = p.info
        t = info.get("cpu_times")
        if t is None:
            continue
        out[p.pid] = Proc(p.pid, info.get("create_time") or 0.0, t.user + t.system,
                          info.get("name") or "", " ".join(" ".join(info.get("cmdline") or []).split()))
    return out


_last: tuple[float, dict[int, Proc]] | None = None
_cache: tuple[float, State] | None = None


def check(window: float = 0.5) -> State:
    """Look now. The CPU share covers the time since the previous check (if 0.2 s to 10 min
    ago), else a fresh `window`-second sample."""
    global _last, _cache
    if os.environ.get("LABS_CONTENTION_CHECK", "1") in ("0", "false", "no", "off"):
        return State(False, [], cores())
    prev = _last
    if prev is None or not 0.2 <= time.monotonic() - prev[0] <= 600:
        prev = (time.monotonic(), snapshot())
        time.sleep(window)
    now, cur = time.monotonic(), snapshot()
    _last = (now, cur)
    state = evaluate(prev[1], cur, ours=our_tree(), seconds=now - prev[0], cores=cores(),
                     load1=os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0)
    _cache = (now, state)
    return state


def cached(max_age: float = MAX_AGE_S) -> State:
    """The last check if younger than `max_age` seconds, else a new one."""
    if _cache is not None and time.monotonic() - _cache[0] <= max_age:
        return _cache[1]
    return check()


def free_cores(state: State | None = None) -> int:
    """Cores left for our threads: this machine's cores less what other processes used (rounded),
    at least 1.

    >>> free_cores(State(True, [], cores=2, foreign_cores=1.0)), free_cores(State(False, [], cores=2, foreign_cores=0.2))
    (1, 2)
    """
    s = cached() if state is None else state
    return max(1, s.cores - round(s.foreign_cores))


def threads(state: State | None = None) -> int:
    """How many threads an engine or a measurement on this CPU should use: OMP_NUM_THREADS if
    set, else `free_cores`. A thread of a parallel region that waits for a core another process
    holds makes the whole region wait: on a 2-core machine with one core busy, vLLM-CPU with 2
    threads ran a batch-8 decode step in 390 ms instead of about 26; with 1 thread it is about
    twice as slow as unloaded, and steady."""
    env = os.environ.get("OMP_NUM_THREADS", "")
    return int(env) if env.isdigit() and int(env) > 0 else free_cores(state)


def fit_threads(state: State | None = None) -> int:
    """Size this process's OpenMP/torch thread pool to `threads()` (CPU measurements and the
    in-process CPU engine run on it); say so when that is fewer than the machine's cores.
    Returns the count."""
    n = threads(state)
    try:
        import torch
    except ImportError:
        return n
    # torch._C's own setter: vLLM-CPU replaces torch.set_num_threads with a no-op once an engine
    # has bound its threads, and a later engine in this process must still be sized
    if torch.get_num_threads() != n:
        torch._C.set_num_threads(n)
    if n < cores():
        print(f"using {n} of {cores()} cores for threads (the others are busy): OMP_NUM_THREADS "
              "overrides", file=sys.stderr, flush=True)
    return n


def warn_if_busy() -> State:
    """Check, and print the warning to stderr (shown in a notebook's output) when busy."""
    state = check()
    if state.busy:
        print(f"WARNING: {state.message()}", file=sys.stderr, flush=True)
    return state
