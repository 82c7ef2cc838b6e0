"""Quality of a quantized model against its baseline: perplexity, top-1 agreement, KL divergence.

Text: a fixed slice of the Python documentation that ships with Python (`pydoc_data.topics`),
so every machine scores the same tokens offline. The slice rule (`eval_windows`): the topics in
sorted key order, from the middle key on (the second half of the alphabet), joined by blank
lines, tokenized with the model's tokenizer without special tokens, cut into consecutive windows
of `window` tokens; the first `n_windows` windows. Each window is scored on its own: every token
but the first is predicted from the tokens before it in its window.

- perplexity = exp(mean negative log-likelihood of the scored tokens);
- top-1 agreement = share of positions where the quantized model's most likely next token is
  the baseline's;
- KL(baseline || quantized) of the next-token distributions, averaged over positions.

vLLM's `prompt_logprobs=K` returns, per position, only the K most likely tokens (plus the actual
next token). The full KL needs every token's probability, so from vLLM we report a *lower
bound*: the KL between the two distributions coarse-grained onto the bins {each token whose
probability both sides returned} + {one bin with all the rest}. Both sides' probabilities of
every bin are exact (a bin's rest mass is 1 minus the returned ones), and merging outcomes never
increases a KL (log-sum inequality), so the number is <= the full KL. A token that one side
returned and the other did not goes into the rest bin: no probability is guessed. From full
logits (transformers) the KL is exact, and the same bound is computed beside it to show how
tight it is.

>>> import math
>>> base = [{1: math.log(0.5), 2: math.log(0.3)}]  # baseline: top-2 of one position
>>> other = [{1: math.log(0.4), 2: math.log(0.4)}]
>>> round(kl_lower_bound(base[0], other[0]), 4)  # bins 1, 2, rest: 0.5/0.4, 0.3/0.4, 0.2/0.2
0.0253
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from .. import params

EPS = 1e-12  # floor of a rest-bin probability that rounds to <= 0


def eval_text() -> str:
    """The held-out text: sorted `pydoc_data.topics` keys from the middle one on, joined."""
    from pydoc_data.topics import topics

    keys = sorted(topics)
    return "\n\n".join(topics[k] for k in keys[len(keys) // 2:])


def eval_windows(tokenizer: Any, n_windows: int, window: int) -> list[list[int]]:
    """`n_windows` consecutive windows of `window` token ids of `eval_text()` (the slice rule
    of the module docstring). Raises ValueError if the text is too short."""
    params.positive_int("n_windows", n_windows)
    params.int_in_range("window", window, 2)
    ids = tokenizer(eval_text(), add_special_tokens=False)["input_ids"]
    if len(ids) < n_windows * window:
        raise ValueError(f"the held-out text has {len(ids):,} tokens: fewer than {n_windows} "
                         f"windows of {window}")
    return [list(map(int, ids[i * window:(i + 1) * window])) for i in range(n_windows)]


def perplexity(nlls: Sequence[float]) -> float:
    """exp(mean negative log-likelihood).

    >>> round(perplexity([math.log(4), math.log(4)]), 6)  # each token had probability 1/4
    4.0
    """
    if not len(nlls):
        raise ValueError("no scored tokens")
    return float(math.exp(float(np.mean(nlls))))


def kl_lower_bound(p_lp: dict[int, float], q_lp: dict[int, float]) -> float:
    """KL(P || Q) coarse-grained onto {tokens both returned} + {rest}: a lower bound of the full
    KL (module docstring). `p_lp`, `q_lp`: token id -> log-probability (partial lists).

    >>> kl_lower_bound({1: math.log(0.9)}, {1: math.log(0.9)})  # same bins, same mass
    0.0
    >>> round(kl_lower_bound({1: math.log(0.9)}, {2: math.log(0.9)}), 6)  # nothing shared: 1 bin
    0.0
    """
    both = p_lp.keys() & q_lp.keys()
    kl, p_in, q_in = 0.0, 0.0, 0.0
    for t in both:
        p, q = math.exp(p_lp[t]), math.exp(q_lp[t])
        p_in += p
        q_in += q
        kl += p * (p_lp[t] - q_lp[t])
    p_rest, q_rest = 1.0 - p_in, 1.0 - q_in
    if p_rest > EPS:
        kl += p_rest * math.log(p_rest / max(q_rest, EPS))
    return max(kl, 0.0)


def top1(lp: dict[int, float]) -> int:
    """The most likely token of a (partial) distribution: the highest log-probability."""
    return max(lp, key=lp.get)


def compare_positions(base: Sequence[dict[int, float]], other: Sequence[dict[int, float]],
                      targets: Sequence[int]) -> dict[str, float]:
    """Perplexity of both, top-1 agreement and mean KL lower bound over aligned positions.

    `base[i]`, `other[i]`: token -> log-probability at position i (each containing at least the
    actual next token `targets[i]`, as vLLM's prompt_logprobs do).

    >>> L = math.log
    >>> b = [{5: L(0.6), 7: L(0.3)}, {7: L(0.5), 5: L(0.4)}]
    >>> o = [{5: L(0.5), 7: L(0.4)}, {5: L(0.5), 7: L(0.3)}]
    >>> r = compare_positions(b, o, [5, 7])
    >>> round(r["ppl_base"], 4), round(r["ppl"], 4), r["top1_agreement"]  # sqrt(1/(.6*.5)), sqrt(1/(.5*.3))
    (1.8257, 2.582, 0.5)
    """
    if not (len(base) == len(other) == len(targets)) or not targets:
        raise ValueError(f"positions must align and be non-empty: {len(base)}, {len(other)}, {len(targets)}")
    nll_b, nll_o, agree, kls = [], [], 0, []
    for pb, po, t in zip(base, other, targets, strict=True):
        if t not in pb or t not in po:
            raise ValueError(f"the actual next token {t} is missing from a position's logprobs")
        nll_b.append(-pb[t])
        nll_o.append(-po[t])
        agree += top1(pb) == top1(po)
        kls.append(kl_lower_bound(pb, po))
    return {"ppl_base": perplexity(nll_b), "ppl": perplexity(nll_o),
            "top1_agreement": agree / len(targets), "kl_lower_bound": float(np.mean(kls)),
            "positions": len(targets)}


def vllm_positions(prompt_logprobs: Sequence[Any], ids: Sequence[int]) -> tuple[list[dict[int, float]], list[int]]:
    """vLLM's `RequestOutput.prompt_logprobs` of one window -> (per-position dicts, targets).
    Position 0 has no prediction (None) and is dropped."""
    pos = [{int(t): float(lp.logprob) for t, lp in d.items()} for d in prompt_logprobs[1:]]
    return pos, list(map(int, ids[1:]))


def topk_dicts(logprobs: Any, targets: Sequence[int], k: int) -> list[dict[int, float]]:
    """From full log-probabilities [positions, vocab] (torch): per position the top-k tokens and
    the actual next token, as vLLM's prompt_logprobs would return them."""
    vals, idx = logprobs.topk(k, dim=-1)
    out = []
    for i, t in enumerate(targets):
        d = dict(zip(idx[i].tolist(), vals[i].tolist(), strict=True))
        d[int(t)] = float(logprobs[i, t])
        out.append(d)
    return out


def compare_logits(base_logits: Any, other_logits: Any, targets: Sequence[int], k: int = 20
                   ) -> dict[str, float]:
    """Exact metrics from full logits [positions, vocab] (torch tensors, any float dtype): the
    perplexities, top-1 agreement, the full KL(base || other), and beside it the top-k bound that
    vLLM's logprobs allow (`kl_lower_bound`).

    >>> import torch
    >>> b = torch.log(torch.tensor([[0.6, 0.3, 0.1], [0.2, 0.5, 0.3]]))
    >>> o = torch.log(torch.tensor([[0.5, 0.4, 0.1], [0.2, 0.3, 0.5]]))
    >>> r = compare_logits(b, o, [0, 1], k=1)
    >>> round(r["kl"], 4), round(r["kl_lower_bound"], 4), r["top1_agreement"]
    (0.0626, 0.0537, 0.5)
    """
    import torch

    lb = torch.log_softmax(base_logits.float(), -1)
    lo = torch.log_softmax(other_logits.float(), -1)
    t = torch.tensor(list(targets))
    rows = torch.arange(len(t))
    kl = (lb.exp() * (lb - lo)).sum(-1).clamp_min(0)
    bound = compare_positions(topk_dicts(lb, targets, k), topk_dicts(lo, targets, k), targets)
    return {"ppl_base": perplexity((-lb[rows, t]).tolist()), "ppl": perplexity((-lo[rows, t]).tolist()),
            "top1_agreement": float((lb.argmax(-1) == lo.argmax(-1)).float().mean()),
            "kl": float(kl.mean()), "kl_lower_bound": bound["kl_lower_bound"], "positions": len(t)}
