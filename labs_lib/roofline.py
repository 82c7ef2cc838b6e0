"""FLOPs and bytes of one transformer forward pass: where prefill and decode sit on the roofline.

Per token, a forward pass does ~2 FLOPs per (active) parameter in the linear layers, plus the
attention over the context: 4 x layers x heads x head_dim x context (QK^T and PV). The bytes are
the weights (read once per step, however many tokens the step holds) plus the KV cache read.

- decode, batch B, context C: FLOPs ~ 2 P B + attention; bytes ~ weights + B C kv_bytes.
  Intensity ~ B FLOP/byte for bf16: far left of a GPU's ridge (hundreds) -> bandwidth-bound.
- prefill of T tokens: FLOPs ~ 2 P T; bytes ~ weights + writes. Intensity ~ T -> compute-bound.

>>> from labs_lib.models import load_config
>>> step = decode_step(load_config("Llama-3.1-8B"), batch=1, context=1)
>>> round(step["intensity"], 2)
1.0
"""

from __future__ import annotations

from typing import Any

from . import params
from .kvcache import kv_bytes_per_token
from .models import BYTES_PER_PARAM, _text_config, head_dim, param_count


def _attn_flops_per_token(cfg: dict[str, Any], context: int) -> float:
    c = _text_config(cfg)
    return 4.0 * c["num_hidden_layers"] * c["num_attention_heads"] * head_dim(c) * context


def decode_step(cfg: dict[str, Any], batch: int, context: int, dtype: str = "bf16",
                kv_dtype: str = "bf16") -> dict[str, float]:
    """One decode step for `batch` sequences that each hold `context` tokens."""
    params.positive_int("batch", batch)
    params.positive_int("context", context)
    p = param_count(cfg)
    flops = batch * (2.0 * p["active"] + _attn_flops_per_token(cfg, context))
    weights = p["active"] * BYTES_PER_PARAM[dtype] if batch == 1 else p["total"] * BYTES_PER_PARAM[dtype]
    kv = batch * context * kv_bytes_per_token(cfg, kv_dtype)
    nbytes = weights + kv
    return {"flops": flops, "bytes": nbytes, "weight_bytes": weights, "kv_bytes": kv,
            "intensity": flops / nbytes}


def prefill(cfg: dict[str, Any], tokens: int, dtype: str = "bf16", kv_dtype: str = "bf16"
            ) -> dict[str, float]:
    """A prefill of `tokens` tokens (causal: average context tokens/2)."""
    params.positive_int("tokens", tokens)
    p = param_count(cfg)
    flops = tokens * (2.0 * p["active"] + _attn_flops_per_token(cfg, tokens) / 2)
    weights = p["total"] * BYTES_PER_PARAM[dtype]
    kv = tokens * kv_bytes_per_token(cfg, kv_dtype)
    nbytes = weights + kv
    return {"flops": flops, "bytes": nbytes, "weight_bytes": weights, "kv_bytes": kv,
            "intensity": flops / nbytes}


def prompt_for_prefill_time(cfg: dict[str, Any], seconds: float, flops_per_s: float, *,
                            lo: int = 16, hi: int = 1 << 20) -> int:
    """The prompt length whose prefill takes about `seconds` at `flops_per_s` (attention
    included), clamped to [lo, hi]: how long a "long prompt" must be for this model to stall a
    GPU for that long. Small models need far longer prompts than large ones.

    >>> from labs_lib.models import load_config
    >>> prompt_for_prefill_time(load_config("Llama-3.1-8B"), 0.1, 500e12)  # 16 GFLOP per token
    2970
    >>> prompt_for_prefill_time(load_config("Qwen2.5-0.5B"), 0.1, 500e12)  # 1 GFLOP per token
    24493
    """
    params.positive_float("seconds", seconds)
    params.positive_float("flops_per_s", flops_per_s)
    lo_n, hi_n = params.positive_int("lo", lo), params.positive_int("hi", hi)
    if prefill(cfg, hi_n)["flops"] / flops_per_s <= seconds:
        return hi_n
    while hi_n - lo_n > 1:  # prefill time grows monotonically with the prompt
        mid = (lo_n + hi_n) // 2
        if prefill(cfg, mid)["flops"] / flops_per_s < seconds:
            lo_n = mid
        else:
            hi_n = mid
    return hi_n


