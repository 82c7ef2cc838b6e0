"""Nothing outlives its owner, whatever the order of deaths; a server that dies is named.

Real processes throughout: children and grandchildren that ignore SIGTERM, owners killed with
SIGKILL, a watcher (reaper) killed or signalled on its own. The grace between SIGTERM and
SIGKILL is 1 s here, so each test takes seconds.
"""

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from labs_lib import procs
from labs_lib.loadgen import Load, Request, run_load
from labs_lib.mockserver import mock_server

REPO = str(Path(__file__).resolve().parents[1])
GRACE = 1.0
MARGIN = 8.0  # seconds beyond the grace for polling and process exit on a busy 2-core machine

# Programs run under ManagedProcess. Each prints "ready" once its signal handling is set up.
IGNORE_TERM = ("import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
               "print('ready', flush=True); time.sleep(300)")
SPAWN = ("import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', {code!r}]); "
         "{then}")
GRANDCHILD_IGNORES_TERM = SPAWN.format(code=IGNORE_TERM, then="time.sleep(300)")
GRANDCHILD_LEAVES_GROUP = SPAWN.format(code="import os; os.setsid(); " + IGNORE_TERM,
                                       then="time.sleep(300)")


def _alive(pid: int) -> bool:
    """Running and not a zombie."""
    try:
        os.kill(pid, 0)
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (ProcessLookupError, FileNotFoundError, PermissionError):
        return False


def _survivors(pids, timeout: float) -> list[int]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        left = [p for p in pids if _alive(p)]
        if not left:
            return []
        time.sleep(0.1)
    return [p for p in pids if _alive(p)]


