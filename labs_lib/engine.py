"""Start and stop vLLM for a ModelSpec: in-process (`offline_llm`) or as a server (`vllm_server`).

Both are context managers that always shut the engine down, on errors and KeyboardInterrupt too.
The settings that make the CPU tier work (in-process engine, eager mode, a small KV space) and
the GPU tier measure what users get (CUDA graphs on) are chosen here, once:

    prof = tiers.resolve("auto")   # decided once, in the notebook; passed to every call
    with offline_llm(resolve("tiny-llama"), prof, max_model_len=512) as llm:
        out = llm.generate(["Hello"], SamplingParams(max_tokens=8))
        cache_info(llm)["kv_tokens"]   # what the engine allocated, from its own metrics

    with vllm_server(resolve("SmolLM2-135M-Instruct"), prof) as srv:
        httpx.post(srv.url + "/v1/completions", json={...})

The dtype is the profile's (bf16, or fp16 on GPUs without bf16 such as the T4) unless given.

Prefix caching is OFF unless asked for (`enable_prefix_caching=True`): vLLM V1 turns it on by
default, which makes latency baselines depend on what ran before.
"""

from __future__ import annotations

import contextlib
import gc
import importlib.metadata
import json
import os
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import contention, params
from .models import ModelSpec
from .procs import ForkedProcess, ManagedProcess, free_port, report, scoped_env
from .records import run_dir
from .tiers import GPU_MEMORY_UTILIZATION, Profile

CPU_ENV = {
    "VLLM_ENABLE_V1_MULTIPROCESSING": "0",   # in-process engine: 3 s start instead of ~66 s
    "VLLM_CPU_KVCACHE_SPACE": os.environ.get("VLLM_CPU_KVCACHE_SPACE", "1"),  # GiB
    "VLLM_CPU_OMP_THREADS_BIND": os.environ.get("VLLM_CPU_OMP_THREADS_BIND", "nobind"),
    # int4 checkpoints run as their format says (W4A16): on a CPU with AMX, vLLM-CPU would otherwise
    # quantize the activations to int8 (W4A8) and re-block the weights with fp32 scales
    "VLLM_CPU_INT4_W4A8": os.environ.get("VLLM_CPU_INT4_W4A8", "0"),
}
GPU_ENV = {"VLLM_USE_FLASHINFER_SAMPLER": os.environ.get("VLLM_USE_FLASHINFER_SAMPLER", "0")}
# a lab's engine reports nothing home: labs run offline (CI, the GPU host) and measure startup
COMMON_ENV = {"VLLM_NO_USAGE_STATS": "1"}


def engine_kwargs(
    spec: ModelSpec,
    prof: Profile,
    *,
    max_model_len: int | None = None,
    max_num_seqs: int | None = None,
    max_num_batched_tokens: int | None = None,
    enable_prefix_caching: bool = False,
    gpu_memory_utilization: float = GPU_MEMORY_UTILIZATION,
    dtype: str | None = None,
    seed: int = 0,
    **extra: Any,
) -> dict[str, Any]:
    """The vLLM engine arguments for the profile's tier, validated before any engine starts.

    >>> from labs_lib.models import resolve
    >>> from labs_lib.tiers import for_gpu
    >>> t4 = for_gpu("Tesla T4", 15.6e9, (7, 5))
    >>> kw = engine_kwargs(resolve("Llama-3.2-1B"), t4, max_model_len=4096)
    >>> kw["load_format"], kw["enable_prefix_caching"], kw["dtype"]
    ('dummy', False, 'float16')
    >>> engine_kwargs(resolve("Llama-3.2-1B"), t4, max_num_seqs=0)
    Traceback (most recent call last):
    ...
    ValueError: max_num_seqs must be an int >= 1, got 0
    """
    if not isinstance(prof, Profile):
        raise TypeError(f"prof must be a labs_lib.tiers.Profile (tiers.resolve(profile)), got {prof!r}")
    dtype = dtype or prof.dtype
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
    if not prof.gpu:
        kw.update(enforce_eager=True, distributed_executor_backend="uni")
    else:
        kw.update(gpu_memory_utilization=gpu_memory_utilization)
    kw.update(extra)
    return {k: v for k, v in kw.items() if v is not None}


