import numpy as np
import pytest

from labs_lib.retrieval import metrics


def test_recall_tie_rule_counts_equally_close_vectors():
    # true distances of ids 0..4 to the query: 0, 1, 2, 2, 5 (ids 2 and 3 tie at the 3rd place)
    xb = np.array([[0.0], [1.0], [np.sqrt(2)], [-np.sqrt(2)], [np.sqrt(5)]])
    xq = np.array([[0.0]])
    gt, gd = np.array([[0, 1, 2]]), np.array([[0.0, 1.0, 2.0]])
    found = np.array([[0, 3, 1]])  # order does not matter; id 3 ties with id 2
    fd = metrics.true_distances(xq, xb, found)
    np.testing.assert_allclose(fd, [[0.0, 2.0, 1.0]], atol=1e-12)
    assert metrics.recall_at_k(found, gt, 3) == pytest.approx(2 / 3)
    assert metrics.recall_at_k(found, gt, 3, gt_dists=gd, found_dists=fd) == 1.0
    worse = np.array([[0, 3, 4]])  # id 4 (distance 5) is beyond the k-th distance: a miss
    assert metrics.recall_at_k(worse, gt, 3, gt_dists=gd,
                               found_dists=metrics.true_distances(xq, xb, worse)) == pytest.approx(2 / 3)


def test_recall_tolerance_and_missing_and_repeated_ids():
    gt, gd = np.array([[0, 1]]), np.array([[0.0, 1.0]])
    assert metrics.per_query_recall([[0, 7]], gt, 2, gt_dists=gd, found_dists=[[0.0, 1.0005]],
                                    tol=1e-3)[0] == 1.0
    assert metrics.per_query_recall([[0, 7]], gt, 2, gt_dists=gd, found_dists=[[0.0, 1.0005]],
                                    tol=1e-6)[0] == 0.5
    assert metrics.per_query_recall([[0, -1]], gt, 2)[0] == 0.5  # faiss pads with -1
    assert metrics.per_query_recall([[0, 0]], gt, 2)[0] == 0.5  # a repeat counts once
    assert metrics.per_query_recall([[0, 0]], gt, 2, gt_dists=gd, found_dists=[[0.0, 0.0]])[0] == 0.5


def test_recall_uses_first_k_columns_only():
    found = np.array([[9, 0, 1]])
    assert metrics.recall_at_k(found, np.array([[0, 1, 2]]), k=1) == 0.0
    assert metrics.recall_at_k(found, np.array([[0, 1, 2]]), k=3) == pytest.approx(2 / 3)


def test_recall_summary_reports_the_worst_one_percent():
    r = np.ones(200)
    r[:2] = [0.0, 0.4]
    s = metrics.recall_summary(r)
    assert s["worst_1pct"] == pytest.approx(0.2)  # ceil(1 % of 200) = 2 queries
    assert s["min"] == 0.0 and s["frac_perfect"] == pytest.approx(0.99)
    assert s["mean"] == pytest.approx(198.4 / 200)


def test_mrr_hand_worked():
    ranked = np.array([[5, 3, 8], [3, 1, 2], [1, 2, 4], [7, 7, 7]])
    relevant = [8, {1, 2}, [9], 7]
    np.testing.assert_allclose(metrics.per_query_mrr(ranked, relevant, 3), [1 / 3, 1 / 2, 0, 1])
    assert metrics.mrr_at_k(ranked, relevant, 3) == pytest.approx((1 / 3 + 1 / 2 + 0 + 1) / 4)
    assert metrics.mrr_at_k(ranked, relevant, 2) == pytest.approx((0 + 1 / 2 + 0 + 1) / 4)


def test_ndcg_hand_worked():
    l2 = np.log2
    # ranking [3, 1, 2], relevant {1, 2}: DCG = 1/log2 3 + 1/log2 4, IDCG = 1 + 1/log2 3
    assert metrics.ndcg_at_k([[3, 1, 2]], [{1, 2}], 3) == pytest.approx(
        (1 / l2(3) + 1 / l2(4)) / (1 + 1 / l2(3)))
    # at k=2 only rank 2 counts; IDCG uses min(|R|, k) = 2 ideal hits
    assert metrics.ndcg_at_k([[3, 1, 2]], [{1, 2}], 2) == pytest.approx(
        (1 / l2(3)) / (1 + 1 / l2(3)))
    # more relevant ids than k: IDCG is capped at k hits, so a perfect top-k scores 1
    assert metrics.ndcg_at_k([[1, 2]], [{1, 2, 3, 4}], 2) == pytest.approx(1.0)
    # a repeated relevant id gains once; no relevant ids -> 0
    assert metrics.ndcg_at_k([[1, 1]], [{1, 2}], 2) == pytest.approx(1 / (1 + 1 / l2(3)))
    assert metrics.ndcg_at_k([[1, 2]], [set()], 2) == 0.0


def test_bad_inputs_name_the_parameter():
    with pytest.raises(ValueError, match="k must be"):
        metrics.recall_at_k([[0]], [[0]], k=0)
    with pytest.raises(ValueError, match="found_ids"):
        metrics.recall_at_k([[0.5]], [[0]], k=1)
    with pytest.raises(ValueError, match="k=3 needs"):
        metrics.recall_at_k([[0, 1]], [[0, 1]], k=3)
    with pytest.raises(ValueError, match="both gt_dists"):
        metrics.recall_at_k([[0]], [[0]], k=1, gt_dists=[[0.0]])
    with pytest.raises(ValueError, match="relevant has"):
        metrics.mrr_at_k([[0], [1]], [0], k=1)
    with pytest.raises(ValueError, match="metric"):
        metrics.true_distances([[0.0]], [[0.0]], [[0]], metric="cos")
