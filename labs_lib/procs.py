"""Subprocesses that always die with their owner: servers for the labs (vLLM, the mock server).

`ManagedProcess` starts a command under a small reaper (`python -m labs_lib.procs`) in a new
process group. The reaper watches the process that started it (the owner) and the command:

- the owner disappears without cleaning up (kernel restart, `kill -9`, a crash): the reaper sends
  SIGTERM to everything the command started, waits `grace` seconds, then SIGKILLs whatever is
  left, even processes that ignore SIGTERM. Its own SIGTERM handler only starts that shutdown;
  it never exits before the group is gone;
- the command exits by itself (crash, out of memory) while processes it started still run (the
  engine core of a vLLM server): those are stopped at once the same way. Nobody can use them
  any more and they hold memory, ports or a GPU; the owner learns the exit code right away.

The reaper is a child subreaper (Linux), so processes that leave the group are still found as
its descendants, and the command gets SIGKILL if the reaper itself is killed. Normal exits,
errors and KeyboardInterrupt go through `stop()` (context manager and `atexit`).

A process started with `url=` is a server: when a request to that URL fails with a connection
error, `raise_if_exited(url)` turns the bare "Connection refused" into ServerExitedError with the
exit code and the log's last lines (the client and load generator call it).

Logs go to `<run folder>/logs/` unless `log_path` is given. `grace` defaults to
$LABS_PROCS_GRACE or 20 seconds. A process started with `$LABS_RELAY` set (`RELAY_ENV`) tags
its progress lines (`report`); `relay()` prints the new ones where its owner prints, so a
notebook cell that waits on a worker shows how far it got.

>>> import sys, tempfile, os
>>> log = os.path.join(tempfile.mkdtemp(), "demo.log")
>>> with ManagedProcess([sys.executable, "-c", "print('hi')"], name="demo", log_path=log) as p:
...     _ = p.wait(timeout=30)
>>> "hi" in p.log_text(), p.exit_code()
(True, 0)
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import ctypes
import itertools
import os
import signal
import socket
import subprocess
import sys
import time
import weakref
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import IO, Any
from urllib.parse import urlsplit

_LIVE: weakref.WeakSet[ManagedProcess] = weakref.WeakSet()
_COUNTER = itertools.count(1)
_TAG = "[labs_lib.procs]"
RELAY_ENV = "LABS_RELAY"  # set in a process whose owner relays its progress lines
RELAY_TAG = "[labs_lib.relay] "


def report(msg: str) -> None:
    """Print a progress line. In a process started with `RELAY_ENV` set, whose output goes to
    a log file, the line is tagged so that its owner's `relay()` shows it; elsewhere it is a
    plain print.

    >>> report("point 1 of 3 done")
    point 1 of 3 done
    """
    print(f"{RELAY_TAG}{msg}" if os.environ.get(RELAY_ENV) else msg, flush=True)


class ServerStartError(RuntimeError):
    """A server exited or did not become healthy in time; the message holds its log tail."""


class ServerExitedError(RuntimeError):
    """A server exited while it was in use (killed, out of memory, crashed); the message holds
    its exit code, its log's path and the log's last lines."""


def default_grace() -> float:
    """Seconds between SIGTERM and SIGKILL: $LABS_PROCS_GRACE, else 20."""
    try:
        return max(0.0, float(os.environ.get("LABS_PROCS_GRACE", "20")))
    except ValueError:
        return 20.0


def describe_exit(code: int) -> str:
    """An exit code in words; 128+N and -N are death by signal N.

    >>> describe_exit(137)
    'code 137 (killed by SIGKILL: out of memory, or kill -9)'
    >>> describe_exit(1)
    'code 1'
    """
    sig = -code if code < 0 else code - 128 if 128 < code < 160 else 0
    try:
        name = signal.Signals(sig).name if sig else ""
    except ValueError:
        name = ""
    if not name:
        return f"code {code}"
    why = {"SIGKILL": ": out of memory, or kill -9", "SIGSEGV": ": crashed",
           "SIGABRT": ": aborted", "SIGTERM": ": asked to stop"}.get(name, "")
    return f"code {code} (killed by {name}{why})"


def _normalize(code: int) -> int:
    """Death by signal N as 128+N, as a shell reports it (Popen gives -N)."""
    return 128 - code if code < 0 else code


@contextlib.contextmanager
def scoped_env(env: dict[str, str | None]) -> Iterator[None]:
    """Set (str) or unset (None) environment variables inside the block; every one gets its
    previous value back (or is unset again) on exit, errors included. The library's one way to
    change `os.environ`: nothing it does leaves the caller's environment changed for good.

    >>> os.environ["LABS_X"] = "old"
    >>> with scoped_env({"LABS_X": "new", "LABS_Y": "1"}):
    ...     os.environ["LABS_X"], os.environ["LABS_Y"]
    ('new', '1')
    >>> os.environ.pop("LABS_X"), "LABS_Y" in os.environ
    ('old', False)
    """
    old = {k: os.environ.get(k) for k in env}
    try:
        for k, v in env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _default_log(name: str) -> Path:
    from .records import run_dir  # lazily: the reaper itself must not import pandas

    logs = run_dir() / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    return logs / f"{name}-{time.strftime('%H%M%S')}-{os.getpid()}-{next(_COUNTER)}.log"


class ManagedProcess:
    """A command run in its own process group, logged to a file, killed with its owner."""

    _relayed = 0  # bytes of the log that relay() has read (per instance once it has read some)

    def __init__(self, cmd: Sequence[str], *, name: str = "proc", env: dict[str, str] | None = None,
                 log_path: str | os.PathLike | None = None, cwd: str | None = None,
                 unset: Sequence[str] = (), url: str | None = None, grace: float | None = None):
        self.name, self.url = name, url
        self.cmd = [str(c) for c in cmd]
        self.grace = default_grace() if grace is None else float(grace)
        self.log_path = Path(log_path) if log_path is not None else _default_log(name)
        self._log: IO[bytes] | None = open(self.log_path, "wb")  # closed by stop()
        self._code: int | None = None
        status_r, status_w = os.pipe()  # the reaper writes the command's exit code here
        os.set_blocking(status_r, False)
        reaper = [sys.executable, "-m", "labs_lib.procs", str(os.getpid()), "--grace",
                  f"{self.grace:g}", "--status-fd", str(status_w), "--name", name, "--"]
        full_env = {k: v for k, v in {**os.environ, **(env or {})}.items() if k not in unset}
        pkg_root = str(Path(__file__).resolve().parents[1])
        full_env["PYTHONPATH"] = os.pathsep.join(
            p for p in (pkg_root, full_env.get("PYTHONPATH", "")) if p)
        try:
            self.proc = subprocess.Popen(reaper + self.cmd, stdout=self._log,
                                         stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         env=full_env, cwd=cwd, start_new_session=True,
                                         pass_fds=(status_w,))
        except BaseException:
            os.close(status_r)
            self._log.close()
            raise
        finally:
            os.close(status_w)
        self._status_r: int | None = status_r
        self.pgid = self.proc.pid  # session leader: its pid is the group id
        _LIVE.add(self)

    # -- state
    def exit_code(self) -> int | None:
        """The command's exit code once it has exited (128+N: killed by signal N), else None.
        Known as soon as the command exits, before the reaper has cleaned up after it."""
        if self._code is None and self._status_r is not None:
            try:
                data = os.read(self._status_r, 64)
            except BlockingIOError:
                data = None
            if data:
                with contextlib.suppress(ValueError):
                    self._code = int(data.split()[0])
            elif data == b"":  # the reaper is gone without a word
                self._close_status()
        if self._code is None and self.proc.poll() is not None:
            self._code = _normalize(self.proc.returncode)
        return self._code

    def alive(self) -> bool:
        """The command has not exited."""
        return self.exit_code() is None

    def wait(self, timeout: float | None = None) -> int:
        """Wait until the command has exited and the reaper has cleaned up; its exit code."""
        self.proc.wait(timeout=timeout)
        code = self.exit_code()
        return _normalize(self.proc.returncode) if code is None else code

    def pids(self) -> list[int]:
        """Live processes of the group (the reaper, the command and what it started)."""
        return group_pids(self.pgid)

    def log_text(self, tail_chars: int | None = None) -> str:
        if self._log is not None and not self._log.closed:
            self._log.flush()
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return text[-tail_chars:] if tail_chars else text

    def relay(self, out: Any = None) -> int:
        """Print (to `out`, default stdout) the progress lines (`report`) that reached the log
        since the last call, without their tag; a line still being written waits for the next
        call. Returns how many it printed."""
        if self._log is not None and not self._log.closed:
            self._log.flush()
        try:
            with open(self.log_path, "rb") as f:
                f.seek(self._relayed)
                data = f.read()
        except OSError:
            return 0
        end = data.rfind(b"\n") + 1
        self._relayed += end
        tag = RELAY_TAG.encode()
        lines = [ln[ln.index(tag) + len(tag):].decode(errors="replace")
                 for ln in data[:end].splitlines() if tag in ln]
        for ln in lines:
            print(ln, file=out or sys.stdout, flush=True)
        return len(lines)

    def check(self, doing: str = "") -> None:
        """Raise ServerExitedError if the command has exited (`doing` says what we were doing)."""
        code = self.exit_code()
        if code is not None:
            where = f" while serving {self.url}" if self.url else ""
            raise ServerExitedError(
                f"{self.name} exited with {describe_exit(code)}{where}{doing}; log {self.log_path}, "
                f"last lines:\n{self.log_text(3000)}")

    def wait_until(self, ready: Callable[[], bool], *, timeout: float, what: str = "ready",
                   interval: float = 0.5) -> float:
        """Poll `ready()` until True; raise ServerStartError (with the log tail) if the process
        exits first or `timeout` seconds pass. Returns the seconds it took."""
        t0 = time.perf_counter()
        while True:
            code = self.exit_code()
            if code is not None:
                raise ServerStartError(
                    f"{self.name} exited with {describe_exit(code)} before it was {what}. "
                    f"Log {self.log_path}, last lines:\n{self.log_text(3000)}")
            try:
                if ready():
                    return time.perf_counter() - t0
            except Exception:  # not listening yet
                pass
            if time.perf_counter() - t0 > timeout:
                self.stop()
                raise ServerStartError(
                    f"{self.name} was not {what} after {timeout:.0f} s (raise the timeout if the "
                    f"machine is slow). Log {self.log_path}, last lines:\n{self.log_text(3000)}")
            time.sleep(interval)

    # -- shutdown
    def stop(self, grace: float | None = None) -> None:
        """SIGTERM the whole group, then SIGKILL what is left after `grace` seconds."""
        grace = self.grace if grace is None else grace
        if self._running() or group_pids(self.pgid):
            _signal_group(self.pgid, signal.SIGTERM)
            deadline = time.monotonic() + grace
            while time.monotonic() < deadline and (self._running() or group_pids(self.pgid)):
                time.sleep(0.05)
            _signal_group(self.pgid, signal.SIGKILL)
        self._join(5)
        self.exit_code()
        self._close_status()
        if self._log is not None and not self._log.closed:
            self._log.close()
        _LIVE.discard(self)

    def _running(self) -> bool:
        """The process this object started (here the reaper) has not exited."""
        return self.proc.poll() is None

    def _join(self, timeout: float) -> None:
        """Wait up to `timeout` seconds for that process to be gone."""
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=timeout)

    def _close_status(self) -> None:
        if self._status_r is not None:
            with contextlib.suppress(OSError):
                os.close(self._status_r)
            self._status_r = None

    def __enter__(self) -> ManagedProcess:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


class ForkedProcess(ManagedProcess):
    """A `ManagedProcess` whose command is a Python function, forked from a multiprocessing
    forkserver `ctx` that has already imported what the function needs (on a CPU, a vLLM server
    or engine otherwise spends 8-12 s importing torch and vLLM again). Same interface: its own
    session (stopped as a group), its log on stdout and stderr, the owner's environment plus
    `env` without `unset`, a `url` for servers; `wait` raises `subprocess.TimeoutExpired`.

    No reaper: when its owner dies, a thread of the process SIGKILLs its group; the forkserver
    exits too, and the process, and every process it forks, gets SIGKILL when its parent dies
    (the parent-death signal) in case one of them left the group. `stop()` (context manager,
    `atexit`) stops the whole group.

    >>> import multiprocessing, tempfile, os
    >>> log = os.path.join(tempfile.mkdtemp(), "demo.log")
    >>> with ForkedProcess(multiprocessing.get_context("fork"), print, ("hi",), log_path=log) as p:
    ...     _ = p.wait(timeout=60)
    >>> "hi" in p.log_text(), p.exit_code()
    (True, 0)
    """

    def __init__(self, ctx: Any, target: Callable[..., object], args: Sequence[object] = (), *,
                 name: str = "proc", env: dict[str, str] | None = None,
                 log_path: str | os.PathLike | None = None, unset: Sequence[str] = (),
                 url: str | None = None, grace: float | None = None):
        self.name, self.url = name, url
        self.cmd = [f"{getattr(target, '__module__', '?')}.{getattr(target, '__qualname__', target)}",
                    *map(str, args)]
        self.grace = default_grace() if grace is None else float(grace)
        self.log_path = Path(log_path) if log_path is not None else _default_log(name)
        self.log_path.write_bytes(b"")
        self._log = None
        self._code = None
        self._status_r = None
        full_env = {k: v for k, v in {**os.environ, **(env or {})}.items() if k not in unset}
        self.proc = ctx.Process(target=_forked_entry, args=(target, tuple(args), str(self.log_path), full_env),
                                name=name)
        self.proc.start()
        self.pgid = self.proc.pid  # it calls setsid() first: its pid is its group's id
        _LIVE.add(self)

    def exit_code(self) -> int | None:
        if self._code is None and self.proc.exitcode is not None:
            self._code = _normalize(self.proc.exitcode)
        return self._code

    def wait(self, timeout: float | None = None) -> int:
        self.proc.join(timeout)
        code = self.exit_code()
        if code is None:
            raise subprocess.TimeoutExpired(self.cmd, timeout or 0)
        return code

    def _running(self) -> bool:
        return self.exit_code() is None

    def _join(self, timeout: float) -> None:
        self.proc.join(timeout)


def _forked_entry(target: Callable[..., object], args: tuple, log_path: str, env: dict[str, str]) -> None:
    """The first thing a `ForkedProcess` runs: a session of its own; its group SIGKILLed when
    the owner dies (a thread waits on the owner's end of a pipe), itself when its parent (the
    forkserver) dies, each process it forks when it dies; the log as stdout and stderr; the
    owner's environment. Then `target(*args)`."""
    import threading
    from multiprocessing import forkserver, parent_process

    os.setsid()
    with contextlib.suppress(OSError, TypeError):  # multiprocessing hands each child the write end
        os.close(forkserver._forkserver._forkserver_alive_fd)  # of the pipe the forkserver lives
        # by; without it here, the forkserver ends with its owner, not with the last child
    _prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    os.register_at_fork(after_in_child=lambda: _prctl(_PR_SET_PDEATHSIG, signal.SIGKILL))
    owner = parent_process()  # the process that started us (the forkserver only forked us)
    if owner is not None:
        threading.Thread(target=_kill_group_when_ready, args=(owner.sentinel,), daemon=True,
                         name="owner-watch").start()
    fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    sys.stdout = open(1, "w", buffering=1, closefd=False)  # noqa: SIM115 (the process's own streams)
    sys.stderr = open(2, "w", buffering=1, closefd=False)  # noqa: SIM115
    os.environ.clear()
    os.environ.update(env)
    try:
        target(*args)
    finally:
        sys.stdout.flush()
        sys.stderr.flush()