SHARED_CONTEXT = 4096  # the GPU context length of labs 01, 03 and 05's servers and lab 04's engines


def shared_max_model_len(spec: ModelSpec, prof: Profile, needed: int) -> int:
    """The `max_model_len` for a GPU engine whose requests need `needed` tokens of context, chosen
    so that the labs' engines of one model share vLLM's compile cache: vLLM 0.26 keys its
    torch.compile cache on `max_model_len` (with `max_num_batched_tokens`, the KV cache dtype and
    the CUDA-graph sizes, which follow `max_num_seqs` below 256), not on prefix caching or the KV
    budget, so an engine that asks for the labs' common `SHARED_CONTEXT` loads the graphs another
    lab compiled (its engine core ready in about 11 s instead of 40-50 s on the H200) and measures
    the same kernels (`shared_engine_args` adds the step budget). A larger context
    costs nothing per token: the KV cache is paged. `needed` above it, or above the model's own
    positions, is returned as is (vLLM then says what is wrong); on a CPU (eager: nothing is
    compiled) `needed` too.

    >>> from labs_lib.models import resolve
    >>> from labs_lib.tiers import CPU
    >>> shared_max_model_len(resolve("Llama-3.1-8B"), CPU, 704)
    704
    """
    needed = params.positive_int("needed", needed)
    if not prof.gpu or needed >= SHARED_CONTEXT:
        return needed
    return min(SHARED_CONTEXT, max(needed, spec.max_model_len))


SHARED_BATCHED_TOKENS = 2 * SHARED_CONTEXT  # their step budget: vLLM's server default on an H100 or H200


def shared_engine_args(spec: ModelSpec, prof: Profile, needed: int, *, as_asked: bool = False) -> dict[str, int]:
    """The `max_model_len` (`shared_max_model_len`) and, on a GPU where that is at most the labs'
    common context, `max_num_batched_tokens` = `SHARED_BATCHED_TOKENS` for an engine whose requests need
    `needed` tokens of context: what the labs' servers and offline engines pass so that they all
    share one torch.compile cache. The step budget is part of vLLM's cache key, and vLLM picks
    different defaults for its offline `LLM` (16,384 on an H100 or H200) and its server (8,192;
    2,048 on smaller GPUs); an offline engine on the server's budget loads the graphs a server
    compiled. On a CPU (nothing is compiled) only `max_model_len`, as `needed`. `as_asked`: the
    context is `needed` itself (a lab whose user sets it and whose checks use it), never raised.

    >>> from labs_lib.models import resolve
    >>> from labs_lib.tiers import CPU, for_gpu
    >>> shared_engine_args(resolve("Llama-3.1-8B"), CPU, 704)
    {'max_model_len': 704}
    >>> shared_engine_args(resolve("Llama-3.1-8B"), for_gpu("NVIDIA H200", 150e9, (9, 0)), 704)
    {'max_model_len': 4096, 'max_num_batched_tokens': 8192}
    >>> shared_engine_args(resolve("Llama-3.1-8B"), for_gpu("NVIDIA H200", 150e9, (9, 0)), 2048, as_asked=True)
    {'max_model_len': 2048, 'max_num_batched_tokens': 8192}
    """
    ctx = params.positive_int("needed", needed) if as_asked else shared_max_model_len(spec, prof, needed)
    args = {"max_model_len": ctx}
    if prof.gpu and args["max_model_len"] <= SHARED_CONTEXT:
        args["max_num_batched_tokens"] = SHARED_BATCHED_TOKENS
    return args


