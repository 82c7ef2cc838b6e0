"""Tensor parallelism, run for real: one model on `tp` ranks, the same tokens, the cost of talking.

- `tp_env(tp, prof)`: what vLLM needs to run `tensor_parallel_size=tp` on this machine. On a CPU
  (vLLM-CPU over gloo/shared memory) each rank binds its OpenMP threads to its own cores
  (`VLLM_CPU_OMP_THREADS_BIND="0|1"`: automatic binding fails on a one-NUMA-node machine) and
  the ranks talk over loopback (`VLLM_HOST_IP=127.0.0.1`); on GPUs NCCL needs nothing.
- `experiments.tp_run` (a worker, `experiments.run_isolated("tp_run", ...)`) uses them: one
  engine with `tensor_parallel_size=tp` on a saved random checkpoint
  (`models.save_random_weights`); `compare_tokens` and `max_logprob_gap` compare two runs.
- `engine_allreduce` (sent into the engine's ranks by `tp_run`): the all-reduce that tensor
  parallelism runs twice per layer, through the engine's own communicator, at the sizes a
  decode step sends; `allreduce_line` turns it into the hop latency and link bandwidth that
  `planner.allreduce_seconds` prices.

>>> tp_env(2, cores=[0, 1])["VLLM_CPU_OMP_THREADS_BIND"]
'0|1'
>>> tp_env(2, cores=[0, 1, 2, 3])["VLLM_CPU_OMP_THREADS_BIND"]
'0-1|2-3'
"""

from __future__ import annotations

import os
import time
from typing import Any

from . import params

LOOPBACK = "127.0.0.1"


