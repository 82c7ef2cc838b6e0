import numpy as np
import pytest

from labs_lib.retrieval import index, synthetic

K = 10


@pytest.fixture(scope="module")
def data():
    xb, xq = synthetic.make_dataset(2000, 100, 32, n_clusters=16, intrinsic_dim=8, seed=0)
    _, gt = synthetic.ground_truth(xb, xq, K)
    return xb, xq, gt


def test_exact_index_recall_is_one(data):
    import faiss

    xb, xq, gt = data
    flat = faiss.IndexFlatL2(xb.shape[1])
    flat.add(xb)
    ids = flat.search(xq, K)[1]
    assert index.tie_recall(ids, xq, xb, gt, K).min() == 1.0


def test_recall_does_not_fall_as_ef_search_grows(data):
    xb, xq, gt = data
    rows = index.sweep_hnsw(xb, xq, gt, K, Ms=[4], ef_constructions=[16],
                            ef_searches=[1, 4, 16, 64, 256], build_threads=1,
                            latency_queries=20, repeats=1)
    assert len(rows) == 5 and len({r["build_s"] for r in rows}) == 1  # built once
    recalls = [r["recall"] for r in rows]
    assert all(b >= a - 1e-9 for a, b in zip(recalls, recalls[1:], strict=False)), recalls
    assert recalls[0] < 0.95 and recalls[-1] > 0.99
    r = rows[-1]
    assert r["qps_1thread"] > 0 and r["qps_all"] > 0 and r["latency_n"] == 20
    assert 0 < r["latency_p50_ms"] <= r["latency_p99_ms"]
    assert r["recall_worst_1pct"] <= r["recall"] and r["threads"] >= 1


@pytest.mark.parametrize("M", [4, 16, 32])
def test_hnsw_memory_formula_within_15_percent(data, M):
    xb = data[0]
    built = index.build_hnsw(xb, M=M, ef_construction=32)
    formula = index.hnsw_bytes_per_vector(xb.shape[1], M)
    assert built.bytes_per_vector == pytest.approx(formula, rel=0.15)
    assert built.build_s > 0 and built.params["M"] == M


@pytest.mark.parametrize("pq_m", [None, 8])
def test_ivf_memory_formula_within_15_percent(data, pq_m):
    xb = data[0]
    built = index.build_ivf(xb, nlist=16, pq_m=pq_m, nbits=6)
    formula = index.ivf_bytes_per_vector(len(xb), xb.shape[1], 16, pq_m=pq_m, nbits=6)
    assert built.bytes_per_vector == pytest.approx(formula, rel=0.15)


def test_ivf_pq_rerank_recovers_recall(data):
    xb, xq, gt = data
    built = index.build_ivf(xb, nlist=16, pq_m=4, nbits=6)
    plain = index.tie_recall(index.ivf_searcher(built.index, K, nprobe=16)(xq), xq, xb, gt, K)
    reranked = index.tie_recall(
        index.ivf_searcher(built.index, K, nprobe=16, rerank_xb=xb, k_candidates=100)(xq),
        xq, xb, gt, K)
    assert reranked.mean() > plain.mean() and reranked.mean() > 0.95
    flat = index.build_ivf(xb, nlist=16)
    all_lists = index.ivf_searcher(flat.index, K, nprobe=16)(xq)  # every list: exact
    assert index.tie_recall(all_lists, xq, xb, gt, K).min() == 1.0


def test_threads_are_restored():
    import faiss

    before = faiss.omp_get_max_threads()
    with index.faiss_threads(1):
        assert faiss.omp_get_max_threads() == 1
    assert faiss.omp_get_max_threads() == before


def test_bad_parameters_are_named(data):
    xb = data[0]
    with pytest.raises(ValueError, match="M must be"):
        index.build_hnsw(xb, M=1)
    with pytest.raises(ValueError, match="pq_m must divide"):
        index.build_ivf(xb, nlist=4, pq_m=5)
    with pytest.raises(ValueError, match="xb must be"):
        index.build_hnsw(np.zeros((0, 4)))
    with pytest.raises(ValueError, match="k_candidates"):
        index.ivf_searcher(object(), 10, rerank_xb=xb, k_candidates=5)
