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


def blocks_needed(tokens: int, block_size: int) -> int:
    """Blocks of `block_size` tokens that `tokens` occupy (the last one partly filled).

    >>> blocks_needed(17, 16)
    2
    """
    params.non_negative_int("tokens", tokens)
    params.positive_int("block_size", block_size)
    return math.ceil(tokens / block_size)