def vllm_build() -> str | None:
    """'cpu' if the installed vLLM is the CPU build (vllm-cpu), 'gpu' for the CUDA build, None
    if vLLM is not installed. Read from package metadata: no slow `import vllm`."""
    for dist, build in (("vllm-cpu", "cpu"), ("vllm", "gpu")):
        try:
            importlib.metadata.version(dist)
            return build
        except importlib.metadata.PackageNotFoundError:
            continue
    return None


def fork_engines() -> bool:
    """Fork CPU-tier engine processes (experiment workers, servers) from `fork_context`: on the
    CPU build of vLLM only (a CUDA engine wants a fresh interpreter), unless LABS_FORK_WORKERS=0.
    """
    return os.environ.get("LABS_FORK_WORKERS", "1") != "0" and vllm_build() == "cpu"


_FORKSERVER: Any = None
_PRELOAD = ["labs_lib.experiments", "labs_lib.engine", "labs_lib.vllm_serve", "torch", "transformers", "vllm",
            "vllm.entrypoints.llm", "vllm.entrypoints.openai.api_server", "vllm.v1.worker.cpu_worker",
            "vllm.model_executor.models.llama", "transformers.models.llama.modeling_llama"]


def fork_context() -> Any:
    """The multiprocessing forkserver, started once per process (a notebook's kernel), that has
    imported torch, transformers and vLLM (its offline engine and its server): a process forked
    from it starts without importing them again, 8-12 s each on a 2-core machine."""
    global _FORKSERVER
    if _FORKSERVER is None:
        import multiprocessing

        _FORKSERVER = multiprocessing.get_context("forkserver")
        _FORKSERVER.set_forkserver_preload(_PRELOAD)  # imported once, in the forkserver
    return _FORKSERVER


def check_build(prof: Profile) -> None:
    """Fail fast, naming the fix, when the profile's tier cannot run on the installed vLLM."""
    build = vllm_build()
    if build is None:
        raise ModuleNotFoundError("vLLM is not installed in this environment: run `make install`")
    if prof.gpu and build == "cpu":
        raise RuntimeError("profile is 'gpu' but this environment has the CPU build of vLLM "
                           "(vllm-cpu): install the GPU tier with `TIER=gpu make install`")
    if not prof.gpu and build == "gpu":
        try:
            import torch

            cuda = torch.cuda.is_available()
        except ImportError:
            cuda = False
        if cuda:
            raise RuntimeError(
                "profile='cpu' on a machine whose vLLM is the CUDA build: that build cannot run "
                "on the CPU. Use profile='auto' (or 'gpu') here, or install the CPU tier in its "
                "own environment (`TIER=cpu make install`).")


def start_llm(spec: ModelSpec, prof: Profile, *, env: dict[str, str | None] | None = None, **kwargs: Any) -> Any:
    """Start a vLLM `LLM` for `spec` on the profile's tier and return it; stop it with
    `shutdown(llm)`. Keyword args go to `engine_kwargs`; `env` adds to (and wins over) the
    tier's engine environment while the engine is built (e.g. `labs_lib.parallel.tp_env`).
    Prefer `offline_llm` (a `with` block) inside one cell; this handle is for an engine that
    several notebook cells share.

    One engine per process is the reliable pattern: sweeps over engine settings run each point
    in its own process (see `labs_lib.experiments.run_isolated`).
    """
    kw = engine_kwargs(spec, prof, **kwargs)
    check_build(prof)
    env = {**_engine_env(kw, prof), **(env or {})}
    if "kv_cache_memory_bytes" in kw:  # in-process: the engine reads this very environment
        env["VLLM_CPU_KVCACHE_SPACE"] = None
    # Set for the engine's construction only. vLLM (0.32 read) takes every variable above while
    # `LLM(...)` is built, never while generating: VLLM_ENABLE_V1_MULTIPROCESSING and
    # VLLM_CPU_KVCACHE_SPACE for the engine config, VLLM_CPU_OMP_THREADS_BIND when worker
    # processes start, OMP_NUM_THREADS when the worker loads the model (and by OpenMP if this
    # import loads torch first), VLLM_USE_FLASHINFER_SAMPLER when the sampler is built,
    # VLLM_NO_USAGE_STATS once (then cached) when the worker starts; and EngineCore freezes
    # `vllm.envs` at the end of its construction. On the GPU tier the engine runs in a child
    # process that copied the environment when it started. Restoring afterwards changes nothing
    # the engine sees, and the notebook's environment is its own again.
    if not prof.gpu:  # the in-process engine computes on this process's thread pool
        contention.fit_threads()
    with scoped_env(env):
        from vllm import LLM

        report(f"vLLM engine: {spec.describe()}; dtype {kw['dtype']}")
        t0 = time.perf_counter()
        llm = LLM(**kw)
    report(f"vLLM engine ready in {time.perf_counter() - t0:.1f} s")
    return llm