def _wait_ready(log: Path, n: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if log.exists() and log.read_text(errors="replace").count("ready") >= n:
            return
        time.sleep(0.05)
    raise AssertionError(f"{n} process(es) never got ready; log:\n{log.read_text()}")


def _owner(tmp_path: Path, code: str, ready: int, expect: int):
    """Start an owner process that starts `code` under ManagedProcess; return it, the reaper's
    pid, the pids of the managed group once `expect` processes are up and `ready` said so, and
    the log."""
    log = tmp_path / "victim.log"
    script = textwrap.dedent(f"""
        import json, sys, time
        sys.path.insert(0, {REPO!r})
        from labs_lib.procs import ManagedProcess
        p = ManagedProcess([sys.executable, "-c", {code!r}], name="victim", grace={GRACE},
                           log_path={str(log)!r})
        deadline = time.time() + 30
        while time.time() < deadline and (open({str(log)!r}).read().count("ready") < {ready}
                                          or len(p.pids()) < {expect}):
            time.sleep(0.05)
        print(json.dumps([p.pgid, p.pids()]), flush=True)
        time.sleep(300)
    """)
    owner = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    reaper, pids = json.loads(owner.stdout.readline())
    assert len(pids) >= expect, (pids, log.read_text())
    return owner, reaper, pids, log


def _kill_owner(owner: subprocess.Popen) -> None:
    owner.send_signal(signal.SIGKILL)
    owner.wait()
    owner.stdout.close()


def test_owner_killed_child_ignoring_sigterm_is_sigkilled(tmp_path):
    owner, _, pids, log = _owner(tmp_path, IGNORE_TERM, ready=1, expect=2)  # reaper + child
    _kill_owner(owner)
    assert _survivors(pids, GRACE + MARGIN) == [], f"outlived their owner; log:\n{log.read_text()}"
    assert "SIGKILL" in log.read_text()  # the escalation happened, after SIGTERM was ignored


def test_owner_killed_grandchild_ignoring_sigterm_is_sigkilled(tmp_path):
    owner, _, pids, log = _owner(tmp_path, GRANDCHILD_IGNORES_TERM, ready=1, expect=3)
    _kill_owner(owner)
    assert _survivors(pids, GRACE + MARGIN) == [], f"outlived their owner; log:\n{log.read_text()}"


def test_owner_killed_grandchild_that_left_the_group_is_still_found(tmp_path):
    owner, reaper, pids, log = _owner(tmp_path, GRANDCHILD_LEAVES_GROUP, ready=1, expect=2)
    import psutil

    family = {p.pid for p in psutil.Process(reaper).children(recursive=True)} | set(pids)
    assert len(family) >= 3, family  # reaper, child, and the grandchild in its own session
    _kill_owner(owner)
    assert _survivors(family, GRACE + MARGIN) == [], f"log:\n{log.read_text()}"


def test_command_exiting_by_itself_takes_its_leftovers_with_it(tmp_path):
    """The server dies (OOM, crash) but its engine child lives on: the reaper stops it at once,
    while the owner is still alive, and the owner learns the exit code right away."""
    log = tmp_path / "victim.log"
    p = procs.ManagedProcess([sys.executable, "-c", GRANDCHILD_IGNORES_TERM],
                             name="victim", grace=GRACE, log_path=log)
    try:
        _wait_ready(log, 1)
        family = p.pids()
        import psutil

        child = [c for c in psutil.Process(p.pgid).children() if c.pid in family][0]
        child.kill()  # like the OOM killer
        deadline = time.monotonic() + 5
        while p.exit_code() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert p.exit_code() == 128 + signal.SIGKILL
        assert _survivors(family, GRACE + MARGIN) == [], f"log:\n{log.read_text()}"
        assert p.wait(timeout=10) == 137
        assert "killed by SIGKILL" in log.read_text()
    finally:
        p.stop()


def test_reaper_killed_first_takes_the_command_with_it(tmp_path):
    log = tmp_path / "victim.log"
    p = procs.ManagedProcess([sys.executable, "-c", IGNORE_TERM], name="victim", grace=GRACE,
                             log_path=log)
    try:
        _wait_ready(log, 1)
        family = p.pids()
        os.kill(p.pgid, signal.SIGKILL)  # the reaper is the group leader
        assert _survivors(family, MARGIN) == []
    finally:
        p.stop()


def test_sigterm_to_the_reaper_alone_stops_everything_and_escalates(tmp_path):
    """The old reaper exited on SIGTERM at once, leaving its command running."""
    log = tmp_path / "victim.log"
    p = procs.ManagedProcess([sys.executable, "-c", GRANDCHILD_IGNORES_TERM], name="victim",
                             grace=GRACE, log_path=log)
    try:
        _wait_ready(log, 1)
        family = p.pids()
        assert len(family) == 3
        os.kill(p.pgid, signal.SIGTERM)
        assert _survivors(family, GRACE + MARGIN) == [], f"log:\n{log.read_text()}"
    finally:
        p.stop()


def test_stop_escalates_to_sigkill_within_the_grace(tmp_path):
    log = tmp_path / "victim.log"
    p = procs.ManagedProcess([sys.executable, "-c", GRANDCHILD_IGNORES_TERM], name="victim",
                             grace=GRACE, log_path=log)
    _wait_ready(log, 1)
    family = p.pids()
    t0 = time.monotonic()
    p.stop()
    assert time.monotonic() - t0 < GRACE + MARGIN
    assert _survivors(family, 2) == []


def test_logs_go_to_the_run_folder_not_tmp(tmp_path, monkeypatch):
    monkeypatch.setenv("LABS_RUN_DIR", str(tmp_path / "run"))
    with procs.ManagedProcess([sys.executable, "-c", "print('x')"], name="quiet") as p:
        p.wait(timeout=30)
    assert p.log_path.parent == tmp_path / "run" / "logs"


def test_mock_server_log_is_removed_after_a_clean_exit(tmp_path, monkeypatch):
    monkeypatch.setenv("LABS_RUN_DIR", str(tmp_path / "run"))
    with mock_server("0", "0") as url:
        log = procs.serving(url).log_path
        assert log.parent == tmp_path / "run" / "logs" and log.exists()
    assert not log.exists()


def test_server_killed_mid_load_is_named_with_exit_code_and_log(tmp_path, monkeypatch):
    """Instead of a bare 'Connection refused': who exited, how, and where its log is."""
    monkeypatch.setenv("LABS_RUN_DIR", str(tmp_path / "run"))
    reqs = [Request([1, 2, 3], 40) for _ in range(8)]  # 40 tokens x 50 ms: 2 s per request
    with pytest.raises(procs.ServerExitedError) as err:
        with mock_server("0.01", "0.05") as url:
            server = procs.serving(url)
            victim = [pid for pid in server.pids() if pid != server.pgid][0]
            threading.Timer(0.7, os.kill, (victim, signal.SIGKILL)).start()
            run_load(url, "mock", reqs, Load("concurrency", concurrency=2), progress=False)
    msg = str(err.value)
    assert "mockserver exited with code 137 (killed by SIGKILL: out of memory, or kill -9)" in msg
    assert f"while serving {url}; log {tmp_path / 'run' / 'logs'}" in msg
    assert "last lines:" in msg
    assert server.log_path.exists()  # kept: the run failed
    assert _survivors([server.pgid, victim], MARGIN) == []


def test_connection_error_without_a_managed_server_is_a_plain_failed_request():
    import asyncio

    from labs_lib.client import StreamingClient

    async def go():
        async with StreamingClient(f"http://127.0.0.1:{procs.free_port()}", "m") as c:
            return await c.complete([1, 2], 4)

    r = asyncio.run(go())
    assert not r.ok and "ConnectError" in r.error


def test_reaper_usage_error():
    out = subprocess.run([sys.executable, "-m", "labs_lib.procs", "123"], capture_output=True,
                         text=True, cwd=REPO)
    assert out.returncode != 0 and "usage: python -m labs_lib.procs OWNER_PID" in out.stderr


def test_forked_process_and_what_it_forks_die_with_their_owner(tmp_path):
    """A ForkedProcess (a CPU-tier server or worker) has no reaper: the owner's death ends the
    forkserver, whose death SIGKILLs the process, whose death SIGKILLs what it forked."""
    (tmp_path / "forkedtarget.py").write_text(textwrap.dedent("""
        import os, time
        def run():
            if os.fork() == 0:  # like vLLM's engine core, forked by the server
                time.sleep(300)
                os._exit(0)
            time.sleep(300)
    """))
    script = textwrap.dedent(f"""
        import multiprocessing, subprocess, sys, time
        sys.path[:0] = [{REPO!r}, {str(tmp_path)!r}]
        import forkedtarget
        from multiprocessing import forkserver
        from labs_lib.procs import ForkedProcess
        p = ForkedProcess(multiprocessing.get_context("forkserver"), forkedtarget.run, name="forked")
        time.sleep(2)
        kids = subprocess.run(["pgrep", "-g", str(p.pgid)], capture_output=True, text=True).stdout.split()
        print(forkserver._forkserver._forkserver_pid, " ".join(kids), flush=True)
        time.sleep(300)
    """)
    owner = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    pids = [int(x) for x in owner.stdout.readline().split()]
    assert len(pids) == 3  # the forkserver, the forked process and its child
    owner.send_signal(signal.SIGKILL)
    owner.wait()
    assert _survivors(pids, MARGIN) == []


def test_forked_process_stop_takes_what_it_forked_and_reports_the_exit(tmp_path):
    import multiprocessing

    log = tmp_path / "forked.log"
    with procs.ForkedProcess(multiprocessing.get_context("fork"), _fork_then_fail, name="f",
                             log_path=log, grace=GRACE) as p:
        with pytest.raises(procs.ServerStartError, match=r"(?s)exited with code 3.*child started"):
            p.wait_until(lambda: False, timeout=30)
        kids = p.pids()
    assert _survivors(kids, MARGIN) == []
    with pytest.raises(subprocess.TimeoutExpired):
        procs.ForkedProcess(multiprocessing.get_context("fork"), time.sleep, (30,), log_path=log,
                            grace=GRACE).wait(timeout=0.5)


def _fork_then_fail() -> None:
    if os.fork() == 0:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # only SIGKILL ends it
        time.sleep(300)
        os._exit(0)
    print("child started", flush=True)
    raise SystemExit(3)


def _report_progress() -> None:
    procs.report("point 1 of 2")
    print("engine chatter", flush=True)
    procs.report("point 2 of 2")


_REPORT_CMD = [sys.executable, "-c", "from labs_lib.procs import report; report('point 1 of 2'); "
               "print('engine chatter', flush=True); report('point 2 of 2')"]


@pytest.mark.parametrize("kind", ["forked", "command"])
def test_relay_prints_only_the_progress_lines_each_once(tmp_path, capsys, kind):
    import multiprocessing

    env = {procs.RELAY_ENV: "1"}
    if kind == "forked":
        p = procs.ForkedProcess(multiprocessing.get_context("fork"), _report_progress, log_path=tmp_path / "w.log",
                                env=env)
    else:
        p = procs.ManagedProcess(_REPORT_CMD, log_path=tmp_path / "w.log", env=env)
    with p:
        assert p.wait(timeout=60) == 0
        assert p.relay() == 2
        assert p.relay() == 0  # nothing new
    assert capsys.readouterr().out == "point 1 of 2\npoint 2 of 2\n"
    assert "engine chatter" in p.log_text() and "[labs_lib.relay] point 1" in p.log_text()


def test_relay_waits_for_a_line_to_be_finished(tmp_path, capsys):
    p = procs.ManagedProcess([sys.executable, "-c", "print('x')"], log_path=tmp_path / "w.log")
    p.wait(timeout=60)
    p.stop()
    with open(p.log_path, "ab") as f:
        f.write(b"[labs_lib.relay] half")
    assert p.relay() == 0
    with open(p.log_path, "ab") as f:
        f.write(b" done\n")
    assert p.relay() == 1
    assert capsys.readouterr().out == "half done\n"