def _kill_group_when_ready(sentinel: int) -> None:
    """Block until `sentinel` (the owner's end of a pipe) is readable: the owner died. Then
    SIGKILL this process's group."""
    from multiprocessing.connection import wait

    wait([sentinel])
    os.killpg(0, signal.SIGKILL)


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def group_pids(pgid: int, exclude: int | None = None) -> list[int]:
    """Live (not zombie) processes in process group `pgid` (and, for the reaper, its own
    descendants, which may have left the group), without `exclude`."""
    import psutil

    pids: set[int] = set()
    for p in psutil.process_iter(["status"]):
        try:
            if p.info["status"] != psutil.STATUS_ZOMBIE and os.getpgid(p.pid) == pgid:
                pids.add(p.pid)
        except (ProcessLookupError, PermissionError, psutil.Error):
            continue
    if exclude is not None:
        with contextlib.suppress(psutil.Error):
            pids |= {c.pid for c in psutil.Process(exclude).children(recursive=True)
                     if c.status() != psutil.STATUS_ZOMBIE}
        pids.discard(exclude)
    return sorted(pids)


def _same_server(a: str, b: str) -> bool:
    """'http://127.0.0.1:8000/v1' and 'http://localhost:8000' name the same local server."""
    ua, ub = urlsplit(a), urlsplit(b)
    local = {"127.0.0.1", "localhost", "0.0.0.0", "::1"}
    ha, hb = ua.hostname or "", ub.hostname or ""
    return ua.port == ub.port and (ha == hb or (ha in local and hb in local))


