"""Start and stop vLLM for a ModelSpec: in-process (`offline_llm`) or as a server (`vllm_server`).

Both are context managers that always shut the engine down, on errors and KeyboardInterrupt too.
The settings that make the CPU tier work (in-process engine, eager mode, a small KV space) and
the GPU tier measure what users get (CUDA graphs on) are chosen here, once:

    with offline_llm(resolve("tiny-llama"), max_model_len=512) as llm:
        out = llm.generate(["Hello"], SamplingParams(max_tokens=8))

    with vllm_server(resolve("SmolLM2-135M-Instruct")) as srv:
        httpx.post(srv.url + "/v1/completions", json={...})

Prefix caching is OFF unless asked for (`enable_prefix_caching=True`): vLLM V1 turns it on by
default, which makes latency baselines depend on what ran before.
"""

from __future__ import annotations

import contextlib
import gc
import os
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import params
from .hardware import tier
from .models import ModelSpec
from .procs import ManagedProcess, free_port
from .records import run_dir

CPU_ENV = {
    "VLLM_ENABLE_V1_MULTIPROCESSING": "0",   # in-process engine: 3 s start instead of ~66 s
    "VLLM_CPU_KVCACHE_SPACE": os.environ.get("VLLM_CPU_KVCACHE_SPACE", "1"),  # GiB
    "VLLM_CPU_OMP_THREADS_BIND": os.environ.get("VLLM_CPU_OMP_THREADS_BIND", "nobind"),
    # vLLM drops to 1 thread "for serving" unless told; on a 2-core CI box that halves speed
    "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", str(os.cpu_count() or 1)),
}
GPU_ENV = {"VLLM_USE_FLASHINFER_SAMPLER": os.environ.get("VLLM_USE_FLASHINFER_SAMPLER", "0")}


def engine_kwargs(
    spec: ModelSpec,
    *,
    max_model_len: int | None = None,
    max_num_seqs: int | None = None,
    max_num_batched_tokens: int | None = None,
    enable_prefix_caching: bool = False,
    gpu_memory_utilization: float = 0.85,
    dtype: str = "bfloat16",
    seed: int = 0,
    **extra: Any,
) -> dict[str, Any]:
    """The vLLM engine arguments for this tier, validated before any engine starts.

    >>> from labs_lib.models import resolve
    >>> kw = engine_kwargs(resolve("Llama-3.1-8B"), max_model_len=4096)
    >>> kw["load_format"], kw["enable_prefix_caching"]
    ('dummy', False)
    >>> engine_kwargs(resolve("Llama-3.1-8B"), max_num_seqs=0)
    Traceback (most recent call last):
    ...
    ValueError: max_num_seqs must be an int >= 1, got 0
    """
    if max_model_len is not None:
        params.int_in_range("max_model_len", max_model_len, 16, spec.max_model_len)
    if max_num_seqs is not None:
        params.positive_int("max_num_seqs", max_num_seqs)
    if max_num_batched_tokens is not None:
        params.positive_int("max_num_batched_tokens", max_num_batched_tokens)
    params.positive_float("gpu_memory_utilization", gpu_memory_utilization, hi=1.0)
    params.choice("dtype", dtype, ["bfloat16", "float16", "float32", "auto"])
    kw: dict[str, Any] = {
        "model": spec.path, "served_model_name": spec.name, "load_format": spec.load_format,
        "skip_tokenizer_init": not spec.has_tokenizer, "dtype": dtype, "seed": seed,
        "enable_prefix_caching": bool(enable_prefix_caching), "disable_log_stats": False,
        "max_model_len": max_model_len, "max_num_seqs": max_num_seqs,
        "max_num_batched_tokens": max_num_batched_tokens,
    }
    if tier() == "cpu":
        kw.update(enforce_eager=True, distributed_executor_backend="uni")
    else:
        kw.update(gpu_memory_utilization=gpu_memory_utilization)
    kw.update(extra)
    return {k: v for k, v in kw.items() if v is not None}


