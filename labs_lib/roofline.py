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

import math
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
                 kv_bandwidth: float | None = None, overlap: bool = False) -> dict[str, Any]:
    """A step's time from measured ceilings: the weights' matmuls at their measured decode-shape
    speed (`weight_seconds`: `decode_gemm` (`hardware.measure_decode_layers`) scaled to the model's weight bytes),
    the KV cache read at the copy bandwidth (or at `kv_bandwidth`: the rate measured for the
    attention kernel's KV reads, which is lower), the attention's FLOPs (`step` FLOPs minus the
    matmuls' `linear_flops`) at the matmul ceiling, and the per-step `overhead`. `bound_by`: the
    largest of bandwidth (weights + KV bytes / bandwidth), compute (FLOPs / ceiling) and overhead.

    `overlap`: the host's work (`overhead`) runs while the device runs the step before (vLLM's
    async scheduling on a GPU), so the step takes max(host, device) instead of their sum, and
    is overhead-bound where the host's work is the longer (`device_s`: the device's part).

    >>> step = {"bytes": 17e9, "flops": 1.7e12, "weight_bytes": 16e9, "kv_bytes": 1e9}
    >>> r = predict_step(step, weight_seconds=0.008, bandwidth=2e12, flops_per_s=800e12,
    ...                  linear_flops=1.6e12, overhead=0.001)
    >>> round(r["seconds"] * 1e3, 2), r["bound_by"]
    (9.63, 'bandwidth')
    >>> r = predict_step(step, weight_seconds=0.008, bandwidth=2e12, flops_per_s=800e12,
    ...                  linear_flops=1.6e12, overhead=0.010, overlap=True)  # the host's 10 ms hide the device's work
    >>> round(r["seconds"] * 1e3, 3), round(r["device_s"] * 1e3, 3), r["bound_by"]  # 8 + 0.5 KV + 0.125 attention
    (10.0, 8.625, 'overhead')
    """
    kv_s = step["kv_bytes"] / (kv_bandwidth or bandwidth)
    attn_s = max(0.0, step["flops"] - linear_flops) / flops_per_s
    device_s = weight_seconds + kv_s + attn_s
    terms = {"bandwidth": step["bytes"] / bandwidth, "compute": step["flops"] / flops_per_s,
             "overhead": overhead}
    bound_by = max(terms, key=terms.get)
    if overlap and overhead >= device_s:
        bound_by = "overhead"
    elif overlap:
        bound_by = max(("bandwidth", "compute"), key=terms.get)
    return {"weights_s": weight_seconds, "kv_s": kv_s, "attention_s": attn_s, "overhead_s": overhead,
            "device_s": device_s, "seconds": max(device_s, overhead) if overlap else device_s + overhead,
            "bound_by": bound_by}


def decode_layer_shapes(cfg: dict[str, Any]) -> list[tuple[str, int, int]]:
    """(name, inputs k, outputs n) of one decoder layer's linear layers as vLLM runs them: q, k
    and v fused into `qkv_proj` (hidden x (heads + 2 kv heads) x head_dim), `o_proj`, gate and up
    fused into `gate_up_proj` (hidden x 2 intermediate), `down_proj`. From
    `quant.formats.linear_shapes`. An MoE layer lists gate_up and down once per active expert
    (`num_experts_per_tok`: what one token reads); vLLM runs those in its fused-MoE kernel, not
    in dense matmuls, so for MoE the shapes are right and the kernel an approximation.

    >>> from labs_lib.models import load_config
    >>> decode_layer_shapes(load_config("Qwen2.5-0.5B"))  # 14 heads + 2 x 2 kv heads, of 64
    [('self_attn.qkv_proj', 896, 1152), ('self_attn.o_proj', 896, 896), ('mlp.gate_up_proj', 896, 9728), ('mlp.down_proj', 4864, 896)]
    """
    from .quant.formats import linear_shapes

    s = {name.split(".")[-1]: (k, n) for name, k, n, _ in linear_shapes(cfg)}
    h = s["q_proj"][0]
    experts = _text_config(cfg).get("num_experts_per_tok") or 1  # as param_count's "active"
    return [("self_attn.qkv_proj", h, s["q_proj"][1] + s["k_proj"][1] + s["v_proj"][1]),
            ("self_attn.o_proj", *s["o_proj"])] + [
            ("mlp.gate_up_proj", h, s["gate_proj"][1] + s["up_proj"][1]), ("mlp.down_proj", *s["down_proj"])] * experts


