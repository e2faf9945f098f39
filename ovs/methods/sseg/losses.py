"""S-Seg's mask losses: dice + focal on Hungarian-matched pairs, and the matched-mask class CE.

* ``mask_loss`` = ``dice_weight * dice + focal_weight * focal`` (paper: 1 and 20) over matched
  (prediction, pseudo-mask) pairs only; unmatched predictions are not penalised; each term is
  summed over pairs and divided by the number of matched masks.
* ``class_loss``: cross-entropy of matched mask features against class-name embeddings, for
  the supervised upper bound (``train.supervision: gt``) only.

The image-text InfoNCE terms are shared by every contrastive method: :mod:`ovs.train.contrastive`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def sigmoid_focal_loss(
    logits: torch.Tensor, targets: torch.Tensor, alpha: float = 0.25, gamma: float = 2.0
) -> torch.Tensor:
    """Per-mask focal loss, mean over pixels. ``logits, targets [M,P]`` -> ``[M]``.

    ``alpha < 0`` disables the class balancing factor (Lin et al. 2017; MaskFormer's form).
    """
    p = logits.sigmoid()
    ce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    p_t = p * targets + (1 - p) * (1 - targets)
    loss = ce * (1 - p_t) ** gamma
    if alpha >= 0:
        loss = (alpha * targets + (1 - alpha) * (1 - targets)) * loss
    return loss.mean(dim=1)


def dice_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Per-mask soft dice loss with +1 smoothing. ``logits, targets [M,P]`` -> ``[M]``."""
    p = logits.sigmoid()
    num = 2 * (p * targets).sum(dim=1)
    den = p.sum(dim=1) + targets.sum(dim=1)
    return 1 - (num + 1) / (den + 1)


def mask_loss(
    logits: torch.Tensor,
    targets: torch.Tensor,
    indices: list[tuple[torch.Tensor, torch.Tensor]],
    dice_weight: float = 1.0,
    focal_weight: float = 20.0,
    alpha: float = 0.25,
    gamma: float = 2.0,
    num_masks: float | torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """Mask loss over matched pairs.

    ``logits [B,N,h,w]``, ``targets [B,K,h,w]`` {0,1} at the same resolution, ``indices`` from
    :func:`ovs.methods.sseg.matching.hungarian_match`. ``num_masks`` (default: the number of matched pairs
    here, at least 1) is the normaliser, a float or a scalar tensor; pass the all-reduced average
    in multi-worker training to make the normaliser global, as MaskFormer does.

    Returns ``{"loss", "dice", "focal"}`` scalars (``loss`` = weighted sum).
    """
    dev = logits.device
    b_idx = torch.cat([torch.full_like(p, b) for b, (p, _) in enumerate(indices)]).to(dev)
    p_idx = torch.cat([p for p, _ in indices]).to(dev)
    t_idx = torch.cat([t for _, t in indices]).to(dev)
    if num_masks is None:
        num_masks = max(float(p_idx.numel()), 1.0)
    pred = logits[b_idx, p_idx].flatten(1).float()
    tgt = targets[b_idx, t_idx].flatten(1).to(pred.dtype)
    dice = dice_loss(pred, tgt).sum() / num_masks
    focal = sigmoid_focal_loss(pred, tgt, alpha, gamma).sum() / num_masks
    return {
        "loss": dice_weight * dice + focal_weight * focal,
        "dice": dice,
        "focal": focal,
    }


def class_loss(
    mask_feats: torch.Tensor,
    class_emb: torch.Tensor,
    indices: list[tuple[torch.Tensor, torch.Tensor]],
    logit_scale: torch.Tensor,
) -> torch.Tensor:
    """Cross-entropy of matched mask features against class-name embeddings (supervised upper
    bound only; S-Seg itself has no classes).

    ``mask_feats [B,N,E]`` and ``class_emb [C,E]`` L2-normalised; ``indices`` per image
    ``(pred_idx, target_idx)`` where the target index is the class id; ``logit_scale`` scalar.
    Returns the mean CE over all matched pairs (0 when nothing is matched).
    """
    rows = [mask_feats[b, p.to(mask_feats.device)] for b, (p, _) in enumerate(indices)]
    targets = [t.to(mask_feats.device) for _, t in indices]
    if not rows or sum(len(t) for t in targets) == 0:
        return mask_feats.sum() * 0.0
    feats = torch.cat(rows).float()
    logits = logit_scale * feats @ class_emb.float().T
    return F.cross_entropy(logits, torch.cat(targets))
