"""The RAG pipeline's library parts: exact search, budget arithmetic, reranking, embeddings."""

from __future__ import annotations

from types import SimpleNamespace as NS

import numpy as np
import pytest

from labs_lib import engine
from labs_lib.retrieval import budget, index, metrics, rerank, synthetic


@pytest.fixture(scope="module")
def data():
    xb, xq = synthetic.make_dataset(3000, 40, 16, intrinsic_dim=8, seed=1)
    _, gt = synthetic.ground_truth(xb, xq, 10)
    return xb, xq, gt


def test_exact_searchers_have_recall_one(data):
    xb, xq, gt = data
    for search in (index.flat_searcher(xb, 10), index.torch_exact_searcher(xb, 10, device="cpu")):
        found = search(xq)
        assert found.shape == (40, 10)
        assert index.tie_recall(found, xq, xb, gt, 10).min() == 1.0


def test_torch_exact_searcher_batches_queries(data):
    xb, xq, _ = data
    one = index.torch_exact_searcher(xb, 5, device="cpu", query_batch=7)(xq)
    all_ = index.torch_exact_searcher(xb, 5, device="cpu")(xq)
    assert (one == all_).all()


def test_latency_samples_one_per_query(data):
    xb, xq, _ = data
    s = index.latency_samples(index.flat_searcher(xb, 3), xq, 12)
    assert len(s) == 12 and all(t > 0 for t in s)
    assert len(index.latency_samples(index.flat_searcher(xb, 3), xq[:4], 12)) == 4


def test_sweep_keeps_each_graph_once(data):
    xb, xq, gt = data
    kept: dict = {}
    rows = index.sweep_hnsw(xb, xq, gt, 10, Ms=[8], ef_constructions=[20, 40], ef_searches=[8, 32],
                            latency_queries=0, repeats=1, keep=kept)
    assert sorted(kept) == [(8, 20), (8, 40)] and len(rows) == 4
    assert kept[8, 40].ntotal == len(xb)


def test_exact_rescore_orders_by_true_distance_and_drops_missing():
    xb = np.array([[0, 0], [1, 0], [3, 0], [10, 0]], dtype="float32")
    xq = np.array([[2.9, 0], [0, 0]], dtype="float32")
    out = rerank.exact_rescore(xq, xb, np.array([[3, 0, 1, 2], [3, -1, 1, -1]]), k=3)
    assert out.tolist() == [[2, 1, 0], [1, 3, -1]]


def test_ivf_pq_rerank_uses_exact_rescore(data):
    xb, xq, gt = data
    pq = index.build_ivf(xb, 16, pq_m=4)
    plain = index.tie_recall(index.ivf_searcher(pq.index, 10, 16)(xq), xq, xb, gt, 10).mean()
    fixed = index.tie_recall(index.ivf_searcher(pq.index, 10, 16, rerank_xb=xb)(xq), xq, xb, gt, 10).mean()
    assert fixed > plain  # 4-bit-per-dim codes lose neighbours that exact distances recover


def test_hit_rate_counts_any_relevant_in_top_k():
    ranked = [[5, 1, 2], [7, 8, 9], [3, 3, 3]]
    assert metrics.hit_rate_at_k(ranked, [{1}, {9}, {4}], 1) == 0.0
    assert metrics.hit_rate_at_k(ranked, [{1}, {9}, {4}], 2) == pytest.approx(1 / 3)
    assert metrics.hit_rate_at_k(ranked, [{1}, {9}, {4}], 3) == pytest.approx(2 / 3)


def test_budget_total_is_per_query_sum_not_sum_of_percentiles():
    t = budget.table({"a": [1.0, 2.0, 3.0, 100.0], "b": [100.0, 3.0, 2.0, 1.0]})
    # per-query sums: 101, 5, 5, 101 -> median 53; sum of stage medians would be 2.5 + 2.5 = 5
    assert t.loc["total", "p50_ms"] == pytest.approx(53_000)
    assert t.loc["total", "n"] == 4
    assert t.loc["a", "share_of_p50"] == pytest.approx(2.5 / 53)


