"""Retrieval quality metrics on numpy arrays: recall@k (with ties), MRR@k, nDCG@k.

Why a tie rule: with exact ground truth from a flat index, several base vectors can sit at the
same distance as the k-th true neighbour (duplicates, quantized data, clustered synthetic data).
Which of them the flat index lists is arbitrary, so an approximate index that returns another
one of the tied vectors is not wrong. Like ann-benchmarks, a returned id counts as a hit when its
true distance is <= the k-th true distance + `tol`; without distances, plain set intersection.

Mean recall hides the queries that fail: `per_query_recall` gives one number per query and
`recall_summary` reports the worst 1 % next to the mean.

Distances are "smaller is closer" (L2 or squared L2). For inner-product search pass negated
similarities.

>>> gt = np.array([[0, 1, 2]])
>>> recall_at_k(np.array([[0, 1, 9]]), gt, k=3)
0.6666666666666666
>>> mrr_at_k(np.array([[5, 7, 3]]), [{3}], k=3)
0.3333333333333333
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from .. import params


def _as_2d_ids(name: str, ids: Any) -> np.ndarray:
    a = np.asarray(ids)
    if a.ndim == 1:
        a = a[None, :]
    if a.ndim != 2 or not np.issubdtype(a.dtype, np.integer):
        raise ValueError(f"{name} must be a 2-D integer array (queries x ranks), got "
                         f"shape {a.shape} dtype {a.dtype}")
    return a


def true_distances(xq: np.ndarray, xb: np.ndarray, ids: np.ndarray, *,
                   metric: str = "l2") -> np.ndarray:
    """The exact distance from each query to each of its returned ids (nq x k, float64).

    `metric`: "l2" (squared L2, as faiss reports it) or "ip" (negated inner product, so that
    smaller is closer as for L2). Ids < 0 (faiss's "no result") get +inf.

    >>> xb = np.array([[0.0, 0.0], [3.0, 4.0]])
    >>> true_distances(np.array([[0.0, 0.0]]), xb, np.array([[1, -1]]))
    array([[25., inf]])
    """
    params.choice("metric", metric, ["l2", "ip"])
    ids = _as_2d_ids("ids", ids)
    xq = np.asarray(xq, dtype=np.float64)
    xb = np.asarray(xb)  # gathered rows are converted below: never copy all of a large base
    if xq.ndim != 2 or xb.ndim != 2 or xq.shape[1] != xb.shape[1]:
        raise ValueError(f"xq and xb must be 2-D with the same dimension, got {xq.shape} and {xb.shape}")
    if ids.shape[0] != xq.shape[0]:
        raise ValueError(f"ids has {ids.shape[0]} rows but xq has {xq.shape[0]} queries")
    if ids.size and ids.max() >= xb.shape[0]:
        raise ValueError(f"ids contains {ids.max()}, but xb has only {xb.shape[0]} vectors")
    valid = ids >= 0
    vecs = xb[np.where(valid, ids, 0)].astype(np.float64)  # nq x k x d
    if metric == "l2":
        d = ((vecs - xq[:, None, :]) ** 2).sum(-1)
    else:
        d = -(vecs * xq[:, None, :]).sum(-1)
    return np.where(valid, d, np.inf)


def per_query_recall(
    found_ids: Any,
    gt_ids: Any,
    k: int,
    *,
    gt_dists: Any = None,
    found_dists: Any = None,
    tol: float = 1e-6,
) -> np.ndarray:
    """Recall@k of every query: the fraction of the k true neighbours found in the first k results.

    With `gt_dists` (the exact sorted distances, nq x >=k) and `found_dists` (the TRUE distances
    of the returned ids, `true_distances`), the tie rule applies: a returned id is a hit when its
    true distance is <= gt_dists[:, k-1] + tol. Without distances: |found[:k] & gt[:k]| / k.
    Ids < 0 and repeated ids never count (twice).

    Hand-worked tie: true distances 0, 1, 2, 2 (ids 0..3), k=3. The flat index listed id 2 as
    the 3rd neighbour; an ANN index returning id 3 instead found an equally close vector.

    >>> gt, gd = np.array([[0, 1, 2]]), np.array([[0.0, 1.0, 2.0]])
    >>> per_query_recall([[0, 1, 3]], gt, 3)  # set rule: id 3 is a miss
    array([0.66666667])
    >>> per_query_recall([[0, 1, 3]], gt, 3, gt_dists=gd, found_dists=[[0.0, 1.0, 2.0]])
    array([1.])
    """
    params.positive_int("k", k)
    found = _as_2d_ids("found_ids", found_ids)
    gt = _as_2d_ids("gt_ids", gt_ids)
    if found.shape[0] != gt.shape[0]:
        raise ValueError(f"found_ids has {found.shape[0]} queries but gt_ids has {gt.shape[0]}")
    if found.shape[1] < k or gt.shape[1] < k:
        raise ValueError(f"k={k} needs at least k columns in found_ids ({found.shape[1]}) "
                         f"and gt_ids ({gt.shape[1]})")
    if (gt_dists is None) != (found_dists is None):
        raise ValueError("pass both gt_dists and found_dists (tie rule) or neither (set rule)")
    if not isinstance(tol, int | float) or tol < 0:
        raise ValueError(f"tol must be a number >= 0, got {tol!r}")
    found = found[:, :k]
    # a repeated id counts once: mask every occurrence after the first in its row
    order = np.argsort(found, axis=1, kind="stable")
    sorted_ids = np.take_along_axis(found, order, axis=1)
    dup_sorted = np.zeros_like(sorted_ids, dtype=bool)
    dup_sorted[:, 1:] = sorted_ids[:, 1:] == sorted_ids[:, :-1]
    dup = np.empty_like(dup_sorted)
    np.put_along_axis(dup, order, dup_sorted, axis=1)
    usable = (found >= 0) & ~dup
    if gt_dists is None:
        gt_k = gt[:, :k]
        hit = (found[:, :, None] == gt_k[:, None, :]).any(-1)
    else:
        gd = np.asarray(gt_dists, dtype=np.float64)
        fd = np.asarray(found_dists, dtype=np.float64)
        if gd.ndim != 2 or gd.shape[0] != gt.shape[0] or gd.shape[1] < k:
            raise ValueError(f"gt_dists must be nq x >=k ({gt.shape[0]} x >={k}), got {gd.shape}")
        if fd.ndim != 2 or fd.shape[0] != gt.shape[0] or fd.shape[1] < k:
            raise ValueError(f"found_dists must be nq x >=k ({gt.shape[0]} x >={k}), got {fd.shape}")
        hit = fd[:, :k] <= gd[:, k - 1:k] + tol
    return (hit & usable).sum(1) / k


def recall_at_k(found_ids: Any, gt_ids: Any, k: int, **kw: Any) -> float:
    """Mean of `per_query_recall` over queries (same arguments).

    >>> recall_at_k([[0, 1], [5, 6]], [[0, 1], [6, 7]], k=2)
    0.75
    """
    return float(per_query_recall(found_ids, gt_ids, k, **kw).mean())


def recall_summary(per_query: Any, worst_fraction: float = 0.01) -> dict[str, float]:
    """Mean recall, the mean over the worst `worst_fraction` of queries, the minimum, and the
    fraction of queries with perfect recall.

    >>> r = recall_summary(np.r_[np.ones(99), 0.5])
    >>> r["mean"], r["worst_1pct"], r["min"], r["frac_perfect"]
    (0.995, 0.5, 0.5, 0.99)
    """
    params.positive_float("worst_fraction", worst_fraction, hi=1.0)
    r = np.sort(np.asarray(per_query, dtype=np.float64).ravel())
    if r.size == 0:
        raise ValueError("per_query must not be empty")
    n_worst = max(1, int(np.ceil(worst_fraction * r.size)))
    label = f"worst_{worst_fraction * 100:g}pct"
    return {"mean": float(r.mean()), label: float(r[:n_worst].mean()), "min": float(r[0]),
            "frac_perfect": float((r >= 1.0).mean())}


def _relevant_sets(relevant: Sequence[Any] | np.ndarray, nq: int) -> list[set[int]]:
    if len(relevant) != nq:
        raise ValueError(f"relevant has {len(relevant)} entries but there are {nq} queries")
    out = []
    for r in relevant:
        if isinstance(r, Iterable) and not isinstance(r, str | bytes):
            out.append({int(x) for x in r})
        else:
            out.append({int(r)})
    return out


def per_query_mrr(ranked_ids: Any, relevant: Sequence[Any], k: int) -> np.ndarray:
    """1 / rank of the first relevant id within the top k (0 when none is there), per query.

    `relevant[i]` is one id or an iterable of ids relevant to query i (binary relevance).

    >>> per_query_mrr([[4, 2, 7], [1, 0, 0], [9, 8, 3]], [2, {1, 5}, [0]], k=3)
    array([0.5, 1. , 0. ])
    """
    params.positive_int("k", k)
    ranked = _as_2d_ids("ranked_ids", ranked_ids)
    rel = _relevant_sets(relevant, ranked.shape[0])
    out = np.zeros(ranked.shape[0])
    for i, (row, r) in enumerate(zip(ranked[:, :k], rel, strict=True)):
        for rank, doc in enumerate(row.tolist(), start=1):
            if doc in r:
                out[i] = 1.0 / rank
                break
    return out


def mrr_at_k(ranked_ids: Any, relevant: Sequence[Any], k: int) -> float:
    """Mean reciprocal rank at k (mean of `per_query_mrr`).

    >>> mrr_at_k([[4, 2, 7], [1, 0, 0]], [2, 1], k=3)
    0.75
    """
    return float(per_query_mrr(ranked_ids, relevant, k).mean())


def per_query_ndcg(ranked_ids: Any, relevant: Sequence[Any], k: int) -> np.ndarray:
    """nDCG@k with binary relevance, per query.

    DCG = sum over ranks i = 1..k of rel_i / log2(i + 1) (a repeated id gains only once);
    IDCG = the DCG of min(|relevant|, k) relevant ids at ranks 1, 2, ...; nDCG = DCG / IDCG
    (0 for a query with no relevant ids).

    Hand-worked: ranking [3, 1, 2], relevant {1, 2}: DCG = 1/log2(3) + 1/log2(4) = 1.1309,
    IDCG = 1 + 1/log2(3) = 1.6309, nDCG = 0.6934.

    >>> per_query_ndcg([[3, 1, 2]], [{1, 2}], k=3).round(4)
    array([0.6934])
    """
    params.positive_int("k", k)
    ranked = _as_2d_ids("ranked_ids", ranked_ids)
    rel = _relevant_sets(relevant, ranked.shape[0])
    discounts = 1.0 / np.log2(np.arange(2, k + 2))
    out = np.zeros(ranked.shape[0])
    for i, (row, r) in enumerate(zip(ranked[:, :k], rel, strict=True)):
        if not r:
            continue
        seen: set[int] = set()
        dcg = 0.0
        for j, doc in enumerate(row.tolist()):
            if doc in r and doc not in seen:
                dcg += discounts[j]
            seen.add(doc)
        out[i] = dcg / discounts[: min(len(r), k)].sum()
    return out


def ndcg_at_k(ranked_ids: Any, relevant: Sequence[Any], k: int) -> float:
    """Mean nDCG@k over queries (binary relevance; see `per_query_ndcg`).

    >>> round(ndcg_at_k([[1, 2], [2, 1]], [1, 1], k=2), 4)
    0.8155
    """
    return float(per_query_ndcg(ranked_ids, relevant, k).mean())


def hit_rate_at_k(ranked_ids: Any, relevant: Sequence[Any], k: int) -> float:
    """The share of queries with at least one relevant id in the top k: for RAG, the share of
    questions whose answer reaches the prompt when k chunks are retrieved ("recall@k" of a
    question-answer set, as opposed to `recall_at_k` against exact nearest neighbours).

    >>> hit_rate_at_k([[4, 2, 7], [1, 0, 0], [9, 8, 3]], [2, {5}, [3]], k=2)
    0.3333333333333333
    """
    return float((per_query_mrr(ranked_ids, relevant, k) > 0).mean())
