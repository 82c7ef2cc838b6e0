import os
import time

import pytest

from labs_lib import engine, experiments
from labs_lib.tiers import CPU

both_ways = pytest.mark.parametrize("fork", ["0", "1"], ids=["fresh-interpreter", "forked"])


def test_unknown_experiment_is_rejected_before_starting_anything():
    with pytest.raises(ValueError, match="unknown experiment 'nope'; known: \\['vllm_sweep'"):
        experiments.run_isolated("nope")


@both_ways
def test_worker_failure_reports_exit_code_and_log_tail(monkeypatch, fork):
    monkeypatch.setenv("LABS_FORK_WORKERS", fork)
    with pytest.raises(RuntimeError, match=r"(?s)vllm_sweep failed \(exit 1\).*unknown model 'no-such-model'"):
        experiments.run_isolated("vllm_sweep", model="no-such-model", profile=CPU.to_dict(),
                                workloads={}, engine={})


@both_ways
def test_a_worker_past_its_timeout_is_stopped_and_retried(capsys, monkeypatch, fork):
    monkeypatch.setenv("LABS_FORK_WORKERS", fork)
    # 50 ms is far less than a Python start or an engine's: every attempt times out
    with pytest.raises(experiments.WorkerTimeout, match=r"vllm_sweep did not finish in 0.05 s; log .*vllm_sweep-"):
        experiments.run_isolated("vllm_sweep", timeout=0.05, retries=1, model="tiny-llama", profile=CPU.to_dict(),
                                 workloads={}, engine={})
    assert capsys.readouterr().out.count("starting it again (retry 1 of 1)") == 1


def _live_children(pid: int) -> list[int]:
    out = []
    for p in filter(str.isdigit, os.listdir("/proc")):
        try:
            stat = open(f"/proc/{p}/stat").read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(stat[1]) == pid and stat[0] != "Z":
            out.append(int(p))
    return out


def test_a_forked_worker_is_killed_at_its_timeout_with_all_it_started(monkeypatch):
    monkeypatch.setenv("LABS_FORK_WORKERS", "1")
    if not engine.fork_engines():
        pytest.skip("workers are forked on the CPU build of vLLM only")
    from multiprocessing import forkserver

    with pytest.raises(experiments.WorkerTimeout):  # 2 s: inside the engine's start
        experiments.run_isolated("vllm_sweep", timeout=2, model="tiny-llama", profile=CPU.to_dict(),
                                 workloads={}, engine={"max_model_len": 256})
    server = forkserver._forkserver._forkserver_pid
    deadline = time.monotonic() + 10
    while _live_children(server) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _live_children(server) == []


def test_fork_workers_is_off_when_asked(monkeypatch):
    monkeypatch.setenv("LABS_FORK_WORKERS", "0")
    assert engine.fork_engines() is False


def test_async_scheduling_reads_the_engines_scheduler_config():
    from types import SimpleNamespace as NS

    on = NS(llm_engine=NS(vllm_config=NS(scheduler_config=NS(async_scheduling=True))))
    off = NS(llm_engine=NS(vllm_config=NS(scheduler_config=NS(async_scheduling=False))))
    assert experiments.async_scheduling(on) is True
    assert experiments.async_scheduling(off) is False
    assert experiments.async_scheduling(object()) is False  # an engine that does not say


def test_one_layer_overrides_needs_a_layer_count():
    with pytest.raises(ValueError, match="num_hidden_layers"):
        experiments.one_layer_overrides({"hidden_size": 64})