def step_seconds(step: dict[str, float], bandwidth: float, flops_per_s: float,
                 overhead: float = 0.0) -> dict[str, Any]:
    """Price one step (`decode_step` / `prefill`) with measured ceilings.

    memory = bytes / bandwidth, compute = flops / flops_per_s. A step whose kernels overlapped
    memory traffic and math perfectly would take max(memory, compute); one whose kernels did not
    overlap at all, memory + compute. Measured decode steps sit between the two, near the sum
    (each layer's matmuls, then its attention, one kernel after another), so `seconds` = memory +
    compute + `overhead` (per-step work outside both: launches, scheduling, sampling) is the
    prediction and `overlapped` the lower bound beside it. `bound_by` names the largest term.

    >>> r = step_seconds({"bytes": 16e9, "flops": 16e9}, bandwidth=2e12, flops_per_s=800e12, overhead=0.001)
    >>> round(r["seconds"] * 1e3, 2), round(r["overlapped"] * 1e3, 2), r["bound_by"]
    (9.02, 9.0, 'bandwidth')
    """
    params.positive_float("bandwidth", bandwidth)
    params.positive_float("flops_per_s", flops_per_s)
    if overhead < 0:
        raise ValueError(f"overhead must be >= 0 s, got {overhead}")
    mem, comp = step["bytes"] / bandwidth, step["flops"] / flops_per_s
    terms = {"bandwidth": mem, "compute": comp, "overhead": overhead}
    return {"memory_s": mem, "compute_s": comp, "overhead_s": overhead,
            "seconds": mem + comp + overhead, "overlapped": max(mem, comp) + overhead,
            "bound_by": max(terms, key=terms.get)}


def fit_overhead(points: dict[int, tuple[float, float]]) -> tuple[float, float]:
    """Per-step overhead = fixed + per_seq x batch, from measured steps that the roofline terms
    do not explain. `points` maps a batch size to (measured seconds, memory + compute seconds);
    the smallest and the largest batch give the line (per_seq >= 0, fixed >= 0): launches and
    scheduling cost per step, and the CPU's bookkeeping per running sequence (which a small model
    on a fast GPU cannot hide). Every other point is then a prediction, not a fit.

    >>> fixed, per_seq = fit_overhead({1: (0.0030, 0.0010), 64: (0.0050, 0.0015), 256: (0.0080, 0.0020)})
    >>> round(fixed * 1e3, 3), round(per_seq * 1e6, 2)  # ms, us per sequence
    (1.984, 15.69)
    """
    if len(points) < 2:
        raise ValueError(f"fit_overhead needs measured steps at two batch sizes at least, got {sorted(points)}")
    lo, hi = min(points), max(points)
    r_lo, r_hi = (points[b][0] - points[b][1] for b in (lo, hi))
    per_seq = max(0.0, (r_hi - r_lo) / (hi - lo))
    fixed = max(0.0, r_lo - per_seq * lo)
    return fixed, per_seq