@contextlib.contextmanager
def offline_llm(spec: ModelSpec, prof: Profile, **kwargs: Any) -> Iterator[Any]:
    """`start_llm` as a `with` block: the engine is shut down on exit, errors included."""
    llm = start_llm(spec, prof, **kwargs)
    try:
        yield llm
    finally:
        shutdown(llm)
        del llm
        gc.collect()


def _engine_env(kw: dict[str, Any], prof: Profile) -> dict[str, str]:
    """Environment for an engine. An explicit `kv_cache_memory_bytes` wins over the CPU
    backend's legacy VLLM_CPU_KVCACHE_SPACE, which would otherwise override it."""
    env = {**COMMON_ENV, **(GPU_ENV if prof.gpu else CPU_ENV)}
    if not prof.gpu:
        # vLLM drops to 1 thread "for serving" unless told (on a 2-core CI box that halves its
        # speed); more threads than free cores stall every step (contention.threads)
        env["OMP_NUM_THREADS"] = str(contention.threads())
    if "kv_cache_memory_bytes" in kw:
        env.pop("VLLM_CPU_KVCACHE_SPACE", None)
    return env


def server_env(kw: dict[str, Any], prof: Profile) -> dict[str, str]:
    """Environment for a server process: the engine's (`_engine_env`) for the server's whole
    life, so on a CPU numba's pool (vLLM's ngram proposer) is sized to the free cores too (see
    the experiment workers' main). The server still runs its engine core in a child process, but
    with the in-process switch on (CPU tier) that child runs the model itself: vLLM-CPU otherwise
    turns the `uni` executor into `mp` and starts a third process, one more `import vllm` (a CPU
    server's start went from 38.8 s to 26.0 s, the same 2-core machine; forking that child,
    `labs_lib.vllm_serve`, then took it to about 16 s).

    >>> from labs_lib.tiers import CPU
    >>> env = server_env({}, CPU)
    >>> env["NUMBA_NUM_THREADS"] == env["OMP_NUM_THREADS"], env["VLLM_ENABLE_V1_MULTIPROCESSING"]
    (True, '0')
    """
    env = _engine_env(kw, prof)
    # idle client connections live 60 s (vLLM's default: 5 s, as long as an httpx client keeps
    # them, so a request could meet a connection being closed; `client.KEEPALIVE_EXPIRY_S`)
    env["VLLM_HTTP_TIMEOUT_KEEP_ALIVE"] = os.environ.get("VLLM_HTTP_TIMEOUT_KEEP_ALIVE", "60")
    if not prof.gpu:
        env["NUMBA_NUM_THREADS"] = env["OMP_NUM_THREADS"]
    return env


def shutdown(llm: Any) -> None:
    """Shut down an engine from `start_llm` (its worker processes and memory)."""
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

    def stop(self) -> None:
        """Stop the server and everything it started (idempotent)."""
        self.process.stop()


