import numpy as np
import pytest

from labs_lib.retrieval import synthetic


def test_shapes_dtype_and_determinism():
    xb, xq = synthetic.make_dataset(500, 20, 24, n_clusters=8, intrinsic_dim=6, seed=5)
    assert xb.shape == (500, 24) and xq.shape == (20, 24)
    assert xb.dtype == np.float32 and xq.dtype == np.float32
    xb2, xq2 = synthetic.make_dataset(500, 20, 24, n_clusters=8, intrinsic_dim=6, seed=5)
    assert np.array_equal(xb, xb2) and np.array_equal(xq, xq2)
    xb3, _ = synthetic.make_dataset(500, 20, 24, n_clusters=8, intrinsic_dim=6, seed=6)
    assert not np.array_equal(xb, xb3)


def test_vectors_live_near_a_low_dimensional_subspace():
    xb = synthetic.clustered_vectors(2000, 32, intrinsic_dim=4, noise=0.01, seed=0)
    s = np.linalg.svd(xb - xb.mean(0), compute_uv=False) ** 2
    assert s[:4].sum() / s.sum() > 0.99  # 4 directions carry the variance, noise the rest


@pytest.mark.parametrize("metric", ["l2", "ip"])
def test_ground_truth_equals_brute_force_numpy(metric):
    xb, xq = synthetic.make_dataset(300, 37, 16, n_clusters=4, intrinsic_dim=5, seed=1)
    D, ids = synthetic.ground_truth(xb, xq, k=7, metric=metric, batch=10)  # several batches
    a, b = xq.astype(np.float64), xb.astype(np.float64)
    full = ((a[:, None, :] - b[None]) ** 2).sum(-1) if metric == "l2" else -(a @ b.T)
    want = np.argsort(full, axis=1, kind="stable")[:, :7]
    np.testing.assert_allclose(D, np.take_along_axis(full, want, 1), rtol=1e-4, atol=1e-4)
    # ids agree wherever the distance is not tied (continuous data: everywhere)
    assert (ids == want).mean() > 0.99
    np.testing.assert_allclose(np.take_along_axis(full, ids, 1), np.take_along_axis(full, want, 1),
                               rtol=1e-4, atol=1e-4)


def test_bad_parameters_are_named():
    with pytest.raises(ValueError, match="intrinsic_dim"):
        synthetic.make_dataset(10, 1, 4, intrinsic_dim=5)
    with pytest.raises(ValueError, match="noise"):
        synthetic.make_dataset(10, 1, 4, intrinsic_dim=2, noise=-1)
    xb, xq = synthetic.make_dataset(10, 2, 4, intrinsic_dim=2)
    with pytest.raises(ValueError, match="k must be"):
        synthetic.ground_truth(xb, xq, k=11)
    with pytest.raises(ValueError, match="same dimension"):
        synthetic.ground_truth(xb, xq[:, :3], k=1)