def usable_cores() -> list[int]:
    """The cores this process may run on (its affinity mask), in order."""
    try:
        return sorted(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return list(range(os.cpu_count() or 1))


def _span(cs: list[int]) -> str:
    return str(cs[0]) if len(cs) == 1 else f"{cs[0]}-{cs[-1]}" if cs == list(range(cs[0], cs[-1] + 1)) \
        else ",".join(map(str, cs))


def tp_env(tp: int, gpu: bool = False, cores: list[int] | None = None) -> dict[str, str]:
    """Environment for a `tensor_parallel_size=tp` engine. CPU, tp > 1: the usable cores split
    into `tp` equal, contiguous groups, one per rank; a ValueError if there are fewer cores than
    ranks. Nothing for one rank or on GPUs.

    >>> tp_env(3, cores=[0, 1])
    Traceback (most recent call last):
    ...
    ValueError: tensor_parallel_size=3 needs at least 3 cores on a CPU (one per rank); this process may use 2: use tp <= 2
    """
    tp = params.positive_int("tp", tp)
    if gpu or tp == 1:  # one rank: the tier's own engine settings (CPU: threads sized to the free cores)
        return {}
    cs = usable_cores() if cores is None else list(cores)
    if tp > len(cs):
        raise ValueError(f"tensor_parallel_size={tp} needs at least {tp} cores on a CPU (one per rank); this "
                         f"process may use {len(cs)}: use tp <= {len(cs)}")
    per = len(cs) // tp
    groups = [cs[i * per:(i + 1) * per] for i in range(tp)]
    return {"VLLM_CPU_OMP_THREADS_BIND": "|".join(_span(g) for g in groups), "VLLM_HOST_IP": LOOPBACK,
            "OMP_NUM_THREADS": str(per)}


def check_divides(cfg: dict[str, Any], tp: int) -> None:
    """A ValueError naming the heads when `tp` does not divide the model's attention heads (vLLM
    refuses such a model) or its KV heads (when there are at least `tp` of them).

    >>> check_divides({"num_attention_heads": 9, "num_key_value_heads": 3, "hidden_size": 576}, 2)
    Traceback (most recent call last):
    ...
    ValueError: tensor_parallel_size=2 must divide the model's 9 attention heads: pick a model whose heads divide by 2 (tiny-llama: 4 heads, 2 KV heads), or tp in [1, 3, 9]
    """
    from .models import _text_config

    c = _text_config(cfg)
    heads, kv = c["num_attention_heads"], c.get("num_key_value_heads") or c["num_attention_heads"]
    if heads % tp or (kv >= tp and kv % tp):
        ok = [t for t in range(1, heads + 1) if heads % t == 0 and (kv < t or kv % t == 0)]
        raise ValueError(f"tensor_parallel_size={tp} must divide the model's {heads} attention heads"
                         f"{f' and {kv} KV heads' if heads % tp == 0 else ''}: pick a model whose heads divide by "
                         f"{tp} (tiny-llama: 4 heads, 2 KV heads), or tp in {ok}")


def compare_tokens(a: list[list[int]], b: list[list[int]]) -> dict[str, Any]:
    """How far two runs' greedy tokens agree: identical sequences, and for each prompt the
    position of the first difference (None where identical).

    >>> compare_tokens([[1, 2, 3], [4, 5]], [[1, 2, 9], [4, 5]])
    {'identical': False, 'first_difference': [2, None], 'tokens': 5, 'distinct_tokens': 5}
    """
    if len(a) != len(b):
        raise ValueError(f"the runs have {len(a)} and {len(b)} prompts: compare the same prompts")
    first = [next((i for i, (x, y) in enumerate(zip(s, t, strict=False)) if x != y), None if len(s) == len(t) else min(len(s), len(t)))
             for s, t in zip(a, b, strict=True)]
    return {"identical": all(f is None for f in first), "first_difference": first,
            "tokens": sum(len(s) for s in a), "distinct_tokens": len({x for s in a for x in s})}


def max_logprob_gap(a: list[list[float]], b: list[list[float]]) -> float:
    """The largest |logprob difference| of the same chosen tokens in two runs.

    >>> max_logprob_gap([[-1.0, -2.0]], [[-1.01, -1.9]])
    0.1
    """
    return round(max(abs(x - y) for s, t in zip(a, b, strict=True) for x, y in zip(s, t, strict=False)), 12)


# ----------------------------------------------------------------------------- all-reduce

def engine_allreduce(worker: Any, sizes: list[int], repeats: int, burst: int) -> dict[str, Any]:
    """Run inside every rank of an engine (`llm.collective_rpc(engine_allreduce, args=...)`):
    the tensor-parallel group's own all-reduce (vLLM's communicator: shared memory on a CPU,
    custom all-reduce or NCCL on GPUs), timed at each size in bytes (bf16 tensors) as the median
    over `repeats` bursts of `burst` back-to-back calls, per call. What the model's layers call
    twice per decode step, so it prices their communication, not a generic benchmark's."""
    import torch
    from vllm.distributed import get_tp_group

    from .timing import summarize

    g = get_tp_group()
    dev = getattr(worker, "device", None) or torch.device("cpu")
    cuda = torch.device(dev).type == "cuda"
    out = {}
    for n in sizes:
        x = torch.ones(max(1, n // 2), dtype=torch.bfloat16, device=dev)
        for _ in range(5):  # warm-up: the first calls set up buffers
            g.all_reduce(x)
        ts = []
        for _ in range(repeats):
            g.barrier()
            if cuda:
                torch.cuda.synchronize(dev)
            t0 = time.perf_counter()
            for _ in range(burst):
                y = g.all_reduce(x)
            if cuda:
                torch.cuda.synchronize(dev)
            ts.append((time.perf_counter() - t0) / burst)
            del y
        s = summarize(ts)
        out[str(n)] = {"p50": s.p50, "n": s.n}
    return {"rank": g.rank_in_group, "world": g.world_size, "points": out}


def allreduce_line(points: dict[str, dict[str, float]], world: int) -> dict[str, float]:
    """The cost line of an all-reduce fitted through the smallest and largest size measured:
    t(bytes) = latency + 2 (world - 1) / world x bytes / link bandwidth, the form
    `planner.allreduce_seconds` prices.

    >>> line = allreduce_line({"1024": {"p50": 10e-6}, "1048576": {"p50": 60e-6}}, world=2)
    >>> round(line["latency_s"] * 1e6, 3), round(line["link_bandwidth"] / 1e9, 2)  # us, GB/s
    (9.951, 20.95)
    """
    sizes = sorted(int(k) for k in points)
    if len(sizes) < 2:
        raise ValueError(f"allreduce_line needs two sizes at least, got {sizes}")
    lo, hi = sizes[0], sizes[-1]
    t_lo, t_hi = points[str(lo)]["p50"], points[str(hi)]["p50"]
    n = params.int_in_range("world", world, 2)
    per_byte = max(1e-15, (t_hi - t_lo) / (hi - lo))
    return {"latency_s": max(0.0, t_lo - per_byte * lo), "link_bandwidth": 2 * (n - 1) / n / per_byte}
