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