def decode_gemm(cfg: dict[str, Any], batches: Any, device: str, dtype: str = "bf16") -> dict[int, dict[str, float]]:
    """`hardware.measure_decode_layers` at this model's shapes: B rows through each layer's fused
    linear layers (`decode_layer_shapes`), one distinct weight copy per layer (as many of the
    model's layers as the byte cap allows), then the lm_head (hidden x vocab) once per pass.
    Then `weight_seconds(gemm[B], weight_bytes)` prices a step's weight matmuls at batch B."""
    from .hardware import measure_decode_layers

    c = _text_config(cfg)
    return measure_decode_layers(batches, [(k, n) for _, k, n in decode_layer_shapes(cfg)], device, dtype,
                                 layers=c["num_hidden_layers"], head=(c["hidden_size"], c["vocab_size"]))


def weight_seconds(gemm_point: dict[str, float], weight_bytes: float) -> float:
    """Seconds to run matmuls over `weight_bytes` of weights at the measured speed per weight
    byte of one `decode_gemm` point (same batch size).

    >>> weight_seconds({"seconds": 0.001, "weight_bytes": 2e9}, 16e9)
    0.008
    """
    return gemm_point["seconds"] / gemm_point["weight_bytes"] * weight_bytes


def host_seconds(probe_step: float, gemm_point: dict[str, float], overlap: bool) -> float:
    """The host's part of a decode step, from the step of the same engine on a one-layer copy
    of the model (`experiments.host_step_probe`) at the same batch size. With `overlap` (async
    scheduling: the step is max(host, device)) the probe's whole step: its device part (one
    layer and the lm_head) is the smaller unless the device is slow, and then the full model's
    device part is longer still, so max(host, device) comes out the same. Without, the probe's
    step minus its device part: one layer's matmuls and the lm_head at `gemm_point`'s measured
    speed (`decode_gemm`, same batch size; its `layers` = the model's).

    >>> g = {"seconds": 0.0026, "head_seconds": 0.0002, "layers": 24}  # 24 x 0.1 ms + a 0.2 ms head
    >>> host_seconds(0.0020, g, overlap=True), round(host_seconds(0.0020, g, overlap=False) * 1e3, 3)
    (0.002, 1.7)
    """
    if overlap:
        return probe_step
    layer_s = (gemm_point["seconds"] - gemm_point["head_seconds"]) / gemm_point["layers"]
    return max(0.0, probe_step - layer_s - gemm_point["head_seconds"])


