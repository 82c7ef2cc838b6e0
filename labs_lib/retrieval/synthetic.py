"""Clustered synthetic vectors with exact ground truth: an ANN benchmark that needs no download.

Real embeddings are neither uniform nor isotropic: they crowd into clusters on a low-dimensional
manifold. Uniform random vectors make every ANN index look bad (all distances alike) and
perfectly separated blobs make every index look perfect. `clustered_vectors` sits between:

    x = B @ (c_j + s * z) + noise * e

with B a random orthonormal d x r basis (r = `intrinsic_dim`), c_j one of `n_clusters` centres
drawn N(0, I_r), z ~ N(0, I_r) scaled by `cluster_std` = s, and isotropic noise e ~ N(0, I_d)
scaled by `noise`. Base and query vectors come from the same distribution (same basis and
centres), float32, fully determined by `seed`.

Ground truth is exact: faiss IndexFlatL2 (squared L2) or IndexFlatIP, queries in batches so
that the nq x nb distance matrix never has to fit in memory at once.

>>> xb, xq = make_dataset(1000, 10, 32, seed=0)
>>> xb.shape, xq.shape, xb.dtype
((1000, 32), (10, 32), dtype('float32'))
>>> D, I = ground_truth(xb, xq, k=5)
>>> I.shape, bool((np.diff(D, axis=1) >= 0).all())
((10, 5), True)
"""

from __future__ import annotations

import numpy as np

from .. import params


def _check_dims(d: int, intrinsic_dim: int) -> None:
    params.positive_int("d", d)
    params.int_in_range("intrinsic_dim", intrinsic_dim, 1, d)


def make_dataset(
    n_base: int,
    n_query: int,
    d: int,
    *,
    n_clusters: int = 64,
    intrinsic_dim: int = 16,
    cluster_std: float = 0.3,
    noise: float = 0.05,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Base and query vectors from one clustered distribution (see the module docstring).

    >>> a, _ = make_dataset(5, 1, 8, intrinsic_dim=4, seed=1)
    >>> b, _ = make_dataset(5, 1, 8, intrinsic_dim=4, seed=1)
    >>> bool((a == b).all())
    True
    """
    params.positive_int("n_base", n_base)
    params.positive_int("n_query", n_query)
    _check_dims(d, intrinsic_dim)
    params.positive_int("n_clusters", n_clusters)
    params.positive_float("cluster_std", cluster_std)
    if not isinstance(noise, int | float) or isinstance(noise, bool) or noise < 0:
        raise ValueError(f"noise must be a number >= 0, got {noise!r}")
    rng = np.random.default_rng(seed)
    basis, _ = np.linalg.qr(rng.standard_normal((d, intrinsic_dim)))  # d x r, orthonormal
    centres = rng.standard_normal((n_clusters, intrinsic_dim))

    def draw(n: int) -> np.ndarray:
        z = centres[rng.integers(0, n_clusters, n)] + cluster_std * rng.standard_normal(
            (n, intrinsic_dim))
        return (z @ basis.T + noise * rng.standard_normal((n, d))).astype(np.float32)

    return draw(n_base), draw(n_query)


def clustered_vectors(n: int, d: int, **kw: float | int) -> np.ndarray:
    """`n` base vectors only (`make_dataset` without queries; same keyword arguments).

    >>> clustered_vectors(4, 6, intrinsic_dim=3, seed=0).shape
    (4, 6)
    """
    return make_dataset(n, 1, d, **kw)[0]  # type: ignore[arg-type]


def ground_truth(
    xb: np.ndarray,
    xq: np.ndarray,
    k: int,
    *,
    metric: str = "l2",
    batch: int = 1024,
) -> tuple[np.ndarray, np.ndarray]:
    """Exact k nearest neighbours: (D, I), each nq x k, closest first.

    D is "smaller is closer" for both metrics: squared L2 for "l2", the NEGATED inner product
    for "ip" (what `metrics.true_distances` computes, so the tie rule applies unchanged).
    Queries go through the flat index `batch` at a time (memory: batch x nb floats).
    """
    import faiss

    params.choice("metric", metric, ["l2", "ip"])
    params.positive_int("batch", batch)
    xb = np.ascontiguousarray(xb, dtype=np.float32)
    xq = np.ascontiguousarray(xq, dtype=np.float32)
    if xb.ndim != 2 or xq.ndim != 2 or xb.shape[1] != xq.shape[1]:
        raise ValueError(f"xb and xq must be 2-D with the same dimension, got {xb.shape} and {xq.shape}")
    params.int_in_range("k", k, 1, xb.shape[0])
    index = faiss.IndexFlatL2(xb.shape[1]) if metric == "l2" else faiss.IndexFlatIP(xb.shape[1])
    index.add(xb)
    D = np.empty((xq.shape[0], k), dtype=np.float32)
    I = np.empty((xq.shape[0], k), dtype=np.int64)  # noqa: E741
    for s in range(0, xq.shape[0], batch):
        D[s:s + batch], I[s:s + batch] = index.search(xq[s:s + batch], k)
    return (D if metric == "l2" else -D), I