def serving(url: str) -> ManagedProcess | None:
    """The managed process started with a URL that names the same server as `url`, if any."""
    for p in list(_LIVE):
        if p.url and _same_server(p.url, url):
            return p
    return None


def raise_if_exited(url: str, *, settle: float = 2.0, doing: str = "") -> None:
    """After a connection error to `url`: if the managed server behind it has exited (waiting up
    to `settle` seconds for the exit to be seen), raise ServerExitedError; else return."""
    p = serving(url)
    deadline = time.monotonic() + settle
    while p is not None:
        p.check(doing)
        if time.monotonic() >= deadline:
            return
        time.sleep(0.05)


async def raise_if_exited_async(url: str, *, settle: float = 2.0, doing: str = "") -> None:
    """`raise_if_exited` for async code: waits without blocking the event loop."""
    p = serving(url)
    deadline = time.monotonic() + settle
    while p is not None:
        p.check(doing)
        if time.monotonic() >= deadline:
            return
        await asyncio.sleep(0.05)


@atexit.register
def _stop_all() -> None:
    for p in list(_LIVE):
        p.stop(grace=min(p.grace, 5))


# -- the reaper: python -m labs_lib.procs OWNER [--grace S] [--status-fd N] [--name N] -- CMD

_PR_SET_PDEATHSIG, _PR_SET_CHILD_SUBREAPER = 1, 36