def serving_step(cfg: dict[str, Any], concurrency: int, prompt_len: int, out_lens: Any,
                 dtype: str = "bf16", max_num_batched_tokens: int | None = None) -> dict[str, float]:
    """The average step of an engine that keeps `concurrency` sequences running in steady state,
    each request `prompt_len` prompt tokens and `out_lens` outputs (a sample of the workload).

    Every step decodes one token per running sequence (the `decode_step` fields, at the
    token-weighted mean context: long requests hold more of the steps); each finished request's
    slot takes a new prompt, so on average a step also prefills `prompts_per_step` = concurrency /
    mean(out_lens) prompts. Not every step prefills: `prefill_share` is the share of steps that
    take a new prompt (given the engine's step token budget `max_num_batched_tokens`), and a step
    that does holds `prefill_step_tokens` tokens (its `prefill_step_decoders` decoding sequences
    and `prompts_per_prefill_step` new prompts: `prefill_step_size`). The two kinds of step run
    differently (a decode-only step reads the weights and the KV cache for a few rows; a step that
    prefills runs its matmuls on hundreds or thousands of rows, on a GPU outside the full CUDA
    graph): `steady_step_seconds` prices each kind and weights them by the share. `prefill_mix`
    (`prefill_step_mix`) is the same steps as a distribution: how many prompts a step that
    prefills holds, with what chance, for a price that is not linear in the step's tokens.

    >>> from labs_lib.models import load_config
    >>> s = serving_step(load_config("Llama-3.1-8B"), 8, prompt_len=256, out_lens=[32, 96])
    >>> s["prompts_per_step"], s["context"]  # 8 / 64; 256 + (32*31/2 + 96*95/2) / 128
    (0.125, 295.5)
    >>> round(s["prefill_share"], 4), round(s["prefill_step_tokens"], 1)  # 1 - (1 - 1/64)^8; 8 - 1.056 + 1.056 x 256
    (0.1184, 277.3)
    """
    params.positive_int("concurrency", concurrency)
    params.positive_int("prompt_len", prompt_len)
    lens = [params.positive_int("out_lens item", n) for n in out_lens]
    context = prompt_len + sum(n * (n - 1) / 2 for n in lens) / sum(lens)
    size = prefill_step_size(concurrency, lens, prompt_len, max_num_batched_tokens)
    return {**decode_step(cfg, concurrency, max(1, round(context)), dtype), "context": context,
            "prompts_per_step": size["prompts_per_step"], "prefill_share": size["share"],
            "prompts_per_prefill_step": size["prompts_per_prefill_step"],
            "prefill_step_tokens": size["tokens"], "prefill_step_decoders": size["decoders"],
            "prefill_mix": prefill_step_mix(concurrency, lens, prompt_len, max_num_batched_tokens)}


def prefill_share(concurrency: int, out_lens: Any, prompt_len: int,
                  max_num_batched_tokens: int | None = None) -> dict[str, float]:
    """How many steady-state steps also prefill: the share of steps that take a new prompt.

    A request of n output tokens holds its slot for n steps (the step that prefills it samples its
    first token), so a slot turns over in a given step with chance q = len(out_lens) /
    sum(out_lens) = 1 / mean output, and a step prefills `prompts_per_step` = concurrency x q
    prompts on average. Slots turn over independently (different lengths soon spread them out),
    so a step takes at least one new prompt with chance 1 - (1 - q)^concurrency. A step's token
    budget (`max_num_batched_tokens`: the concurrency decode tokens first, prompt tokens in what
    is left) spreads prompts that need more room over more steps: then at least
    prompts_per_step x prompt_len / (budget - concurrency) of the steps prefill. `share` is the
    larger of the two, at most 1; `prompts_per_prefill_step` = prompts_per_step / share (the
    size of the wave a prefilling step holds on average); `budget_binds` is True where the budget
    set the share (every step that prefills is then full).

    >>> s = prefill_share(2, [4, 4], prompt_len=16)  # q = 1/4: 1 - (3/4)^2 = 7/16 of the steps
    >>> s["prompts_per_step"], s["share"], round(s["prompts_per_prefill_step"], 4)  # 0.5 / (7/16)
    (0.5, 0.4375, 1.1429)
    >>> prefill_share(4, [8, 8], prompt_len=100, max_num_batched_tokens=104)["share"]  # 0.5 x 100 / 100 > 1 - (7/8)^4
    0.5
    """
    c = params.positive_int("concurrency", concurrency)
    plen = params.positive_int("prompt_len", prompt_len)
    lens = [params.positive_int("out_lens item", n) for n in out_lens]
    if not lens:
        raise ValueError("out_lens must hold at least one output length")
    q = len(lens) / sum(lens)
    per_step = c * q
    share = 1.0 - (1.0 - q) ** c
    if max_num_batched_tokens is not None:
        budget = params.positive_int("max_num_batched_tokens", max_num_batched_tokens)
        if budget <= c:
            raise ValueError(f"max_num_batched_tokens={budget} leaves no room for prompt tokens beside "
                             f"{c} decode tokens per step: it must exceed the concurrency")
        share = max(share, per_step * plen / (budget - c))
    binds = share > 1.0 - (1.0 - q) ** c
    share = min(1.0, share)
    return {"prompts_per_step": per_step, "share": share, "prompts_per_prefill_step": per_step / share,
            "budget_binds": binds}


