"""Bipartite matching of N predicted masks to K pseudo-masks per image (MaskFormer/DETR).

Cost of pairing prediction q with pseudo-mask k = ``dice_weight * dice(q, k) +
focal_weight * focal(q, k)`` (no class cost: S-Seg has no classes). Costs for the whole batch
are computed at once in torch; the assignment is scipy's Hungarian solver per image. Pseudo-masks
that are empty (the cluster vanished after cropping / resizing, or padding when images have
different K) are marked invalid and never matched.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment


def label_maps_to_masks(
    labels: torch.Tensor,
    size: tuple[int, int] | None = None,
    num_masks: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One binary mask per label id.

    ``labels [B,H,W]`` integer ids (0..K-1; any value >= K, e.g. 255, belongs to no mask) ->
    ``masks [B,K,h,w]`` float {0,1} and ``valid [B,K]`` bool (mask non-empty). ``size`` resizes
    the label maps first (pixel-centre nearest, ``nearest-exact``), e.g. to the prediction resolution. ``num_masks`` defaults to
    ``max id + 1`` over the batch (ignoring 255).
    """
    if size is not None and tuple(labels.shape[-2:]) != tuple(size):
        labels = F.interpolate(labels[:, None].float(), size=size, mode="nearest-exact")[:, 0]
    labels = labels.long()
    if num_masks is None:
        ids = labels[labels != 255]
        num_masks = int(ids.max()) + 1 if ids.numel() else 0
    ids = torch.arange(num_masks, device=labels.device)
    masks = labels[:, None] == ids[None, :, None, None]
    return masks.float(), masks.flatten(2).any(dim=-1)


def batch_dice_cost(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Dice loss of every prediction against every target.

    ``logits [B,N,P]``, ``targets [B,K,P]`` in {0,1} -> ``[B,N,K]``.
    """
    p = logits.sigmoid()
    num = 2 * torch.einsum("bnp,bkp->bnk", p, targets)
    den = p.sum(-1)[:, :, None] + targets.sum(-1)[:, None, :]
    return 1 - (num + 1) / (den + 1)


def batch_focal_cost(
    logits: torch.Tensor, targets: torch.Tensor, alpha: float = 0.25, gamma: float = 2.0
) -> torch.Tensor:
    """Sigmoid focal loss (mean over pixels) of every prediction against every target.

    ``logits [B,N,P]``, ``targets [B,K,P]`` in {0,1} -> ``[B,N,K]``. ``alpha < 0`` disables the
    class balancing factor.
    """
    p = logits.sigmoid()
    pos = (1 - p) ** gamma * F.binary_cross_entropy_with_logits(
        logits, torch.ones_like(logits), reduction="none"
    )
    neg = p**gamma * F.binary_cross_entropy_with_logits(
        logits, torch.zeros_like(logits), reduction="none"
    )
    if alpha >= 0:
        pos, neg = pos * alpha, neg * (1 - alpha)
    cost = torch.einsum("bnp,bkp->bnk", pos, targets) + torch.einsum(
        "bnp,bkp->bnk", neg, 1 - targets
    )
    return cost / logits.shape[-1]


@torch.no_grad()
def match_cost(
    logits: torch.Tensor,
    targets: torch.Tensor,
    dice_weight: float = 1.0,
    focal_weight: float = 20.0,
    alpha: float = 0.25,
    gamma: float = 2.0,
) -> torch.Tensor:
    """``logits [B,N,h,w]``, ``targets [B,K,h,w]`` -> cost ``[B,N,K]`` (float32)."""
    lg = logits.flatten(2).float()
    tg = targets.flatten(2).float()
    return dice_weight * batch_dice_cost(lg, tg) + focal_weight * batch_focal_cost(
        lg, tg, alpha, gamma
    )


@torch.no_grad()
def hungarian_match(
    logits: torch.Tensor,
    targets: torch.Tensor,
    valid: torch.Tensor | None = None,
    dice_weight: float = 1.0,
    focal_weight: float = 20.0,
    alpha: float = 0.25,
    gamma: float = 2.0,
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Minimum-cost assignment per image.

    ``logits [B,N,h,w]`` mask logits; ``targets [B,K,h,w]`` {0,1}; ``valid [B,K]`` bool (default:
    target non-empty). Returns for each image ``(pred_idx, target_idx)``, int64 CPU tensors of
    length ``min(N, #valid)``, sorted by ``pred_idx``.
    """
    if valid is None:
        valid = targets.flatten(2).any(dim=-1)
    cost = match_cost(logits, targets, dice_weight, focal_weight, alpha, gamma).cpu()
    valid = valid.cpu()
    out = []
    for b in range(cost.shape[0]):
        cols = valid[b].nonzero().flatten()
        if cols.numel() == 0:
            empty = torch.zeros(0, dtype=torch.int64)
            out.append((empty, empty.clone()))
            continue
        c = cost[b][:, cols].numpy()
        rows, sel = linear_sum_assignment(np.nan_to_num(c, nan=1e9, posinf=1e9))
        out.append((torch.as_tensor(rows, dtype=torch.int64), cols[torch.as_tensor(sel)]))
    return out
