"""Batched K-means in torch: every image of a batch is clustered at once on one device.

``kmeans(x [B, P, C], k)`` runs Lloyd's algorithm on B independent point sets with batched
matmuls. Initialisation is greedy k-means++ (as in scikit-learn: ``2 + log(k)`` candidate
centres per step, keep the one that lowers the potential most), with the random numbers of
image ``b`` drawn from its own ``torch.Generator`` seeded with ``seeds[b]``: an image's result
depends only on its features and its seed, not on the other images of the batch. Iterations
stop per image when the squared centre shift falls under ``tol`` times the mean per-feature
variance of that image (scikit-learn's rule) or after ``iters`` iterations; converged images
are frozen while the rest continue. A cluster that loses all its points keeps its centre.

``metric="euclidean"``: plain K-means. ``metric="cosine"``: spherical K-means (features and
centres L2-normalised, points assigned to the centre of highest cosine similarity), the usual
choice for ViT tokens.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

METRICS = ("euclidean", "cosine")


@dataclass
class KMeansResult:
    labels: torch.Tensor  # [B, P] int64 in [0, k)
    centers: torch.Tensor  # [B, k, C] float32
    inertia: torch.Tensor  # [B] float32: sum of squared distances (cosine: sum of 1 - cos)
    n_iter: int  # Lloyd iterations run (the slowest image of the batch)


def _sq_dists(x: torch.Tensor, x_sq: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """x [B, P, C], x_sq [B, P], c [B, M, C] -> squared distances [B, P, M] (clamped >= 0)."""
    c_sq = c.square().sum(-1)
    d = torch.baddbmm(x_sq.unsqueeze(-1) + c_sq.unsqueeze(1), x, c.transpose(1, 2), alpha=-2.0)
    return d.clamp_min_(0.0)


def _assign(x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """Nearest centre. x [B, P, C], c [B, k, C] -> labels [B, P] (|x|^2 is constant per point)."""
    c_sq = c.square().sum(-1).unsqueeze(1)  # [B, 1, k]
    return torch.baddbmm(c_sq, x, c.transpose(1, 2), alpha=-2.0).argmin(-1)


def _uniforms(seeds: Sequence[int], k: int, trials: int) -> torch.Tensor:
    """[B, k, trials] uniforms in [0, 1); image b's from a generator seeded with seeds[b]."""
    out = torch.empty(len(seeds), k, trials)
    for b, seed in enumerate(seeds):
        gen = torch.Generator().manual_seed(int(seed))
        out[b] = torch.rand(k, trials, generator=gen)
    return out


def kmeans_plusplus(
    x: torch.Tensor,
    k: int,
    seeds: Sequence[int],
    n_local_trials: int | None = None,
    x_sq: torch.Tensor | None = None,
) -> torch.Tensor:
    """Greedy k-means++ seeding. x [B, P, C] float32 -> initial centres [B, k, C].

    ``x_sq``: the squared norms ``|x|^2`` [B, P] when the caller has them already.
    """
    b, p, _ = x.shape
    trials = n_local_trials or 2 + int(math.log(k))
    u = _uniforms(seeds, k, trials).to(x.device)
    if x_sq is None:
        x_sq = x.square().sum(-1)
    batch = torch.arange(b, device=x.device)

    first = (u[:, 0, 0] * p).long().clamp_(max=p - 1)
    centers = [x[batch, first]]  # list of [B, C]
    closest = _sq_dists(x, x_sq, centers[0].unsqueeze(1)).squeeze(-1)  # [B, P]
    for j in range(1, k):
        # Sample `trials` candidates with probability proportional to D^2 (inverse CDF).
        cum = closest.double().cumsum(1)
        targets = u[:, j, :].double() * cum[:, -1:]
        cand = torch.searchsorted(cum, targets).clamp_(max=p - 1)  # [B, T]
        cand_x = torch.gather(x, 1, cand.unsqueeze(-1).expand(-1, -1, x.shape[-1]))
        d_cand = _sq_dists(x, x_sq, cand_x)  # [B, P, T]
        new_closest = torch.minimum(closest.unsqueeze(-1), d_cand)
        best = new_closest.sum(1).argmin(-1)  # [B]: candidate giving the lowest potential
        closest = new_closest[batch, :, best]
        centers.append(cand_x[batch, best])
    return torch.stack(centers, dim=1)


def kmeans(
    x: torch.Tensor,
    k: int,
    *,
    seeds: Sequence[int],
    iters: int = 30,
    tol: float = 1e-4,
    metric: str = "euclidean",
) -> KMeansResult:
    """Cluster each of B point sets into k clusters.

    Args:
        x: [B, P, C] features (any float dtype; computed in float32).
        k: number of clusters (clusters may end up empty when an image has < k distinct points).
        seeds: B integer seeds, one per point set.
        iters: maximum Lloyd iterations.
        tol: relative tolerance on the squared centre shift (see the module docstring).
        metric: "euclidean" or "cosine".
    Returns:
        ``KMeansResult`` with labels [B, P].
    """
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")
    if x.ndim != 3:
        raise ValueError(f"x must be [B, P, C], got shape {tuple(x.shape)}")
    if len(seeds) != x.shape[0]:
        raise ValueError(f"need one seed per point set: {len(seeds)} seeds for B={x.shape[0]}")
    x = x.float()
    if metric == "cosine":
        x = torch.nn.functional.normalize(x, dim=-1)
    b, p, _ = x.shape
    x_sq = x.square().sum(-1)  # [B, P]
    # scikit-learn's tolerance: relative to the mean per-feature variance of the data.
    mean = x.mean(1)  # [B, C]
    tol_b = tol * (x_sq.mean(1) - mean.square().sum(-1)).clamp_min(0.0) / x.shape[-1]

    centers = kmeans_plusplus(x, k, seeds, x_sq=x_sq)
    active = torch.ones(b, dtype=torch.bool, device=x.device)
    n_iter = 0
    for n_iter in range(1, iters + 1):  # noqa: B007 (n_iter is reported)
        labels = _assign(x, centers)  # [B, P]
        onehot = torch.zeros(b, p, k, device=x.device).scatter_(2, labels.unsqueeze(-1), 1.0)
        counts = onehot.sum(1)  # [B, k]
        sums = torch.bmm(onehot.transpose(1, 2), x)  # [B, k, C]
        new = sums / counts.clamp_min(1.0).unsqueeze(-1)
        if metric == "cosine":
            new = torch.nn.functional.normalize(new, dim=-1)
        new = torch.where(counts.unsqueeze(-1) > 0, new, centers)
        shift = (new - centers).square().sum((1, 2))  # [B]
        centers = torch.where(active.view(b, 1, 1), new, centers)
        active = active & (shift > tol_b)
        if not bool(active.any()):
            break
    min_d, labels = _sq_dists(x, x_sq, centers).min(-1)
    inertia = min_d.sum(-1) / 2 if metric == "cosine" else min_d.sum(-1)  # |a-b|^2 = 2 - 2cos
    return KMeansResult(labels=labels, centers=centers, inertia=inertia, n_iter=n_iter)