def prefill_step_size(concurrency: int, out_lens: Any, prompt_len: int,
                      max_num_batched_tokens: int | None = None) -> dict[str, float]:
    """What a steady-state step that prefills holds: `prefill_share`'s fields (`share` of the
    steps prefill, `prompts_per_prefill_step` new prompts each on average), the `decoders` =
    concurrency - prompts_per_prefill_step other sequences decoding beside them (at least 0), and
    `tokens` = decoders + prompts_per_prefill_step x `prompt_len` in all (at most the step's token
    budget): the rows its matmuls process.

    >>> s = prefill_step_size(1, [64, 64], prompt_len=256)  # one slot: its new prompt, no decoder
    >>> s["prompts_per_prefill_step"], s["decoders"], s["tokens"]
    (1.0, 0.0, 256.0)
    >>> s = prefill_step_size(64, [64, 64], prompt_len=256)  # q = 1/64: 1 prompt per step, 1 - (63/64)^64 of the steps
    >>> round(s["prompts_per_prefill_step"], 4), round(s["tokens"], 1)  # 1 / 0.635; 64 - 1.5748 + 1.5748 x 256
    (1.5748, 465.6)
    """
    share = prefill_share(concurrency, out_lens, prompt_len, max_num_batched_tokens)
    k = share["prompts_per_prefill_step"]
    decoders = max(0.0, concurrency - k)
    tokens = decoders + k * prompt_len
    if max_num_batched_tokens is not None:
        tokens = min(tokens, float(max_num_batched_tokens))
    return {**share, "decoders": decoders, "tokens": tokens}


def prefill_step_mix(concurrency: int, out_lens: Any, prompt_len: int,
                     max_num_batched_tokens: int | None = None, tail: float = 1e-6) -> list[dict[str, float]]:
    """The steady-state steps that prefill as a distribution, not their mean (`prefill_step_size`):
    each entry a step that holds `prompts` = k new prompts beside `decoders` = concurrency - k
    decoding sequences, `tokens` = decoders + k x `prompt_len` in all (at most the step's token
    budget), with `chance` = P(k | the step prefills). Slots turn over independently, each with
    chance q = 1 / mean output per step (`prefill_share`), so k is binomial(concurrency, q) given
    k >= 1; chances below `tail` are dropped and the rest renormalized. Why a distribution: a
    step's time is not linear in its tokens. On a GPU a step of up to the largest CUDA graph
    replays it and one token more runs without, so at 32 sequences and 256-token prompts the mean
    step (1.27 prompts, 356 tokens: graphed) hides the fifth of the steps that take two or more
    prompts (542 tokens and up: ungraphed, about twice the time). Where the token budget binds
    (`prefill_share` is set by it: every step that prefills is full), one entry: the mean step.

    >>> mix = prefill_step_mix(2, [4, 4], prompt_len=16)  # q = 1/4: P(1) = 6/16, P(2) = 1/16, given >= 1: 6/7, 1/7
    >>> [(m["prompts"], round(m["chance"], 4), m["tokens"]) for m in mix]
    [(1, 0.8571, 17.0), (2, 0.1429, 32.0)]
    >>> mix = prefill_step_mix(32, [64], prompt_len=256)
    >>> round(sum(m["chance"] for m in mix), 6), round(sum(m["chance"] * m["prompts"] for m in mix), 4)  # mean k = (32/64) / (1 - (63/64)^32)
    (1.0, 1.2631)
    >>> prefill_step_mix(4, [8, 8], prompt_len=100, max_num_batched_tokens=104)  # the budget binds: full steps
    [{'prompts': 1.0, 'chance': 1.0, 'decoders': 3.0, 'tokens': 103.0}]
    """
    c = params.positive_int("concurrency", concurrency)
    plen = params.positive_int("prompt_len", prompt_len)
    size = prefill_step_size(c, out_lens, plen, max_num_batched_tokens)
    q = size["prompts_per_step"] / c
    if q >= 1.0 or size["budget_binds"]:  # every slot turns over, or the budget binds
        return [{"prompts": size["prompts_per_prefill_step"], "chance": 1.0, "decoders": size["decoders"],
                 "tokens": size["tokens"]}]
    logs = [math.lgamma(c + 1) - math.lgamma(k + 1) - math.lgamma(c - k + 1) + k * math.log(q) + (c - k) * math.log1p(-q)
            for k in range(c + 1)]
    prefills = 1.0 - math.exp(logs[0])
    cap = float(max_num_batched_tokens) if max_num_batched_tokens is not None else math.inf
    mix = [{"prompts": k, "chance": math.exp(logs[k]) / prefills, "decoders": float(c - k),
            "tokens": min(cap, float(c - k + k * plen))} for k in range(1, c + 1)]
    mix = [m for m in mix if m["chance"] >= tail]
    total = sum(m["chance"] for m in mix)
    for m in mix:
        m["chance"] /= total
    return mix


