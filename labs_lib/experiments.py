"""Experiments that must run in a fresh process: one engine configuration per process.

Freeing a vLLM engine's memory inside a process is unreliable, and an HF model and a vLLM engine
on one GPU compete for memory. So a sweep over engine settings calls `run_isolated(name, **kw)`,
which runs the worker `name` below in a new Python process (under labs_lib.procs, so it dies
with its owner), passes arguments and results as JSON, and keeps the worker's log in the run
folder.

    out = run_isolated("vllm_batch", model=spec.source, profile=prof.to_dict(),
                       prompts=[[1, 2, 3]], out_lens=[8],
                       engine={"max_num_seqs": 4, "max_model_len": 256})

Workers get the model as `spec.source` (what `models.resolve` takes to give the same spec) and
the notebook's profile as a dict: the tier is the notebook's decision, not the worker's.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from .procs import ManagedProcess, ServerStartError
from .records import run_dir

WORKERS = ("vllm_batch", "hf_static_batches", "quant_setting", "quant_hf")


class WorkerTimeout(ServerStartError):
    """A worker ran past its `timeout` (and was stopped): e.g. an engine that hangs while starting."""


def run_isolated(name: str, *, timeout: float = 1800.0, retries: int = 0, **kwargs: Any) -> dict[str, Any]:
    """Run worker `name` with `kwargs` in a fresh process; return its JSON result.

    A worker that runs past `timeout` seconds is stopped (with everything it started) and, up to
    `retries` times, started again: an engine that hangs while it starts is rare but real (seen
    once in vLLM 0.26, after a previous engine had exited cleanly), and one hang should cost one
    timeout, not a lab. Then `WorkerTimeout`. A worker that fails raises RuntimeError with its log
    tail, without a retry: a failure repeats.
    """
    if name not in WORKERS:
        raise ValueError(f"unknown experiment {name!r}; known: {list(WORKERS)}")
    for attempt in range(retries + 1):
        try:
            return _run_once(name, timeout, kwargs)
        except WorkerTimeout as e:
            if attempt == retries:
                raise
            print(f"{e}; starting it again (retry {attempt + 1} of {retries})", flush=True)
    raise AssertionError("unreachable")


def _run_once(name: str, timeout: float, kwargs: dict[str, Any]) -> dict[str, Any]:
    logs = run_dir() / "logs"
    logs.mkdir(exist_ok=True)
    stem = f"{name}-{time.strftime('%H%M%S')}-{abs(hash(json.dumps(kwargs, sort_keys=True))) % 10**6}"
    args, result = logs / f"{stem}.args.json", logs / f"{stem}.result.json"
    args.write_text(json.dumps(kwargs))
    cmd = [sys.executable, "-m", "labs_lib.experiments", name, str(args), str(result)]
    with ManagedProcess(cmd, name=name, log_path=logs / f"{stem}.log") as p:
        try:
            code = p.wait(timeout=timeout)
        except subprocess.TimeoutExpired as e:
            raise WorkerTimeout(f"{name} did not finish in {timeout:g} s; log {p.log_path}") from e
        if code != 0 or not result.exists():
            raise RuntimeError(f"{name} failed (exit {code}); log {p.log_path}, last lines:\n"
                               f"{p.log_text(3000)}")
    args.unlink(missing_ok=True)
    return json.loads(result.read_text())


def vllm_batch(model: str, profile: dict[str, Any], prompts: list[list[int]],
               out_lens: list[int], engine: dict[str, Any] | None = None,
               warmup: int = 8, static_batch: int | None = None,
               calibrate: list[int] | None = None, calibrate_tokens: int = 32) -> dict[str, Any]:
    """Submit every request at once to an offline vLLM engine (continuous batching decides the
    order); per-request TTFT / TPOT / E2E from the engine's own timestamps.

    With `static_batch`, the same engine then runs the same requests as static batches
    (`static_batches`), so the two schedules share kernels, graphs and warm caches. With
    `calibrate` (batch sizes), it measures the decode step time at each (`decode_step`), the
    step-cost line that `labs_lib.batching` prices schedules with."""
    from .models import resolve
    from .tiers import Profile

    spec = resolve(model)  # a bad name fails here, before the seconds-long vLLM import
    prof = Profile.from_dict(profile)
    from vllm import SamplingParams

    from .engine import offline_llm
    from .workload import warmup_prompts

    t_start = time.perf_counter()
    with offline_llm(spec, prof, **(engine or {})) as llm:
        startup = time.perf_counter() - t_start
        vocab = spec.vocab_size
        llm.generate([{"prompt_token_ids": p} for p in warmup_prompts(warmup, 16, vocab_size=vocab)],
                     SamplingParams(max_tokens=8, ignore_eos=True), use_tqdm=False)
        sps = [SamplingParams(max_tokens=n, ignore_eos=True, temperature=0.0) for n in out_lens]
        steps0 = engine_steps(llm)
        t0 = time.perf_counter()
        outs = llm.generate([{"prompt_token_ids": p} for p in prompts], sps, use_tqdm=False)
        wall = time.perf_counter() - t0
        out = {"wall_s": wall, "startup_s": startup, "requests": [_request_row(o) for o in outs],
               "output_tokens": sum(len(o.outputs[0].token_ids) for o in outs),
               "steps": _delta(steps0, engine_steps(llm))}
        if static_batch:
            out["static"] = static_batches(llm, prompts, out_lens, static_batch)
        if calibrate:
            plen = len(prompts[0]) if prompts else 16  # the workload's context: its KV reads count too
            out["step_s"] = {str(b): decode_step(llm, b, calibrate_tokens, vocab, prompt_len=plen)
                             for b in calibrate}
    return out


def _request_row(o: Any, start: float = 0.0) -> dict[str, Any]:
    """A finished request's times; `start`: when its batch was submitted, from the run's start."""
    from .engine import request_times

    n, t = len(o.outputs[0].token_ids), request_times(o)
    return {"n_out": n, "ttft": start + t["ttft"], "e2e": start + t["ttft"] + t["decode"],
            "prefill": t["prefill"], "tpot": t["decode"] / (n - 1) if n > 1 else None,
            "preemptions": getattr(o.metrics, "num_preemptions", None)}


def static_batches(llm: Any, prompts: list[list[int]], out_lens: list[int], batch: int) -> dict[str, Any]:
    """Static batching on a running vLLM engine: batches of `batch` requests in arrival order, each
    submitted only when the previous batch has fully finished. Every request arrived at t = 0, so
    its TTFT and E2E count from the run's start. A finished request's slot stays empty until its
    batch ends; the engine computes nothing for it (no padding)."""
    from vllm import SamplingParams

    steps0 = engine_steps(llm)
    rows, t0 = [], time.perf_counter()
    prefill = 0.0
    for i in range(0, len(prompts), batch):
        start = time.perf_counter() - t0
        sps = [SamplingParams(max_tokens=n, ignore_eos=True, temperature=0.0) for n in out_lens[i:i + batch]]
        outs = llm.generate([{"prompt_token_ids": p} for p in prompts[i:i + batch]], sps, use_tqdm=False)
        batch_rows = [_request_row(o, start) | {"batch": i // batch} for o in outs]
        prefill += max(r["prefill"] for r in batch_rows)  # the batch's prompts share its prefill step(s)
        rows += batch_rows
    wall = time.perf_counter() - t0
    return {"wall_s": wall, "requests": rows, "output_tokens": sum(r["n_out"] for r in rows),
            "prefill_s": prefill, "batch": batch, "steps": _delta(steps0, engine_steps(llm))}


def engine_steps(llm: Any) -> int | None:
    """Steps the engine has run so far that returned at least one token: the sample count of its
    `vllm:iteration_tokens_total` histogram; None where the engine does not report it."""
    try:
        metrics = llm.get_metrics()
    except (AssertionError, AttributeError):  # stats off ("Stat logging disabled"), or an older vLLM
        return None
    for m in metrics:
        if m.name == "vllm:iteration_tokens_total" and hasattr(m, "count"):
            return int(m.count)
    return None


def _delta(before: int | None, after: int | None) -> int | None:
    return None if before is None or after is None else after - before


def decode_step(llm: Any, batch: int, tokens: int, vocab_size: int, repeats: int = 3,
                prompt_len: int = 16) -> float:
    """Median decode step time with `batch` sequences running together (`prompt_len`-token
    prompts, `tokens` generated), from the engine's timestamps: (last - first token) / (tokens - 1)."""
    from vllm import SamplingParams

    from .engine import request_times
    from .workload import token_prompts

    sp = SamplingParams(max_tokens=tokens, ignore_eos=True, temperature=0.0)
    steps = []
    for r in range(repeats):
        ps = token_prompts(batch, prompt_len, vocab_size=vocab_size, seed=10_000 + 97 * batch + r)
        outs = llm.generate([{"prompt_token_ids": p} for p in ps], sp, use_tqdm=False)
        steps += [request_times(o)["decode"] / (tokens - 1) for o in outs]
    return float(sorted(steps)[len(steps) // 2])


def hf_static_batches(model: str, profile: dict[str, Any], prompts: list[list[int]],
                      out_lens: list[int], batch_size: int) -> dict[str, Any]:
    """Static batching with transformers `generate`: fixed batches in arrival order, left-padded;
    each batch runs until its longest request is done. Every request arrived at t=0."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from .models import resolve
    from .tiers import Profile
    from .timing import synchronize

    spec = resolve(model)
    prof = Profile.from_dict(profile)
    device, dtype = prof.device, getattr(torch, prof.dtype)
    t_start = time.perf_counter()
    if spec.random_weights:
        cfg = AutoConfig.for_model(**{k: v for k, v in spec.config.items()
                                      if k not in ("architectures", "torch_dtype")})
        with torch.device(device):
            net = AutoModelForCausalLM.from_config(cfg, dtype=dtype)
    else:
        net = AutoModelForCausalLM.from_pretrained(spec.path, dtype=dtype).to(device)
    net.eval()
    startup = time.perf_counter() - t_start

    def batch_tensors(ps):
        width = max(len(p) for p in ps)
        ids = torch.tensor([[0] * (width - len(p)) + p for p in ps], device=device)
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in ps], device=device)
        return ids, mask

    with torch.inference_mode():  # warm-up: kernels, allocator
        ids, mask = batch_tensors(prompts[:batch_size])
        net.generate(input_ids=ids, attention_mask=mask, max_new_tokens=4, min_new_tokens=4,
                     do_sample=False, pad_token_id=0)
        synchronize(device)
        rows, t0 = [], time.perf_counter()
        for i in range(0, len(prompts), batch_size):
            ps, lens = prompts[i:i + batch_size], out_lens[i:i + batch_size]
            ids, mask = batch_tensors(ps)
            steps = max(lens)
            net.generate(input_ids=ids, attention_mask=mask, max_new_tokens=steps,
                         min_new_tokens=steps, do_sample=False, pad_token_id=0)
            synchronize(device)
            done = time.perf_counter() - t0
            rows += [{"n_out": n, "e2e": done, "batch": i // batch_size, "batch_steps": steps}
                     for n in lens]
        wall = time.perf_counter() - t0
    return {"wall_s": wall, "startup_s": startup, "requests": rows,
            "output_tokens": sum(out_lens), "computed_tokens": sum(r["batch_steps"] for r in rows)}


def quant_setting(**kwargs: Any) -> dict[str, Any]:
    """Lab 07: one quantization setting from one engine start (labs_lib.quant.bench.run_setting)."""
    from .quant.bench import run_setting

    return run_setting(**kwargs)


def quant_hf(**kwargs: Any) -> dict[str, Any]:
    """Lab 07: the quality table in transformers (labs_lib.quant.bench.hf_quality)."""
    from .quant.bench import hf_quality

    return hf_quality(**kwargs)


if __name__ == "__main__":
    worker, args_path, out_path = sys.argv[1:4]
    if worker not in WORKERS:
        sys.exit(f"unknown worker {worker!r}")
    result = globals()[worker](**json.loads(Path(args_path).read_text()))
    tmp = Path(out_path + ".tmp")
    tmp.write_text(json.dumps(result))
    tmp.replace(out_path)