_LIBC: ctypes.CDLL | None = None


def _prctl(option: int, value: int) -> None:
    global _LIBC
    if sys.platform.startswith("linux"):
        with contextlib.suppress(Exception):
            _LIBC = _LIBC or ctypes.CDLL(None, use_errno=True)
            _LIBC.prctl(option, value, 0, 0, 0)


def _child_setup(reaper: int) -> Callable[[], None]:
    """Runs in the command before exec: it gets SIGKILL if the reaper dies (the reaper is
    single-threaded, so the parent-death signal cannot fire early)."""
    def setup() -> None:
        _prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() != reaper:  # the reaper died before the line above took effect
            os._exit(1)
    return setup


def _say(msg: str) -> None:
    print(f"{_TAG} {msg}", flush=True)


class _Reaper:
    def __init__(self, owner: int, cmd: list[str], grace: float, status_fd: int | None,
                 name: str = ""):
        self.owner, self.cmd, self.grace, self.status_fd = owner, cmd, grace, status_fd
        self.name = name or Path(cmd[0]).name
        self.me, self.pgid = os.getpid(), os.getpgid(0)
        self.stop_reason = ""
        self.code: int | None = None
        self.child: subprocess.Popen | None = None

    def on_signal(self, signum: int, frame: object) -> None:
        # Only starts the shutdown: the reaper is in the group it signals, and must outlive it.
        self.stop_reason = self.stop_reason or f"asked to stop ({signal.Signals(signum).name})"

    def collect(self) -> None:
        """Reap every exited child (the command, and orphans handed to us as subreaper)."""
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            if self.child is not None and pid == self.child.pid:
                self.child.returncode = os.waitstatus_to_exitcode(status)
                self.code = _normalize(self.child.returncode)
                _say(f"{self.name} exited with {describe_exit(self.code)}")
                if self.status_fd is not None:
                    with contextlib.suppress(OSError):
                        os.write(self.status_fd, f"{self.code}\n".encode())

    def others(self) -> list[int]:
        return group_pids(self.pgid, exclude=self.me)

    def terminate_all(self, why: str) -> None:
        """SIGTERM everything else, wait `grace`, SIGKILL what is left, until nothing is."""
        left = self.others()
        if not left:
            return
        _say(f"{why}: SIGTERM to {len(left)} process(es) {left}")
        _signal_group(self.pgid, signal.SIGTERM)  # reaches us too: on_signal only notes it
        for pid in left:  # descendants that left the group
            with contextlib.suppress(ProcessLookupError, PermissionError):
                if os.getpgid(pid) != self.pgid:
                    os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + self.grace
        while time.monotonic() < deadline:
            self.collect()
            if not self.others():
                return
            time.sleep(0.05)
        hard_deadline = time.monotonic() + 30
        while (left := self.others()) and time.monotonic() < hard_deadline:
            _say(f"still running after {self.grace:g} s: SIGKILL to {left}")
            for pid in left:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.05)
            self.collect()

    def run(self, poll: float = 0.1) -> int:
        _prctl(_PR_SET_CHILD_SUBREAPER, 1)
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, self.on_signal)
        _prctl(_PR_SET_PDEATHSIG, 0)  # load libc before fork: the child only calls it
        self.child = subprocess.Popen(self.cmd, preexec_fn=_child_setup(self.me))
        while True:
            self.collect()
            if os.getppid() != self.owner:  # re-parented: the owner died
                self.stop_reason = self.stop_reason or f"owner {self.owner} exited"
            if self.stop_reason:
                self.terminate_all(self.stop_reason)
                self.collect()
                return self.code if self.code is not None else 128 + signal.SIGTERM
            if self.code is not None:
                self.terminate_all(f"{self.name} exited, leaving processes behind")
                self.collect()
                return self.code
            time.sleep(poll)


def _main(argv: list[str]) -> int:
    usage = ("usage: python -m labs_lib.procs OWNER_PID [--grace S] [--status-fd N] [--name N] "
             "-- CMD...")
    if "--" not in argv:
        sys.exit(usage)
    i = argv.index("--")
    head, cmd = argv[:i], argv[i + 1:]
    if not head or not cmd:
        sys.exit(usage)
    opts = dict(zip(head[1::2], head[2::2], strict=False))
    try:
        owner = int(head[0])
        grace = float(opts.get("--grace", default_grace()))
        status_fd = int(opts["--status-fd"]) if "--status-fd" in opts else None
    except ValueError:
        sys.exit(usage)
    return _Reaper(owner, cmd, grace, status_fd, opts.get("--name", "")).run()


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