@contextlib.contextmanager
def offline_llm(spec: ModelSpec, **kwargs: Any) -> Iterator[Any]:
    """A vLLM `LLM` for `spec`, shut down on exit. Keyword args go to `engine_kwargs`.

    One engine per process is the reliable pattern: sweeps over engine settings run each point
    in its own process (see `labs_lib.experiments.run_isolated`).
    """
    kw = engine_kwargs(spec, **kwargs)
    os.environ.update(_engine_env(kw))
    if "kv_cache_memory_bytes" in kw:  # in-process: the engine reads this very environment
        os.environ.pop("VLLM_CPU_KVCACHE_SPACE", None)
    from vllm import LLM

    print(f"vLLM engine: {spec.describe()}", flush=True)
    t0 = time.perf_counter()
    llm = LLM(**kw)
    print(f"vLLM engine ready in {time.perf_counter() - t0:.1f} s", flush=True)
    try:
        yield llm
    finally:
        _shutdown(llm)
        del llm
        gc.collect()


def _engine_env(kw: dict[str, Any]) -> dict[str, str]:
    """Environment for an engine. An explicit `kv_cache_memory_bytes` wins over the CPU
    backend's legacy VLLM_CPU_KVCACHE_SPACE, which would otherwise override it."""
    env = dict(CPU_ENV if tier() == "cpu" else GPU_ENV)
    if "kv_cache_memory_bytes" in kw:
        env.pop("VLLM_CPU_KVCACHE_SPACE", None)
    return env


def _shutdown(llm: Any) -> None:
    engine = getattr(llm, "llm_engine", None)
    core = getattr(engine, "engine_core", None)
    for obj in (core, engine):
        fn = getattr(obj, "shutdown", None)
        if callable(fn):
            with contextlib.suppress(Exception):
                fn()
            return


@dataclass
class Server:
    """A running OpenAI-compatible server: base URL, model name and its process."""

    url: str
    model: str
    spec: ModelSpec
    process: ManagedProcess
    startup_s: float

    @property
    def log_path(self) -> Path:
        return self.process.log_path


def server_command(spec: ModelSpec, port: int, **kwargs: Any) -> list[str]:
    """The `python -m vllm.entrypoints.openai.api_server ...` command line for `spec`.

    >>> from labs_lib.models import resolve
    >>> cmd = server_command(resolve("Llama-3.1-8B"), 8123, max_model_len=2048)
    >>> cmd[cmd.index("--port") + 1], "--load-format" in cmd, "--no-enable-prefix-caching" in cmd
    ('8123', True, True)
    """
    kw = engine_kwargs(spec, **kwargs)
    kw.pop("disable_log_stats")  # the server logs stats by default; the flag only turns them off
    cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server",
           "--host", "127.0.0.1", "--port", str(port)]
    for key, value in kw.items():
        flag = "--" + key.replace("_", "-")
        if key == "enable_prefix_caching":
            cmd.append(flag if value else "--no-enable-prefix-caching")
        elif isinstance(value, bool):
            if value:
                cmd.append(flag)
        elif key == "model":
            cmd += ["--model", str(value)]
        else:
            cmd += [flag, str(value)]
    return cmd


@contextlib.contextmanager
def vllm_server(spec: ModelSpec, *, startup_timeout: float = 900.0, port: int | None = None,
                extra_args: Sequence[str] = (), **kwargs: Any) -> Iterator[Server]:
    """Start vLLM's OpenAI-compatible server on a free 127.0.0.1 port; wait for /health.

    The log goes to `<run_dir>/logs/`. A server that exits during start-up raises
    ServerStartError with its log tail; the process group is always killed on exit.
    """
    import httpx

    params.positive_float("startup_timeout", startup_timeout)
    port = port or free_port()
    env = _engine_env(kwargs)
    env.pop("VLLM_ENABLE_V1_MULTIPROCESSING", None)  # the server runs its engine in a child
    logs = run_dir() / "logs"
    logs.mkdir(exist_ok=True)
    cmd = server_command(spec, port, **kwargs) + list(extra_args)
    print(f"vLLM server: {spec.describe()}\n  log: {logs}/vllm-{spec.name}-{port}.log", flush=True)
    unset = ["VLLM_CPU_KVCACHE_SPACE"] if "kv_cache_memory_bytes" in kwargs else []
    proc = ManagedProcess(cmd, name=f"vllm-{spec.name}", env=env, unset=unset,
                          log_path=logs / f"vllm-{spec.name}-{port}.log")
    url = f"http://127.0.0.1:{port}"
    try:
        took = proc.wait_until(lambda: httpx.get(url + "/health", timeout=2).status_code == 200,
                               timeout=startup_timeout, what="serving /health")
        print(f"vLLM server ready at {url} in {took:.1f} s", flush=True)
        yield Server(url, spec.name, spec, proc, took)
    finally:
        proc.stop()