def server_command(spec: ModelSpec, prof: Profile, port: int, **kwargs: Any) -> list[str]:
    """The `python -m vllm.entrypoints.openai.api_server ...` command line for `spec`; on the CPU
    tier `labs_lib.vllm_serve`, the same server with its engine core forked instead of spawned
    (a start 8-10 s shorter on a 2-core machine: see that module), which `start_server` runs
    forked from `fork_context` (`fork_engines`), without importing vLLM again.

    >>> from labs_lib.models import resolve
    >>> from labs_lib.tiers import CPU
    >>> cmd = server_command(resolve("Llama-3.1-8B"), CPU, 8123, max_model_len=2048)
    >>> cmd[cmd.index("--port") + 1], "--load-format" in cmd, "--no-enable-prefix-caching" in cmd, cmd[2]
    ('8123', True, True, 'labs_lib.vllm_serve')
    """
    kw = engine_kwargs(spec, prof, **kwargs)
    kw.pop("disable_log_stats")  # the server logs stats by default; the flag only turns them off
    entry = "vllm.entrypoints.openai.api_server" if prof.gpu else "labs_lib.vllm_serve"
    cmd = [sys.executable, "-m", entry, "--host", "127.0.0.1", "--port", str(port)]
    for key, value in kw.items():
        flag = "--" + key.replace("_", "-")
        if key == "enable_prefix_caching":
            cmd.append(flag if value else "--no-enable-prefix-caching")
        elif isinstance(value, bool):
            if value:
                cmd.append(flag)
        elif key == "model":
            cmd += ["--model", str(value)]
        elif isinstance(value, dict | list):
            cmd += [flag, json.dumps(value)]
        else:
            cmd += [flag, str(value)]
    return cmd


@contextlib.contextmanager
def vllm_server(spec: ModelSpec, prof: Profile, **kwargs: Any) -> Iterator[Server]:
    """`start_server` as a `with` block: the server is stopped on exit, errors included."""
    srv = start_server(spec, prof, **kwargs)
    try:
        yield srv
    finally:
        srv.stop()


def start_server(spec: ModelSpec, prof: Profile, *, startup_timeout: float = 900.0,
                 port: int | None = None, extra_args: Sequence[str] = (),
                 **kwargs: Any) -> Server:
    """Start vLLM's OpenAI-compatible server on a free 127.0.0.1 port; wait for /health; return
    a `Server` to `stop()`. Prefer `vllm_server` (a `with` block) inside one cell.

    The log goes to `<run_dir>/logs/`. A server that exits during start-up raises
    ServerStartError with its log tail; its process group dies with its owner in any case. On
    the CPU tier it is forked from `fork_context` (`procs.ForkedProcess`): ready in 6-9 s
    instead of 15-18 s on a 2-core machine; in a script (not a notebook), call it under
    `if __name__ == "__main__":`, as multiprocessing's forkserver requires.
    """
    import httpx

    params.positive_float("startup_timeout", startup_timeout)
    cmd = server_command(spec, prof, port or 0, **kwargs) + list(extra_args)
    check_build(prof)
    port = port or free_port()
    cmd[cmd.index("--port") + 1] = str(port)
    env = server_env(kwargs, prof)
    logs = run_dir() / "logs"
    logs.mkdir(exist_ok=True)
    log = logs / f"vllm-{spec.slug}-{port}.log"
    dtype = cmd[cmd.index("--dtype") + 1]
    print(f"vLLM server: {spec.describe()}; dtype {dtype}\n  log: {log}", flush=True)
    unset = ["VLLM_CPU_KVCACHE_SPACE"] if "kv_cache_memory_bytes" in kwargs else []
    url = f"http://127.0.0.1:{port}"  # given to the process: a dead server is named, not "refused"
    if fork_engines() and cmd[1:3] == ["-m", "labs_lib.vllm_serve"]:  # CPU: no imports again
        from . import vllm_serve

        proc: ManagedProcess = ForkedProcess(fork_context(), vllm_serve.main, (cmd[3:],), name=f"vllm-{spec.slug}",
                                             env=env, unset=unset, log_path=log, url=url)
    else:
        proc = ManagedProcess(cmd, name=f"vllm-{spec.slug}", env=env, unset=unset, log_path=log, url=url)
    try:
        took = proc.wait_until(lambda: httpx.get(url + "/health", timeout=2).status_code == 200,
                               timeout=startup_timeout, what="serving /health")
    except BaseException:
        proc.stop()
        raise
    print(f"vLLM server ready at {url} in {took:.1f} s", flush=True)
    return Server(url, spec.name, spec, proc, took)