def prefill_step_seconds(curve: dict[int, float], tokens: float, graphed_max: int | None = None) -> float:
    """The time of an engine step of `tokens` tokens, from measured steps that did nothing but
    prefill (`curve`: tokens in the step -> seconds, e.g. `experiments.prefill_steps`): linear
    between the two measured sizes around `tokens`; below the smallest, the smallest's time (a step
    that prefills costs at least what the smallest measured one did: its fixed costs dominate);
    above the largest, extended along the last two points' slope (never falling: a noisy last
    point cannot make a bigger step cheaper); one measured size alone, in proportion to it.

    `graphed_max`: the engine's largest CUDA-graph size (`experiments.graph_max`; None on an
    engine without graphs). A step of up to that many tokens replays a graph, a larger one runs
    its kernels one launch at a time, so the time jumps there: a step is read off the measured
    sizes on its own side of the boundary only (below the smallest of them on the ungraphed side,
    extended down along their slope, never under the largest graphed size's time where `curve`
    holds one), and off all sizes where its side has none.

    The measured times are first made non-decreasing in the tokens, each size at most what any
    larger size on its side took: a step with fewer tokens does no more work, so a smaller size
    that measured slower (on an H200, 768-token steps at 29.3 ms and 1,024-token ones at 26.4)
    caught the host at a slow moment in every sample.

    >>> curve = {256: 0.013, 512: 0.015, 1024: 0.031}
    >>> [round(prefill_step_seconds(curve, t) * 1e3, 1) for t in (100, 256, 384, 1024, 1536)]
    [13.0, 13.0, 14.0, 31.0, 47.0]
    >>> curve = {512: 0.014, 768: 0.024, 1024: 0.028}  # graphs up to 512 tokens: 716 is read off 768 and 1024
    >>> round(prefill_step_seconds(curve, 716, graphed_max=512) * 1e3, 1), round(prefill_step_seconds(curve, 716) * 1e3, 1)
    (23.2, 22.0)
    >>> curve = {512: 0.0141, 768: 0.0293, 1024: 0.0264, 2048: 0.0505}  # 768 measured slower than 1024
    >>> [round(prefill_step_seconds(curve, t, graphed_max=512) * 1e3, 1) for t in (542, 768, 900)]
    [26.4, 26.4, 26.4]
    """
    if not curve:
        raise ValueError("prefill_step_seconds needs at least one measured step size")
    params.positive_float("tokens", tokens)
    pts = sorted((int(t), float(s)) for t, s in curve.items())
    if graphed_max is not None:
        graphed_max = params.positive_int("graphed_max", graphed_max)
        below = _non_decreasing([p for p in pts if p[0] <= graphed_max])
        above = _non_decreasing([p for p in pts if p[0] > graphed_max])
        if tokens > graphed_max and above:
            if tokens < above[0][0] and len(above) > 1:  # down along the ungraphed side's own slope
                (t0, s0), (t1, s1) = above[0], above[1]
                floor = below[-1][1] if below else 0.0
                return max(floor, s0 - max(0.0, s1 - s0) * (t0 - tokens) / (t1 - t0))
            pts = above
        elif tokens <= graphed_max and below:
            pts = below
    pts = _non_decreasing(pts)
    if tokens <= pts[0][0]:
        return pts[0][1]
    if len(pts) == 1:  # one measured size: in proportion to the tokens
        return pts[0][1] * tokens / pts[0][0]
    i = next((j for j in range(1, len(pts)) if tokens <= pts[j][0]), len(pts) - 1)
    (t0, s0), (t1, s1) = pts[i - 1], pts[i]
    if tokens > t1:
        return s1 + max(0.0, s1 - s0) * (tokens - t1) / (t1 - t0)
    return s0 + (s1 - s0) * (tokens - t0) / (t1 - t0)


