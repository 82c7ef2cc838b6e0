"""Subprocesses that always die with their owner: servers for the labs (vLLM, the mock server).

`ManagedProcess` starts a command under a small reaper (`python -m labs_lib.procs`) in a new
process group. The reaper watches the process that started it; if that process disappears
without cleaning up (kernel restart, `kill -9`, a crash), the reaper kills the whole group, so no
server is left holding a port or GPU memory. Normal exits, errors and KeyboardInterrupt go
through `stop()` (context manager and `atexit`), which sends SIGTERM to the group and SIGKILL
after a grace period.

>>> import sys
>>> with ManagedProcess([sys.executable, "-c", "print('hi')"], name="demo") as p:
...     _ = p.wait(timeout=30)
>>> "hi" in p.log_text()
True
"""

from __future__ import annotations

import atexit
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import weakref
from collections.abc import Callable, Sequence
from pathlib import Path

_LIVE: weakref.WeakSet[ManagedProcess] = weakref.WeakSet()


class ServerStartError(RuntimeError):
    """A server exited or did not become healthy in time; the message holds its log tail."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ManagedProcess:
    """A command run in its own process group, logged to a file, killed with its owner."""

    def __init__(self, cmd: Sequence[str], *, name: str = "proc", env: dict[str, str] | None = None,
                 log_path: str | os.PathLike | None = None, cwd: str | None = None,
                 unset: Sequence[str] = ()):
        self.name = name
        self.cmd = [str(c) for c in cmd]
        if log_path is None:
            fd, log_path = tempfile.mkstemp(prefix=f"{name}-", suffix=".log")
            os.close(fd)
        self.log_path = Path(log_path)
        self._log = open(self.log_path, "wb")
        reaper = [sys.executable, "-m", "labs_lib.procs", str(os.getpid()), "--"]
        full_env = {k: v for k, v in {**os.environ, **(env or {})}.items() if k not in unset}
        pkg_root = str(Path(__file__).resolve().parents[1])
        full_env["PYTHONPATH"] = os.pathsep.join(
            p for p in (pkg_root, full_env.get("PYTHONPATH", "")) if p)
        self.proc = subprocess.Popen(reaper + self.cmd, stdout=self._log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, env=full_env, cwd=cwd,
                                     start_new_session=True)
        self.pgid = self.proc.pid  # session leader: its pid is the group id
        _LIVE.add(self)

    # -- state
    def alive(self) -> bool:
        return self.proc.poll() is None

    def wait(self, timeout: float | None = None) -> int:
        return self.proc.wait(timeout=timeout)

    def log_text(self, tail_chars: int | None = None) -> str:
        if not self._log.closed:
            self._log.flush()
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return text[-tail_chars:] if tail_chars else text

    def wait_until(self, ready: Callable[[], bool], *, timeout: float, what: str = "ready",
                   interval: float = 0.5) -> float:
        """Poll `ready()` until True; raise ServerStartError (with the log tail) if the process
        exits first or `timeout` seconds pass. Returns the seconds it took."""
        t0 = time.perf_counter()
        while True:
            if not self.alive():
                raise ServerStartError(
                    f"{self.name} exited with code {self.proc.returncode} before it was {what}. "
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
    def stop(self, grace: float = 20.0) -> None:
        """SIGTERM the whole group, then SIGKILL what is left after `grace` seconds."""
        if self.proc.poll() is None or _group_alive(self.pgid):
            _signal_group(self.pgid, signal.SIGTERM)
            deadline = time.monotonic() + grace
            while time.monotonic() < deadline and _group_alive(self.pgid):
                time.sleep(0.1)
                self.proc.poll()
            _signal_group(self.pgid, signal.SIGKILL)
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass
        if not self._log.closed:
            self._log.close()
        _LIVE.discard(self)

    def __enter__(self) -> ManagedProcess:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


@atexit.register
def _stop_all() -> None:
    for p in list(_LIVE):
        p.stop(grace=5)


def _reap(owner: int, cmd: list[str]) -> int:
    """Run `cmd` in this process group; kill the group when `owner` goes away."""
    child = subprocess.Popen(cmd)
    while True:
        code = child.poll()
        if code is not None:
            return code
        if os.getppid() != owner:  # the owner died: we were re-parented
            os.killpg(os.getpgid(0), signal.SIGTERM)
            time.sleep(10)
            os.killpg(os.getpgid(0), signal.SIGKILL)
        time.sleep(0.5)


if __name__ == "__main__":
    owner_pid, sep, *command = sys.argv[1:]
    if sep != "--" or not command:
        sys.exit("usage: python -m labs_lib.procs OWNER_PID -- CMD...")
    signal.signal(signal.SIGTERM, lambda *_: os._exit(143))
    sys.exit(_reap(int(owner_pid), command))