def cache_info(engine: Any) -> dict[str, Any]:
    """What the engine allocated for its KV cache, from its own `vllm:cache_config_info` metric:
    block size, number of blocks, KV tokens (their product), cache dtype.

    `engine` is a `Server` (its /metrics page is read) or an offline `LLM` (started with stats
    on, as `offline_llm` does). Values are the engine's, not a log line's.
    """
    if isinstance(engine, Server):
        from . import prom

        labels = prom.scrape(engine.url).info("vllm:cache_config_info")
    else:
        found = [m for m in engine.get_metrics() if m.name == "vllm:cache_config_info"]
        labels = dict(found[0].labels) if found else None
    if not labels:
        raise RuntimeError("the engine reports no vllm:cache_config_info metric (stats off?)")
    return cache_info_from_labels(labels)


def cache_info_from_labels(labels: dict[str, str]) -> dict[str, Any]:
    """Parse the labels of `vllm:cache_config_info` (all strings) into numbers.

    >>> cache_info_from_labels({"block_size": "16", "num_gpu_blocks": "25779",
    ...                         "cache_dtype": "auto", "gpu_memory_utilization": "0.85"})
    {'block_size': 16, 'num_blocks': 25779, 'kv_tokens': 412464, 'cache_dtype': 'auto', 'gpu_memory_utilization': 0.85, 'kv_cache_memory_bytes': None}
    """
    def num(key: str, cast: Any) -> Any:
        v = labels.get(key)
        return None if v in (None, "", "None") else cast(float(v)) if cast is int else cast(v)

    block, blocks = num("block_size", int), num("num_gpu_blocks", int)
    if block is None or blocks is None:
        raise RuntimeError(f"vllm:cache_config_info lacks block_size/num_gpu_blocks: {labels}")
    return {"block_size": block, "num_blocks": blocks, "kv_tokens": block * blocks,
            "cache_dtype": labels.get("cache_dtype"),
            "gpu_memory_utilization": num("gpu_memory_utilization", float),
            "kv_cache_memory_bytes": num("kv_cache_memory_bytes", int)}


def request_times(output: Any) -> dict[str, float]:
    """One finished request's phases from the engine's own timestamps (offline `LLM` outputs):

    - ttft: arrival -> first token (queue + prefill): `metrics.first_token_latency`, or, on
      versions without it, engine-queued -> first token (the same minus the frontend hop);
    - prefill: scheduled -> first token (lab 02's prefill time: no queueing in it);
    - decode: first -> last token; queue: queued -> scheduled.

    >>> from types import SimpleNamespace as NS
    >>> m = NS(queued_ts=10.0, scheduled_ts=10.5, first_token_ts=11.0, last_token_ts=13.0)
    >>> request_times(NS(metrics=m))
    {'ttft': 1.0, 'prefill': 0.5, 'decode': 2.0, 'queue': 0.5}
    """
    m = output.metrics
    if m is None:
        raise RuntimeError("the output carries no metrics: start the engine with stats on "
                           "(engine.start_llm does: disable_log_stats=False)")
    ttft = getattr(m, "first_token_latency", 0.0) or (m.first_token_ts - m.queued_ts)
    return {"ttft": float(ttft), "prefill": float(m.first_token_ts - m.scheduled_ts),
            "decode": float(m.last_token_ts - m.first_token_ts),
            "queue": float(m.scheduled_ts - m.queued_ts)}
