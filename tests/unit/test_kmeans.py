"""Batched torch K-means: quality against scikit-learn, a plain-loop reference, determinism."""

import numpy as np
import pytest
import torch
from sklearn.cluster import KMeans
from sklearn.datasets import make_blobs

from ovs.pseudo_masks.kmeans import kmeans, kmeans_plusplus


def _blobs(n_sets: int, std: float, n: int = 600, dim: int = 8, k: int = 6) -> np.ndarray:
    return np.stack(
        [
            make_blobs(n_samples=n, centers=k, n_features=dim, cluster_std=std, random_state=s)[0]
            for s in range(n_sets)
        ]
    ).astype(np.float32)


def test_inertia_matches_sklearn_on_blobs():
    for std, per_set_tol, mean_tol in ((0.5, 1.001, 1.001), (2.5, None, 1.05)):
        x = _blobs(8, std)
        ours = kmeans(torch.from_numpy(x), 6, seeds=range(8), iters=100, tol=1e-6)
        ref = np.array(
            [KMeans(6, n_init=1, random_state=s, tol=1e-6).fit(x[s]).inertia_ for s in range(8)]
        )
        ratio = ours.inertia.numpy() / ref
        # Both are single-init k-means++ runs; on separated blobs both find the optimum.
        if per_set_tol is not None:
            assert ratio.max() <= per_set_tol, ratio
        assert ratio.mean() <= mean_tol, ratio
        # The reported inertia is the real one of the returned labels.
        for b in range(8):
            lab = ours.labels[b].numpy()
            cent = np.stack([x[b][lab == j].mean(0) for j in np.unique(lab)])
            direct = sum(
                ((x[b][lab == j] - cent[i]) ** 2).sum() for i, j in enumerate(np.unique(lab))
            )
            assert ours.inertia[b].item() == pytest.approx(direct, rel=1e-3)


def _lloyd_reference(x: np.ndarray, centers: np.ndarray, iters: int) -> np.ndarray:
    """Plain per-point loops, float64."""
    centers = centers.astype(np.float64).copy()
    for _ in range(iters):
        labels = np.array([np.argmin([((p - c) ** 2).sum() for c in centers]) for p in x])
        for j in range(len(centers)):
            if (labels == j).any():
                centers[j] = x[labels == j].mean(0)
    return np.array([np.argmin([((p - c) ** 2).sum() for c in centers]) for p in x])


def test_lloyd_matches_plain_loop_reference():
    x = _blobs(2, 1.5, n=150, dim=3, k=4)
    xt = torch.from_numpy(x)
    init = kmeans_plusplus(xt, 4, seeds=[0, 1])
    ours = kmeans(xt, 4, seeds=[0, 1], iters=5, tol=0.0)
    for b in range(2):
        ref = _lloyd_reference(x[b].astype(np.float64), init[b].numpy(), iters=5)
        assert (ours.labels[b].numpy() == ref).mean() > 0.99


def test_kmeans_plusplus_picks_data_points_one_per_separated_cluster():
    x = _blobs(3, 0.1, n=300, dim=4, k=5)
    init = kmeans_plusplus(torch.from_numpy(x), 5, seeds=[3, 4, 5]).numpy()
    for b in range(3):
        d = ((x[b][:, None] - init[b][None]) ** 2).sum(-1)
        assert np.allclose(d.min(0), 0.0, atol=1e-5)  # every centre is a data point
        nearest = d.argmin(1)
        assert len(np.unique(nearest)) == 5  # and the 5 clusters each got one


def test_deterministic_and_independent_of_batch():
    x = torch.from_numpy(_blobs(4, 3.0))
    a = kmeans(x, 6, seeds=[10, 11, 12, 13])
    b = kmeans(x, 6, seeds=[10, 11, 12, 13])
    assert torch.equal(a.labels, b.labels) and torch.equal(a.centers, b.centers)
    part = kmeans(x[2:], 6, seeds=[12, 13])  # same images + seeds in another batch
    assert torch.equal(a.labels[2:], part.labels)
    other = kmeans(x, 6, seeds=[0, 1, 2, 3])
    assert not torch.equal(a.centers, other.centers)


def test_cosine_is_spherical_kmeans():
    x = torch.randn(3, 200, 16)
    res = kmeans(x, 5, seeds=[0, 1, 2], metric="cosine")
    assert torch.allclose(res.centers.norm(dim=-1), torch.ones(3, 5), atol=1e-5)
    xn = torch.nn.functional.normalize(x, dim=-1)
    best = torch.einsum("bpc,bkc->bpk", xn, res.centers).argmax(-1)
    assert (best == res.labels).float().mean() > 0.999
    # Scale-invariant per point, unlike euclidean K-means.
    scaled = x * torch.rand(3, 200, 1).add(0.1)
    assert torch.equal(kmeans(scaled, 5, seeds=[0, 1, 2], metric="cosine").labels, res.labels)


def test_fewer_distinct_points_than_k():
    x = torch.zeros(2, 50, 3)
    x[:, 25:] = 1.0  # two distinct points per set, k = 8
    res = kmeans(x, 8, seeds=[0, 1])
    assert torch.isfinite(res.centers).all()
    assert res.inertia.abs().max() < 1e-6
    for b in range(2):  # the two groups are separated
        assert res.labels[b, :25].unique().numel() == 1
        assert res.labels[b, 25:].unique().numel() == 1
        assert res.labels[b, 0] != res.labels[b, 25]


def test_rejects_bad_arguments():
    x = torch.randn(2, 10, 3)
    with pytest.raises(ValueError):
        kmeans(x, 3, seeds=[0])
    with pytest.raises(ValueError):
        kmeans(x, 3, seeds=[0, 1], metric="manhattan")
