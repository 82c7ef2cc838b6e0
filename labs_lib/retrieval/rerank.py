"""Reranking: a second, costlier look at the first stage's candidates.

Two kinds, measured separately:

- a **cross-encoder** reads (query, candidate text) pairs jointly and scores each: the cost grows
  with the number of candidates x their tokens. No cross-encoder with trained weights installs
  from a package, so offline the lab builds one from the packaged MiniLM encoder with a fresh
  (random) one-logit head: the *cost* is exactly that of the MS MARCO MiniLM-L6 cross-encoders
  (same architecture, same sequence lengths), the *scores* are meaningless. `load` says which one
  you got (`trained`); quality is measured only with trained weights (a hub id, online).
- **exact re-scoring**: approximate candidates (e.g. from IVF-PQ, whose distances are computed
  on compressed codes) re-ranked by their exact distances to the full vectors. Its quality gain
  is measurable offline: `labs_lib.retrieval.index.ivf_searcher(..., rerank_xb=xb)`.

>>> import numpy as np
>>> xb = np.array([[0, 0], [1, 0], [3, 0]], dtype="float32")
>>> exact_rescore(np.array([[2.9, 0]], dtype="float32"), xb, np.array([[0, 1, 2]]), k=2).tolist()
[[2, 1]]
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .. import params, timing
from . import metrics

OFFLINE_NOTE = ("cross-encoder built from the packaged MiniLM encoder with a RANDOM one-logit "
                "head: its cost is that of a MiniLM-L6 cross-encoder, its scores are meaningless "
                "(quality of reranking is measured only with trained weights, e.g. "
                "reranker='cross-encoder/ms-marco-MiniLM-L6-v2' when the hub is reachable)")


@dataclass
class Reranker:
    model: Any  # sentence_transformers.CrossEncoder
    name: str
    trained: bool  # False: random head; cost only

    def describe(self) -> str:
        return f"reranker {self.name}" + ("" if self.trained else f": {OFFLINE_NOTE}")


def load(name: str = "", device: str = "cpu", *, max_length: int = 256) -> Reranker:
    """A cross-encoder. `name` empty: the offline stand-in (packaged MiniLM + random head).

    A hub id or local directory of a trained cross-encoder gives a trained reranker; if it cannot
    be loaded, the error names it and the offline alternative.
    """
    import torch
    from sentence_transformers import CrossEncoder

    from .. import models
    from .embed import quiet_transformers

    if not name:
        torch.manual_seed(0)  # the random head, reproducibly
        path = models.resolve(models.MINILM).path
        with quiet_transformers():  # its load report lists the random head: we say so ourselves
            ce = CrossEncoder(str(path), num_labels=1, device=device, max_length=max_length)
        return Reranker(ce, f"{models.MINILM} + random head", trained=False)
    try:
        ce = CrossEncoder(name, device=device, max_length=max_length)
    except OSError as e:
        raise RuntimeError(f"reranker={name!r} could not be loaded ({e}). Offline, leave "
                           "reranker empty: the cost is measured with a random head.") from e
    return Reranker(ce, name, trained=True)


def scores(rr: Reranker, query: str, texts: Sequence[str], *, batch_size: int = 32) -> np.ndarray:
    """One score per (query, text) pair, higher = more relevant."""
    import torch

    params.positive_int("batch_size", batch_size)
    with torch.inference_mode():
        s = rr.model.predict([(query, t) for t in texts], batch_size=batch_size,
                             show_progress_bar=False, convert_to_numpy=True)
    return np.asarray(s, dtype=np.float32).reshape(-1)


def rerank(rr: Reranker, query: str, cand_ids: Sequence[int], texts: Sequence[str],
           *, batch_size: int = 32) -> list[int]:
    """`cand_ids` reordered by the cross-encoder's score (stable for ties); texts[i] is id i's text."""
    ids = [int(i) for i in cand_ids if i >= 0]
    s = scores(rr, query, [texts[i] for i in ids], batch_size=batch_size)
    order = np.argsort(-s, kind="stable")
    return [ids[j] for j in order]


def cost(rr: Reranker, queries: Sequence[str], candidates: Sequence[Sequence[str]],
         n_candidates: Sequence[int], *, batch_size: int = 32, warmup: int = 2) -> list[dict[str, Any]]:
    """Per query, seconds to score its first n candidates, for each n in `n_candidates`.

    `candidates[i]` are query i's candidate texts (at least max(n_candidates) of them). Returns one
    row per (n, query) with `seconds`; summarize per n for p50/p99. The device is synchronized
    around each call; the first `warmup` calls (largest n) are not timed.
    """
    params.positive_ints("n_candidates", n_candidates)
    need = max(n_candidates)
    if any(len(c) < need for c in candidates):
        raise ValueError(f"every query needs at least max(n_candidates)={need} candidate texts")
    dev = str(rr.model.device)
    for i in range(min(warmup, len(queries))):
        scores(rr, queries[i], candidates[i][:need], batch_size=batch_size)
    rows = []
    for n in n_candidates:
        for q, cands in zip(queries, candidates, strict=True):
            timing.synchronize(dev)
            t0 = time.perf_counter()
            scores(rr, q, cands[:n], batch_size=batch_size)
            timing.synchronize(dev)
            rows.append(dict(n_candidates=n, seconds=time.perf_counter() - t0))
    return rows


def exact_rescore(xq: np.ndarray, xb: np.ndarray, cand_ids: np.ndarray, k: int) -> np.ndarray:
    """Each query's candidates re-ranked by exact squared L2 to the full vectors; the best k ids.

    Missing candidates (-1) rank last, so a row with fewer than k real candidates ends in -1.
    """
    params.positive_int("k", k)
    cand_ids = np.asarray(cand_ids)
    d = metrics.true_distances(xq, xb, cand_ids)  # -1 (no result) -> inf, sorts last
    order = np.argsort(d, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(cand_ids, order, axis=1)