def predict_step(step: dict[str, float], *, weight_seconds: float, bandwidth: float,
                 flops_per_s: float, linear_flops: float, overhead: float = 0.0,
                 kv_bandwidth: float | None = None) -> dict[str, Any]:
    """A step's time from measured ceilings: the weights' matmuls at their measured decode-shape
    speed (`weight_seconds`: `hardware.measure_decode_gemm` scaled to the model's weight bytes),
    the KV cache read at the copy bandwidth (or at `kv_bandwidth`: the rate measured for the
    attention kernel's KV reads, which is lower), the attention's FLOPs (`step` FLOPs minus the
    matmuls' `linear_flops`) at the matmul ceiling, and the per-step `overhead`. `bound_by`: the
    largest of bandwidth (weights + KV bytes / bandwidth), compute (FLOPs / ceiling) and overhead.

    >>> step = {"bytes": 17e9, "flops": 1.7e12, "weight_bytes": 16e9, "kv_bytes": 1e9}
    >>> r = predict_step(step, weight_seconds=0.008, bandwidth=2e12, flops_per_s=800e12,
    ...                  linear_flops=1.6e12, overhead=0.001)
    >>> round(r["seconds"] * 1e3, 2), r["bound_by"]
    (9.63, 'bandwidth')
    """
    kv_s = step["kv_bytes"] / (kv_bandwidth or bandwidth)
    attn_s = max(0.0, step["flops"] - linear_flops) / flops_per_s
    terms = {"bandwidth": step["bytes"] / bandwidth, "compute": step["flops"] / flops_per_s,
             "overhead": overhead}
    return {"weights_s": weight_seconds, "kv_s": kv_s, "attention_s": attn_s, "overhead_s": overhead,
            "seconds": weight_seconds + kv_s + attn_s + overhead, "bound_by": max(terms, key=terms.get)}


def decode_gemm(cfg: dict[str, Any], batches: Any, device: str, dtype: str = "bf16") -> dict[int, dict[str, float]]:
    """`hardware.measure_decode_gemm` at this model's shape: B rows of `hidden_size` against a
    matrix as wide as one token's weights (active parameters / hidden size, capped in bytes).
    Then `weight_seconds(gemm[B], weight_bytes)` prices a step's weight matmuls at batch B."""
    from .hardware import measure_decode_gemm

    h = _text_config(cfg)["hidden_size"]
    return measure_decode_gemm(batches, h, max(1, param_count(cfg)["active"] // h), device, dtype)


def weight_seconds(gemm_point: dict[str, float], weight_bytes: float) -> float:
    """Seconds to run matmuls over `weight_bytes` of weights at the measured speed per weight
    byte of one `decode_gemm` point (same batch size).

    >>> weight_seconds({"seconds": 0.001, "weight_bytes": 2e9}, 16e9)
    0.008
    """
    return gemm_point["seconds"] / gemm_point["weight_bytes"] * weight_bytes


def serving_step(cfg: dict[str, Any], concurrency: int, prompt_len: int, out_lens: Any,
                 dtype: str = "bf16") -> dict[str, float]:
    """The average step of an engine that keeps `concurrency` sequences running in steady state,
    each request `prompt_len` prompt tokens and `out_lens` outputs (a sample of the workload).

    Every step decodes one token per running sequence (the `decode_step` fields, at the
    token-weighted mean context: long requests hold more of the steps); each finished request's
    slot takes a new prompt, so on average a step also prefills `prompts_per_step` = concurrency /
    mean(out_lens) prompts. Prefill and decode share the step but not the
    kind of work: the prefill tokens are compute-bound matmuls, the decode tokens a weight and KV
    read, and their times add (an engine step runs its kernels one after another).

    >>> from labs_lib.models import load_config
    >>> s = serving_step(load_config("Llama-3.1-8B"), 8, prompt_len=256, out_lens=[32, 96])
    >>> s["prompts_per_step"], s["context"]  # 8 / 64; 256 + (32*31/2 + 96*95/2) / 128
    (0.125, 295.5)
    """
    params.positive_int("concurrency", concurrency)
    params.positive_int("prompt_len", prompt_len)
    lens = [params.positive_int("out_lens item", n) for n in out_lens]
    context = prompt_len + sum(n * (n - 1) / 2 for n in lens) / sum(lens)
    per_step = concurrency * len(lens) / sum(lens)
    return {**decode_step(cfg, concurrency, max(1, round(context)), dtype), "context": context,
            "prompts_per_step": per_step}
