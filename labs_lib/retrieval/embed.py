"""Sentence embeddings, measured: what the query and the corpus cost to embed.

The model is all-MiniLM-L6-v2 with its real weights, installed from a package (no hub):
`models.resolve("all-MiniLM-L6-v2").path` is a sentence-transformers directory. Any other
sentence-transformers directory or hub id works the same way.

What a RAG latency budget needs from this step:

- `throughput`: sentences per second vs batch size, per dtype (fp32 and bf16 autocast on the
  CPU; fp16 on a GPU). Each point: one warm-up pass (kernel selection, memory pools, the first
  call's lazy imports), then `repeats` timed passes over the same texts, the device synchronized
  before the clock stops; the median pass is reported with the sample count.
- `query_latency`: batch-1 encode of one query at a time, the per-query samples (for p50/p99).
- `token_lengths`: how many tokens of each text the model really sees (it truncates at
  `max_seq_length`: a chunk longer than that is embedded by its beginning only).
- `encode`: unit-length float32 vectors (cosine similarity = inner product = 1 - L2^2 / 2).

>>> dtype_for("cpu", "auto"), dtype_for("cuda", "auto")
('fp32', 'fp16')
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from .. import params, timing

DTYPES = ("fp32", "bf16", "fp16")


def dtype_for(device: str, dtype: str = "auto") -> str:
    """The embedding dtype: `auto` is fp32 on the CPU (bf16 is measured beside it) and fp16 on a GPU."""
    params.choice("dtype", dtype, ("auto", *DTYPES))
    if dtype == "auto":
        return "fp16" if str(device).startswith("cuda") else "fp32"
    return dtype


def load(name: str = "all-MiniLM-L6-v2", device: str = "cpu") -> Any:
    """A SentenceTransformer on `device`, from a registry name, a local directory or a hub id.

    The packaged all-MiniLM-L6-v2 needs no network; a hub id needs the hub (or its cache).
    """
    from sentence_transformers import SentenceTransformer

    from .. import models

    path = models.resolve(name).path if name in models.known_models() else name
    with quiet_transformers():
        return SentenceTransformer(str(path), device=device)


@contextlib.contextmanager
def quiet_transformers() -> Iterator[None]:
    """transformers without its per-load progress bar and load report (errors still show)."""
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)
        hf_logging.enable_progress_bar()


@contextlib.contextmanager
def _precision(model: Any, dtype: str) -> Iterator[None]:
    """Run the model in `dtype`: autocast for bf16/fp16 (weights stay fp32, matmuls run low)."""
    import torch

    params.choice("dtype", dtype, DTYPES)
    if dtype == "fp32":
        yield
        return
    dev = "cuda" if str(model.device).startswith("cuda") else "cpu"
    with torch.autocast(dev, dtype=torch.bfloat16 if dtype == "bf16" else torch.float16):
        yield


def _half_copy(model: Any, dtype: str) -> Any:
    """A copy of `model` with fp16/bf16 weights (made once, kept on the model): on a GPU a half
    model is faster than fp32 weights under autocast, which re-casts every weight every call."""
    import copy

    import torch

    cache = model.__dict__.setdefault("_labs_half", {})
    if dtype not in cache:
        cache[dtype] = copy.deepcopy(model).to(torch.float16 if dtype == "fp16" else torch.bfloat16)
    return cache[dtype]


def encode(model: Any, texts: Sequence[str], *, batch_size: int = 64, dtype: str = "fp32") -> np.ndarray:
    """Unit-length float32 embeddings (n x d) of `texts`.

    fp16/bf16: on a GPU, a half-precision copy of the model; on the CPU, autocast (matmuls in
    bf16, the rest in fp32), which measured faster there than a bf16 copy.
    """
    import torch

    params.positive_int("batch_size", batch_size)
    params.choice("dtype", dtype, DTYPES)
    on_gpu = str(model.device).startswith("cuda")
    m = _half_copy(model, dtype) if on_gpu and dtype != "fp32" else model
    with torch.inference_mode(), _precision(m, "fp32" if m is not model else dtype):
        x = m.encode(list(texts), batch_size=batch_size, convert_to_numpy=True,
                     normalize_embeddings=True, show_progress_bar=False)
    return np.ascontiguousarray(x, dtype=np.float32)


def token_lengths(model: Any, texts: Sequence[str]) -> np.ndarray:
    """Tokens per text as the model's tokenizer counts them (special tokens included), before
    truncation at `model.max_seq_length`: compare with it to see how many were cut."""
    enc = model.tokenizer(list(texts), add_special_tokens=True, truncation=False)["input_ids"]
    return np.array([len(e) for e in enc])


def throughput(model: Any, texts: Sequence[str], batch_sizes: Sequence[int], *,
               dtypes: Sequence[str] = ("fp32",), repeats: int = 3) -> list[dict[str, Any]]:
    """Sentences/s for each (dtype, batch size): the median of `repeats` passes over `texts`.

    Every pass encodes all of `texts` (the same ones, so points compare), after one warm-up pass.
    """
    params.positive_ints("batch_sizes", batch_sizes)
    params.positive_int("repeats", repeats)
    if not texts:
        raise ValueError("texts must not be empty")
    dev = str(model.device)
    rows = []
    for dt in dtypes:
        for b in batch_sizes:
            samples = timing.measure(lambda b=b, dt=dt: encode(model, texts, batch_size=b, dtype=dt),
                                     warmup=1, repeats=repeats, device=dev)
            s = timing.summarize(samples)
            rows.append(dict(dtype=dt, batch=b, sentences_per_s=len(texts) / s.p50,
                             pass_s_p50=s.p50, n=s.n, device=dev))
    return rows


def query_latency(model: Any, queries: Sequence[str], *, dtype: str = "fp32",
                  warmup: int = 3) -> list[float]:
    """Seconds to embed each query alone (batch 1), one sample per query after `warmup` queries."""
    import torch

    params.non_negative_int("warmup", warmup)
    if not queries:
        raise ValueError("queries must not be empty")
    dev = str(model.device)
    for q in list(queries)[:warmup]:
        encode(model, [q], batch_size=1, dtype=dtype)
    out = []
    with torch.inference_mode():
        for q in queries:
            timing.synchronize(dev)
            t0 = time.perf_counter()
            encode(model, [q], batch_size=1, dtype=dtype)
            timing.synchronize(dev)
            out.append(time.perf_counter() - t0)
    return out
