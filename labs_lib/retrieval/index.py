"""faiss ANN indexes, measured: build time, QPS, per-query latency, recall, memory per vector.

What a RAG latency budget needs from the retrieval step is a trade-off curve, not one number:
recall@k against queries per second and tail latency, and the bytes each vector costs. This
module measures those for faiss HNSW (graph) and IVF-Flat / IVF-PQ (inverted lists, optionally
with exact re-ranking of the candidates), always on the same terms:

- recall@k uses the tie rule of `metrics` (ids tied with the k-th true neighbour count);
- QPS is one batched `search` call over all queries, with 1 thread and with all threads
  (`faiss.omp_set_num_threads`); the best of `repeats` runs;
- latency is one query per call, single-threaded, summarized by `labs_lib.timing.summarize`;
- memory is `len(faiss.serialize_index(index)) / n`, next to a formula (`hnsw_bytes_per_vector`,
  `ivf_bytes_per_vector`), so a lab can check that it understands where the bytes go.

A sweep builds each (M, efConstruction) once and varies only efSearch, which is a search-time knob.

>>> from labs_lib.retrieval import synthetic
>>> xb, xq = synthetic.make_dataset(1000, 20, 16, intrinsic_dim=8, seed=0)
>>> _, gt = synthetic.ground_truth(xb, xq, 10)
>>> built = build_hnsw(xb, M=8, ef_construction=40)
>>> r = evaluate(hnsw_searcher(built.index, 10, ef_search=64), xq, xb, gt, 10, latency_queries=5)
>>> r["recall"] > 0.9
True
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .. import params, timing
from . import metrics, rerank

Searcher = Callable[[np.ndarray], np.ndarray]  # queries (nq x d) -> ids (nq x k)


@dataclass
class Built:
    """An index with what it cost to build: seconds, and serialized bytes per vector."""

    index: Any
    build_s: float
    bytes_per_vector: float
    params: dict[str, Any] = field(default_factory=dict)


@contextlib.contextmanager
def faiss_threads(n: int | None) -> Iterator[int]:
    """Run the block with faiss using `n` OpenMP threads (None: one per core that other processes
    leave free, `labs_lib.contention.threads`); restore afterwards.

    >>> with faiss_threads(1) as n:
    ...     n
    1
    """
    import faiss

    from ..contention import threads

    before = faiss.omp_get_max_threads()
    # "all threads": those of the cores other processes leave free (labs_lib.contention)
    n = min(before, threads()) if n is None else params.positive_int("threads", n)
    faiss.omp_set_num_threads(n)
    try:
        yield n
    finally:
        faiss.omp_set_num_threads(before)


def _as_f32(name: str, x: Any, d: int | None = None) -> np.ndarray:
    a = np.ascontiguousarray(x, dtype=np.float32)
    if a.ndim != 2 or a.shape[0] == 0 or (d is not None and a.shape[1] != d):
        want = "n x d" if d is None else f"n x {d}"
        raise ValueError(f"{name} must be a non-empty 2-D array ({want}), got shape {a.shape}")
    return a


def serialized_bytes_per_vector(index: Any) -> float:
    """Bytes of `faiss.serialize_index(index)` divided by the number of vectors in it."""
    import faiss

    if index.ntotal == 0:
        raise ValueError("index is empty: add vectors before measuring its memory")
    return len(faiss.serialize_index(index)) / index.ntotal


def hnsw_bytes_per_vector(d: int, M: int) -> float:
    """Expected bytes per vector of a faiss IndexHNSWFlat (float32 storage), as serialized.

        4 d                      the vector itself (float32)
      + 4 * 2M                   level 0: 2M neighbour slots (int32), allocated full
      + 4 * M / (M - 1)          upper levels: level >= l with probability M^-l (faiss's
                                 level multiplier 1/ln M), M slots each: sum_l M * M^-l
      + 4 + 8                    the vector's level (int32) and its neighbour offset (size_t)

    Fixed costs (header, entry point, level probabilities) are ignored: they vanish per vector.

    >>> hnsw_bytes_per_vector(384, 32)  # the MiniLM case: 1536 B of vector + 272 B of graph
    1808.1290322580646
    """
    params.positive_int("d", d)
    params.int_in_range("M", M, 2)
    return 4 * d + 4 * 2 * M + 4 * M / (M - 1) + 12


def ivf_bytes_per_vector(n: int, d: int, nlist: int, *, pq_m: int | None = None,
                         nbits: int = 8) -> float:
    """Expected bytes per vector of a faiss IndexIVFFlat (pq_m=None) or IndexIVFPQ.

        codes                    4 d (flat) or pq_m * nbits / 8 (PQ)
      + 8                        the vector's id (int64) in its inverted list
      + 4 d nlist / n            the coarse centroids, shared
      + 4 d 2^nbits / n          PQ codebooks (pq_m sub-quantizers of d/pq_m dims), shared

    >>> ivf_bytes_per_vector(100_000, 128, 1024)
    525.24288
    >>> round(ivf_bytes_per_vector(100_000, 128, 1024, pq_m=16), 2)  # 16 B codes + 8 B id
    30.55
    """
    params.positive_int("n", n)
    params.positive_int("d", d)
    params.positive_int("nlist", nlist)
    params.int_in_range("nbits", nbits, 1, 16)
    per = 4 * d + 8 if pq_m is None else params.positive_int("pq_m", pq_m) * nbits / 8 + 8
    shared = 4 * d * nlist + (0 if pq_m is None else 4 * d * 2**nbits)
    return per + shared / n


def build_hnsw(xb: Any, M: int = 32, ef_construction: int = 64, *,
               threads: int | None = None) -> Built:
    """Build an IndexHNSWFlat (L2) over `xb`, timing `add` (which builds the graph)."""
    import faiss

    xb = _as_f32("xb", xb)
    params.int_in_range("M", M, 2)
    params.positive_int("ef_construction", ef_construction)
    index = faiss.IndexHNSWFlat(xb.shape[1], M)
    index.hnsw.efConstruction = ef_construction
    with faiss_threads(threads) as n:
        t0 = time.perf_counter()
        index.add(xb)
        build_s = time.perf_counter() - t0
    return Built(index, build_s, serialized_bytes_per_vector(index),
                 dict(kind="hnsw", M=M, ef_construction=ef_construction, build_threads=n))


def build_ivf(xb: Any, nlist: int, *, pq_m: int | None = None, nbits: int = 8,
              train_size: int | None = None, seed: int = 0, threads: int | None = None) -> Built:
    """Build an IndexIVFFlat (pq_m=None) or IndexIVFPQ (L2): train on `train_size` vectors
    drawn with `seed` (all by default), then add all; build_s covers training and adding."""
    import faiss

    xb = _as_f32("xb", xb)
    n, d = xb.shape
    params.int_in_range("nlist", nlist, 1, n)
    if pq_m is not None and d % params.positive_int("pq_m", pq_m):
        raise ValueError(f"pq_m must divide d={d}, got {pq_m}")
    quantizer = faiss.IndexFlatL2(d)
    index = (faiss.IndexIVFFlat(quantizer, d, nlist) if pq_m is None
             else faiss.IndexIVFPQ(quantizer, d, nlist, pq_m, nbits))
    index.own_fields = True
    quantizer.this.disown()  # the index owns (and frees) its quantizer
    train = xb
    if train_size is not None and params.positive_int("train_size", train_size) < n:
        train = xb[np.random.default_rng(seed).choice(n, train_size, replace=False)]
    with faiss_threads(threads) as nt:
        t0 = time.perf_counter()
        index.train(train)
        index.add(xb)
        build_s = time.perf_counter() - t0
    kind = "ivf_flat" if pq_m is None else "ivf_pq"
    return Built(index, build_s, serialized_bytes_per_vector(index),
                 dict(kind=kind, nlist=nlist, pq_m=pq_m, nbits=nbits, build_threads=nt))


def hnsw_searcher(index: Any, k: int, ef_search: int = 16) -> Searcher:
    """A function queries -> top-k ids that searches `index` (HNSW) with `ef_search`."""
    params.positive_int("k", k)
    params.positive_int("ef_search", ef_search)

    def search(xq: np.ndarray) -> np.ndarray:
        index.hnsw.efSearch = ef_search
        return index.search(xq, k)[1]

    return search


def ivf_searcher(index: Any, k: int, nprobe: int = 8, *, rerank_xb: Any = None,
                 k_candidates: int | None = None) -> Searcher:
    """A function queries -> top-k ids that searches `index` (IVF) with `nprobe` lists.

    With `rerank_xb` (the full float vectors), it fetches `k_candidates` (default 4k) ids and
    re-scores them with exact L2 distances: PQ's approximate distances only pick candidates.
    """
    params.positive_int("k", k)
    params.positive_int("nprobe", nprobe)
    kc = k if rerank_xb is None else params.int_in_range(
        "k_candidates", 4 * k if k_candidates is None else k_candidates, k)
    xb = None if rerank_xb is None else np.asarray(rerank_xb, dtype=np.float32)

    def search(xq: np.ndarray) -> np.ndarray:
        index.nprobe = nprobe
        ids = index.search(xq, kc)[1]
        if xb is None:
            return ids
        return rerank.exact_rescore(xq, xb, ids, k)

    return search


def flat_searcher(xb: Any, k: int) -> Searcher:
    """Exact search (faiss IndexFlatL2, brute force on the CPU): the reference every ANN index
    is measured against, and itself a point on the recall/QPS plot (recall 1 by definition)."""
    import faiss

    xb = _as_f32("xb", xb)
    params.positive_int("k", k)
    index = faiss.IndexFlatL2(xb.shape[1])
    index.add(xb)
    return lambda xq: index.search(xq, k)[1]


def torch_exact_searcher(xb: Any, k: int, *, device: str = "cuda", dtype: str = "fp32",
                         query_batch: int = 1024) -> Searcher:
    """Exact search as one matmul + top-k on `device` (what a GPU does without an ANN index).

    Squared L2 = |q|^2 - 2 q.x + |x|^2; |q|^2 is the same for every x of one query, so the ranking
    is by |x|^2 - 2 q.x. The base moves to the device once; queries go in batches of `query_batch`
    (memory: query_batch x n scores). fp16/bf16 halve the bytes read but can swap near-ties.
    """
    import torch

    params.positive_int("k", k)
    params.positive_int("query_batch", query_batch)
    params.choice("dtype", dtype, ["fp32", "fp16", "bf16"])
    tdt = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[dtype]
    base = torch.from_numpy(_as_f32("xb", xb)).to(device)
    sq = (base.float() ** 2).sum(1)
    base = base.to(tdt)

    def search(xq: np.ndarray) -> np.ndarray:
        out = []
        for i in range(0, xq.shape[0], query_batch):
            q = torch.from_numpy(np.ascontiguousarray(xq[i:i + query_batch])).to(device, tdt)
            score = sq[None, :] - 2 * (q @ base.T).float()
            out.append(torch.topk(score, k, dim=1, largest=False).indices.cpu())
        return torch.cat(out).numpy().astype(np.int64)

    return search


def latency_samples(search: Searcher, xq: Any, n: int = 200, *, threads: int = 1) -> list[float]:
    """Seconds per query, one query per call, for the first `n` queries (`threads` faiss threads:
    1 by default, as a server running one request per core would)."""
    params.positive_int("n", n)
    xq = _as_f32("xq", xq)
    samples = []
    with faiss_threads(threads):
        for i in range(min(n, xq.shape[0])):
            q = xq[i:i + 1]
            t0 = time.perf_counter()
            search(q)
            samples.append(time.perf_counter() - t0)
    return samples


def tie_recall(found: np.ndarray, xq: np.ndarray, xb: np.ndarray, gt_ids: np.ndarray, k: int,
               *, rtol: float = 1e-5) -> np.ndarray:
    """Per-query recall@k with the tie rule, distances recomputed exactly (float64) for both the
    returned ids and the ground truth; tol = rtol x the median k-th true distance."""
    gt_d = np.sort(metrics.true_distances(xq, xb, gt_ids[:, :k]), axis=1)
    found_d = metrics.true_distances(xq, xb, found[:, :k])
    tol = rtol * float(np.median(gt_d[:, k - 1]))
    return metrics.per_query_recall(found, gt_ids, k, gt_dists=gt_d, found_dists=found_d, tol=tol)


def evaluate(search: Searcher, xq: Any, xb: Any, gt_ids: Any, k: int, *,
             latency_queries: int = 200, repeats: int = 3, threads: int | None = None) -> dict[str, float]:
    """Recall (mean, worst 1 %), QPS with 1 thread and with `threads` (all), latency p50/p99 (ms).

    QPS: the best of `repeats` batched calls over all queries. Latency: the first
    `latency_queries` queries one at a time, single-threaded (0 to skip).
    """
    params.positive_int("k", k)
    params.non_negative_int("latency_queries", latency_queries)
    params.positive_int("repeats", repeats)
    xb = _as_f32("xb", xb)
    xq = _as_f32("xq", xq, xb.shape[1])
    gt_ids = np.asarray(gt_ids)
    found = search(xq)
    rq = tie_recall(found, xq, xb, gt_ids, k)
    out: dict[str, float] = {}
    for key, value in metrics.recall_summary(rq).items():
        out["recall" if key == "mean" else f"recall_{key}"] = value
    for label, nt in (("qps_1thread", 1), ("qps_all", threads)):
        with faiss_threads(nt) as n:
            best = min(timing.measure(lambda: search(xq), warmup=1, repeats=repeats))
        out[label] = xq.shape[0] / best
        if label == "qps_all":
            out["threads"] = n
    if latency_queries:
        s = timing.summarize(latency_samples(search, xq, latency_queries)).scaled(1e3)
        out.update(latency_p50_ms=s.p50, latency_p99_ms=s.p99, latency_n=s.n)
    return out


def sweep_hnsw(xb: Any, xq: Any, gt_ids: Any, k: int, *, Ms: Sequence[int] = (16, 32),
               ef_constructions: Sequence[int] = (64,), ef_searches: Sequence[int] = (8, 16, 32, 64),
               build_threads: int | None = None, keep: dict | None = None,
               **evaluate_kw: Any) -> list[dict[str, Any]]:
    """One row per (M, efConstruction, efSearch): build params, build_s, bytes per vector
    (measured and formula), and `evaluate`'s numbers. Each graph is built ONCE; efSearch is
    a search-time setting, swept on the same graph. `build_threads=1` makes the graph (and so
    the recall numbers) reproducible; several threads insert in a racy order. `keep`: a dict
    that receives each built index under (M, ef_construction), for later use.
    """
    xb = _as_f32("xb", xb)
    params.positive_ints("Ms", Ms)
    params.positive_ints("ef_constructions", ef_constructions)
    params.positive_ints("ef_searches", ef_searches)
    rows = []
    for M in Ms:
        for efc in ef_constructions:
            built = build_hnsw(xb, M, efc, threads=build_threads)
            if keep is not None:
                keep[M, efc] = built.index
            formula = hnsw_bytes_per_vector(xb.shape[1], M)
            for efs in ef_searches:
                r = evaluate(hnsw_searcher(built.index, k, efs), xq, xb, gt_ids, k, **evaluate_kw)
                rows.append(dict(M=M, ef_construction=efc, ef_search=efs, build_s=built.build_s,
                                 bytes_per_vector=built.bytes_per_vector,
                                 bytes_per_vector_formula=formula, **r))
    return rows


def graph_overhead(d: int, M: int) -> float:
    """The graph's share of an HNSW index's bytes (formula): what M costs in memory.

    >>> round(graph_overhead(384, 32), 3)
    0.151
    """
    total = hnsw_bytes_per_vector(d, M)
    return (total - 4 * d) / total