def _non_decreasing(pts: list[tuple[int, float]]) -> list[tuple[int, float]]:
    """Sorted (tokens, seconds) with each time lowered to the least time of any larger size."""
    out, least = [], math.inf
    for t, s in reversed(pts):
        least = min(least, s)
        out.append((t, least))
    return out[::-1]


def closed_loop_tokens_per_step(concurrency: int, out_lens: Any, lag_steps: float) -> float:
    """Tokens a steady-state step generates when `concurrency` clients each submit their next
    request as soon as their last one finishes: a request of n output tokens holds its slot for
    n steps that decode plus `lag_steps` in which the slot is empty (`experiments.turnover_lag`:
    the client learns of the finish, the engine takes the new request into a later step), so a
    slot decodes in a fraction p = mean(n) / (mean(n) + lag) of the steps. The engine steps
    only while at least one slot is busy (with every slot empty it waits, and no step is
    counted), so a step holds concurrency x p / (1 - (1 - p) ** concurrency) tokens: one for a
    lone client, whatever the lag; about concurrency x p once a few slots share the engine.
    Throughput = this / the mean step (`steady_step_seconds`).

    >>> closed_loop_tokens_per_step(128, [64, 68], lag_steps=2.0)  # 128 x 66 / 68
    124.23529411764706
    >>> closed_loop_tokens_per_step(1, [20], lag_steps=5.0)  # a lone client's gaps are not steps
    1.0
    >>> closed_loop_tokens_per_step(8, [10], lag_steps=0.0)
    8.0
    """
    c = params.positive_int("concurrency", concurrency)
    lens = [params.positive_int("out_lens item", n) for n in out_lens]
    if not lens:
        raise ValueError("out_lens must hold at least one output length")
    lag = float(lag_steps)
    if not lag >= 0.0:
        raise ValueError(f"lag_steps must be >= 0, got {lag_steps!r}")
    mean = sum(lens) / len(lens)
    busy = mean / (mean + lag)
    return c * busy / (1.0 - (1.0 - busy) ** c)


def steady_step_seconds(step: dict[str, float], decode_s: float, prefill_step_s: float) -> float:
    """A steady-state step's mean time in seconds: the share of steps that prefill (`step["prefill_share"]`,
    from `serving_step`) at `prefill_step_s` (e.g. `prefill_step_seconds` at the step's tokens,
    plus its decoders' KV reads), the others at `decode_s` (a decode-only step, e.g.
    `predict_step`'s seconds at the concurrency and context). Throughput = concurrency / `seconds`.

    >>> round(steady_step_seconds({"prefill_share": 0.8}, decode_s=0.010, prefill_step_s=0.030) * 1e3, 2)  # 0.8 x 30 + 0.2 x 10
    26.0
    """
    params.positive_float("decode_s", decode_s)
    params.positive_float("prefill_step_s", prefill_step_s)
    share = step["prefill_share"]
    if not 0.0 <= share <= 1.0:
        raise ValueError(f"prefill_share must be in [0, 1], got {share!r}")
    return share * prefill_step_s + (1.0 - share) * decode_s
