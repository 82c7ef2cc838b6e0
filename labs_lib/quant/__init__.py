"""Quantization for lab 07: byte formulas, RTN checkpoints, quality metrics, one setting per run.

- `formats`  schemes and their weight bytes (what is quantized, what stays 16-bit), the
             `quantization_config` of AWQ / GPTQ / compressed-tensors, shape-model configs, and
             the settings each tier runs (`settings_for`)
- `rtn`      round-to-nearest quantizer, int4 packing, checkpoint writers (AWQ, GPTQ,
             compressed-tensors W8A8 int8 and W4A16) for real-weights models
- `quality`  perplexity, top-1 agreement and KL divergence against a baseline: from vLLM's
             top-K `prompt_logprobs` (a lower bound of the KL, see there) or from full logits
- `bench`    one setting in a fresh process: engine weight bytes, KV capacity, batch-1 TPOT,
             prefill, throughput at fixed and admitted concurrency, quality
"""

from .formats import SCHEMES, Setting, kv_variants, settings_for, weight_bytes

__all__ = ["SCHEMES", "Setting", "kv_variants", "settings_for", "weight_bytes"]
