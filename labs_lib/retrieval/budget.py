"""The RAG latency budget: per-query stage times added up, and where the time goes.

A request's latency is the SUM of its stages (embed the query, search the index, rerank the
candidates, prefill the retrieved context = time to first token, decode the answer), so its p99
is the p99 of the per-query sums, not the sum of the stages' p99s (which overstates the tail when
the stages' slow queries differ). `table` therefore takes per-query samples of every stage,
paired by query, and reports both: each stage's p50/p99 and share of the median total, and the
total's p50/p99 over the per-query sums.

>>> t = table({"embed": [1.0, 1.0, 2.0], "llm": [5.0, 9.0, 5.0]})
>>> t["p50_ms"].round(1).tolist()   # embed, llm, total: per-query sums 6, 10, 7 s -> median 7
[1000.0, 5000.0, 7000.0]
>>> dominant(t)
'llm'
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from .. import params, timing


def table(stages: Mapping[str, Sequence[float]]) -> pd.DataFrame:
    """One row per stage plus 'total': p50/p99 in ms, n, and each stage's share of the total p50.

    `stages[name][i]` is query i's seconds in that stage; every stage has the same queries.
    """
    if not stages:
        raise ValueError("stages must not be empty")
    arrays = {k: np.asarray(v, dtype=float) for k, v in stages.items()}
    n = {len(a) for a in arrays.values()}
    if len(n) != 1 or 0 in n:
        raise ValueError("every stage needs the same, non-zero number of per-query samples, got "
                         + ", ".join(f"{k}: {len(a)}" for k, a in arrays.items()))
    total = np.sum(list(arrays.values()), axis=0)
    rows = []
    for name, a in [*arrays.items(), ("total", total)]:
        s = timing.summarize(a).scaled(1e3)
        rows.append(dict(stage=name, p50_ms=s.p50, p99_ms=s.p99, n=s.n,
                         share_of_p50=float(np.median(a) / np.median(total))))
    return pd.DataFrame(rows).set_index("stage")


def dominant(t: pd.DataFrame) -> str:
    """The stage with the largest median (the one to optimize first)."""
    return str(t.drop(index="total")["p50_ms"].idxmax())


def knee(ks: Sequence[int], hit_rates: Sequence[float], *, within: float = 0.02) -> int:
    """The smallest k whose hit rate is within `within` of the best over `ks`: beyond it, more
    context costs prefill time (linear in tokens) but brings almost no more answers.

    >>> knee([1, 2, 5, 10, 20], [0.40, 0.55, 0.70, 0.75, 0.76])
    10
    """
    params.positive_ints("ks", ks)
    if len(ks) != len(hit_rates) or not ks:
        raise ValueError("ks and hit_rates must be non-empty and of the same length")
    best = max(hit_rates)
    return int(min(k for k, h in zip(ks, hit_rates, strict=True) if h >= best - within))


def fit_line(x: Sequence[float], y: Sequence[float]) -> tuple[float, float]:
    """Least-squares slope and intercept of y = slope * x + intercept.

    >>> fit_line([0, 1, 2], [1.0, 3.0, 5.0])
    (2.0, 1.0)
    """
    x, y = np.asarray(x, float), np.asarray(y, float)
    if x.size < 2 or x.size != y.size or np.ptp(x) == 0:
        raise ValueError("fit_line needs at least two points with different x")
    slope, intercept = np.polyfit(x, y, 1)
    return round(float(slope), 12), round(float(intercept), 12)


def rag_prompt(question: str, chunks: Sequence[str]) -> str:
    """The prompt a RAG request sends: numbered retrieved chunks, then the question.

    >>> print(rag_prompt("What is x?", ["x is 1."]))
    Answer the question using only the context below.
    <BLANKLINE>
    [1] x is 1.
    <BLANKLINE>
    Question: What is x?
    Answer:
    """
    ctx = "\n\n".join(f"[{i}] {c}" for i, c in enumerate(chunks, start=1))
    return ("Answer the question using only the context below.\n\n"
            f"{ctx}\n\nQuestion: {question}\nAnswer:")
