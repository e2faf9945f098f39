"""OVSegmentor's cross-image mask consistency (seed 000, "find entity-specific sub-groups,
bipartite matching between the two sub-groups, pairwise dice loss").

For a sample ``a`` and a partner ``b`` sharing entity ``e``:

1. sub-groups: in each image the ``k`` final groups whose embeddings are most similar to the
   entity's text embedding;
2. masks on one image from both: image ``b``'s own sub-group masks are its assignment maps
   (``maps_b[j]``, over its patches); ``a``'s sub-groups are projected onto ``b`` by letting
   them compete with ``b``'s own groups for every patch of ``b`` (softmax over ``S_b + k``
   groups of the scaled cosine between the patch's group embedding and each group), and ``a``'s
   masks are their shares;
3. the ``k`` masks of each side are matched by the Hungarian algorithm on the dice cost and the
   matched pairs' soft dice losses averaged; the same with ``a`` and ``b`` swapped, and the two
   directions averaged.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment


def soft_dice(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """Pairwise soft dice loss with +1 smoothing: ``p [K,N], q [M,N]`` in [0,1] -> ``[K,M]``,
    ``1 - (2 sum p q + 1) / (sum p + sum q + 1)``."""
    num = 2 * p @ q.T
    den = p.sum(dim=1)[:, None] + q.sum(dim=1)[None, :]
    return 1 - (num + 1) / (den + 1)


def entity_subgroups(groups: torch.Tensor, entity: torch.Tensor, k: int) -> torch.Tensor:
    """Indices ``[k]`` of the groups (``[S,E]`` normalised) most similar to ``entity [E]``."""
    return (groups @ entity).topk(min(k, groups.shape[0])).indices


def projected_masks(
    groups_src: torch.Tensor, groups_dst: torch.Tensor, maps_dst: torch.Tensor, scale: torch.Tensor
) -> torch.Tensor:
    """Masks of ``groups_src [k,E]`` on the destination image: ``[k,N]``, the share each source
    group takes of every destination patch when it competes with the destination's own groups
    ``groups_dst [S,E]`` (softmax over ``S + k`` of ``scale * cos``), the patch's embedding being
    its group's (``maps_dst [S,N]`` one-hot or soft)."""
    patch = maps_dst.T @ groups_dst  # [N,E]
    patch = patch / patch.norm(dim=-1, keepdim=True).clamp_min(1e-6)
    logits = scale * patch @ torch.cat([groups_dst, groups_src]).T  # [N, S+k]
    return logits.softmax(dim=-1)[:, groups_dst.shape[0] :].T


def matched_dice(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """Mean soft dice over the Hungarian matching of ``p [K,N]`` to ``q [K,N]`` (dice cost)."""
    cost = soft_dice(p, q)
    rows, cols = linear_sum_assignment(cost.detach().float().cpu().numpy())
    return cost[torch.as_tensor(np.asarray(rows)), torch.as_tensor(np.asarray(cols))].mean()


def pair_consistency(
    groups_a: torch.Tensor,
    maps_a: torch.Tensor,
    groups_b: torch.Tensor,
    maps_b: torch.Tensor,
    entity: torch.Tensor,
    k: int,
    scale: torch.Tensor,
) -> torch.Tensor:
    """The cross-image dice loss of one pair (module docstring): ``groups_* [S,E]`` normalised,
    ``maps_* [S,N]`` assignment maps over each image's patches, ``entity [E]`` -> scalar."""
    ia, ib = entity_subgroups(groups_a, entity, k), entity_subgroups(groups_b, entity, k)
    on_b = matched_dice(projected_masks(groups_a[ia], groups_b, maps_b, scale), maps_b[ib])
    on_a = matched_dice(projected_masks(groups_b[ib], groups_a, maps_a, scale), maps_a[ia])
    return (on_a + on_b) / 2


def cross_image_loss(
    groups: torch.Tensor,
    maps: torch.Tensor,
    partner_groups: torch.Tensor,
    partner_maps: torch.Tensor,
    pair_index: torch.Tensor,
    entity_emb: torch.Tensor,
    k: int,
    scale: torch.Tensor,
) -> torch.Tensor:
    """Mean :func:`pair_consistency` over the P pairs: sample ``pair_index[p]`` of the batch
    (``groups [B,S,E]``, ``maps [B,S,N]``) with partner p (``partner_groups [P,S,E]``,
    ``partner_maps [P,S,N]``) and their shared entity's embedding ``entity_emb [P,E]``."""
    losses = [
        pair_consistency(
            groups[i], maps[i], partner_groups[p], partner_maps[p], entity_emb[p], k, scale
        )
        for p, i in enumerate(pair_index.tolist())
    ]
    return torch.stack(losses).mean()