def test_budget_rejects_unpaired_stages():
    with pytest.raises(ValueError, match="same, non-zero number"):
        budget.table({"a": [1.0, 2.0], "b": [1.0]})
    with pytest.raises(ValueError, match="must not be empty"):
        budget.table({})


def test_knee_and_dominant():
    assert budget.knee([1, 5, 20], [0.5, 0.9, 0.91]) == 5
    assert budget.knee([1, 5, 20], [0.5, 0.6, 0.9]) == 20  # still rising: no knee before the end
    with pytest.raises(ValueError):
        budget.knee([1, 2], [0.5])
    t = budget.table({"embed": [0.01] * 3, "decode": [0.5] * 3})
    assert budget.dominant(t) == "decode"


def test_fit_line_recovers_slope_and_rejects_one_x():
    x = np.arange(10)
    assert budget.fit_line(x, 3e-4 * x + 0.02) == pytest.approx((3e-4, 0.02))
    with pytest.raises(ValueError):
        budget.fit_line([5, 5], [1, 2])


def test_rag_prompt_numbers_chunks_in_order():
    p = budget.rag_prompt("Q?", ["first", "second"])
    assert p.index("[1] first") < p.index("[2] second") < p.index("Question: Q?")


def test_request_times_prefers_engine_ttft():
    m = NS(queued_ts=1.0, scheduled_ts=1.2, first_token_ts=2.0, last_token_ts=5.0, first_token_latency=1.5)
    assert engine.request_times(NS(metrics=m)) == {"ttft": 1.5, "prefill": pytest.approx(0.8),
                                                   "decode": 3.0, "queue": pytest.approx(0.2)}
    with pytest.raises(RuntimeError, match="stats on"):
        engine.request_times(NS(metrics=None))


@pytest.fixture(scope="module")
def minilm():
    from labs_lib.retrieval import embed

    return embed.load("all-MiniLM-L6-v2", "cpu")


def test_embeddings_are_unit_length_and_dtypes_agree(minilm):
    from labs_lib.retrieval import embed

    texts = ["a list is mutable", "a tuple is immutable", "the with statement"]
    x32 = embed.encode(minilm, texts, batch_size=2)
    x16 = embed.encode(minilm, texts, batch_size=2, dtype="bf16")
    assert x32.shape == (3, 384) and x32.dtype == np.float32
    assert np.allclose(np.linalg.norm(x32, axis=1), 1, atol=1e-5)
    assert (x32 * x16).sum(1).min() > 0.99  # bf16 autocast: same directions
    assert embed.token_lengths(minilm, ["one two", "one two three four"]).tolist()[0] < \
        embed.token_lengths(minilm, ["one two three four"]).tolist()[0]


def test_throughput_and_latency_rows(minilm):
    from labs_lib.retrieval import embed

    rows = embed.throughput(minilm, ["x y z"] * 4, [1, 4], dtypes=("fp32",), repeats=1)
    assert [(r["batch"], r["n"]) for r in rows] == [(1, 1), (4, 1)]
    assert all(r["sentences_per_s"] > 0 for r in rows)
    assert len(embed.query_latency(minilm, ["q1", "q2", "q3"], warmup=1)) == 3
    with pytest.raises(ValueError, match="dtype"):
        embed.encode(minilm, ["x"], dtype="int8")


def test_offline_reranker_is_labelled_untrained_and_costs_per_candidate(minilm):
    rr = rerank.load("", "cpu")
    assert not rr.trained and "RANDOM" in rr.describe()
    cands = [["alpha", "beta", "gamma"], ["delta", "eps", "zeta"]]
    rows = rerank.cost(rr, ["q1", "q2"], cands, [1, 3], warmup=1)
    assert [r["n_candidates"] for r in rows] == [1, 1, 3, 3]
    texts = ["t0", "t1", "t2"]
    order = rerank.rerank(rr, "q", [2, -1, 0, 1], texts)  # -1: faiss's padding, dropped
    assert sorted(order) == [0, 1, 2]
    s = rerank.scores(rr, "q", [texts[i] for i in order])
    assert all(a >= b - 1e-5 for a, b in zip(s, s[1:], strict=False))  # best score first
    with pytest.raises(ValueError, match="at least"):
        rerank.cost(rr, ["q"], [["only one"]], [2])
