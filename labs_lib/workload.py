"""Workloads: prompts as token ids (exact lengths, no tokenizer needed) and output lengths.

Every prompt begins with tokens unique to it, so two prompts never share a cached prefix unless
a shared prefix is asked for (`shared_prefix_len`). Warm-up prompts come from another seed
range, so warming up never primes the prefix cache for the measured prompts.

>>> w = token_prompts(3, 8, vocab_size=1000, seed=1)
>>> [len(p) for p in w]
[8, 8, 8]
>>> len({p[0] for p in w})  # distinct first tokens: no two prompts share a block
3
"""

from __future__ import annotations

import numpy as np

from . import params

RESERVED = 16  # low ids are often special tokens (pad, bos, eos); never emit them


def token_prompts(n: int, length: int, *, vocab_size: int, seed: int = 0,
                  shared_prefix_len: int = 0, prefix_seed: int = 12345) -> list[list[int]]:
    """`n` prompts of `length` token ids. The first `shared_prefix_len` tokens are common to all
    (drawn from `prefix_seed`); the rest are unique per prompt and per seed."""
    params.positive_int("n", n)
    params.positive_int("length", length)
    params.int_in_range("vocab_size", vocab_size, RESERVED + 2)
    params.int_in_range("shared_prefix_len", shared_prefix_len, 0, length)
    prefix = np.random.default_rng(prefix_seed).integers(RESERVED, vocab_size, shared_prefix_len)
    rng = np.random.default_rng(seed + 1_000_003)
    out = []
    for _ in range(n):
        tail = rng.integers(RESERVED, vocab_size, length - shared_prefix_len)
        out.append([int(t) for t in np.concatenate([prefix, tail])])
    if shared_prefix_len < length:  # make the first private token differ between prompts
        firsts = rng.permutation(np.arange(RESERVED, vocab_size))[:n]
        for p, f in zip(out, firsts, strict=False):
            p[shared_prefix_len] = int(f)
    return out


def warmup_prompts(n: int, length: int, *, vocab_size: int) -> list[list[int]]:
    """Prompts for warm-up: a seed range the measured prompts never use."""
    return token_prompts(n, length, vocab_size=vocab_size, seed=987_654_321)


def output_lengths(n: int, *, dist: str = "fixed", mean: int = 64, lo: int = 1, hi: int | None = None,
                   seed: int = 0) -> list[int]:
    """Output lengths: 'fixed' (all `mean`), 'uniform' in [lo, hi], or 'exponential' (mean `mean`,
    clipped to [lo, hi]): the long tail of real chat traffic.

    >>> output_lengths(4, dist="fixed", mean=7)
    [7, 7, 7, 7]
    """
    params.positive_int("n", n)
    params.positive_int("mean", mean)
    params.choice("dist", dist, ["fixed", "uniform", "exponential"])
    hi = hi or 4 * mean
    params.int_in_range("lo", lo, 1, hi)
    rng = np.random.default_rng(seed)
    if dist == "fixed":
        return [mean] * n
    if dist == "uniform":
        return [int(x) for x in rng.integers(lo, hi + 1, n)]
    return [int(x) for x in np.clip(np.round(rng.exponential(mean, n)), lo, hi)]
