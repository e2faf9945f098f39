"""S-Seg losses: mask loss on Hungarian-matched pairs and symmetric image-text InfoNCE.

* ``mask_loss`` = ``dice_weight * dice + focal_weight * focal`` (paper: 1 and 20) over matched
  (prediction, pseudo-mask) pairs only; unmatched predictions are not penalised; each term is
  summed over pairs and divided by the number of matched masks.
* ``contrastive_loss`` = L_I->T + L_T->I (paper Eq. 2-3, summed as the paper writes) with the
  learnable logit scale 1/sigma; negatives come from every worker.
* ``noun_contrastive_loss``: optional multi-label image-noun InfoNCE (GroupViT's multi-label
  contrastive loss, with positives defined by noun identity); off in the paper config.

Distributed gradients: features are all-gathered with :func:`gather_with_grad`, whose backward
all-reduces (sums) the gradient, so every worker's features receive the gradient of every
worker's local loss. Each worker computes the loss of its own rows (local images against all
texts, local texts against all images); the mean of the workers' losses is the loss of the
global batch, and DDP's gradient averaging then yields exactly the single-process gradient.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
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
    :func:`ovs.matching.hungarian_match`. ``num_masks`` (default: the number of matched pairs
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


class _AllGatherGrad(torch.autograd.Function):
    """All-gather along dim 0 whose backward sums the incoming gradients over workers and
    returns this worker's slice."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        ctx.rank, ctx.n = dist.get_rank(), x.shape[0]
        out = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(out, x.contiguous())
        return torch.cat(out)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous()
        dist.all_reduce(grad)
        return grad[ctx.rank * ctx.n : (ctx.rank + 1) * ctx.n]


def is_distributed() -> bool:
    """True inside a ``torch.distributed`` group of more than one worker."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """``[B,...]`` on each of W workers -> ``[W*B,...]`` (rank order); identity when not
    distributed. Every worker must pass the same B."""
    return _AllGatherGrad.apply(x) if is_distributed() else x


def contrastive_loss(
    image_emb: torch.Tensor,
    text_emb: torch.Tensor,
    logit_scale: torch.Tensor,
    gathered: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> torch.Tensor:
    """Symmetric InfoNCE, L_I->T + L_T->I, negatives from all workers.

    ``image_emb, text_emb [B,E]`` L2-normalised, row i of each is a pair; ``logit_scale``
    scalar tensor (1/sigma). Every worker must pass the same B (drop the last partial batch).
    Returns this worker's scalar loss (mean over its B rows in both
    directions); the mean over workers equals the loss of the concatenated global batch.

    Both embeddings travel in one all-gather (and their gradients in one all-reduce), side by
    side; ``gathered = (all_img [W*B,E], all_txt [W*B,E])`` skips it when the caller already
    gathered them with :func:`gather_with_grad` (e.g. together with other per-worker values).
    """
    if gathered is not None:
        all_img, all_txt = gathered
    elif is_distributed():
        e = image_emb.shape[1]
        all_img, all_txt = gather_with_grad(torch.cat([image_emb, text_emb], dim=1)).split(e, 1)
    else:
        all_img, all_txt = image_emb, text_emb
    rank = dist.get_rank() if is_distributed() else 0
    b = image_emb.shape[0]
    labels = torch.arange(b, device=image_emb.device) + rank * b
    logits_i2t = logit_scale * image_emb.float() @ all_txt.float().T  # [B, W*B]
    logits_t2i = logit_scale * text_emb.float() @ all_img.float().T
    return F.cross_entropy(logits_i2t, labels) + F.cross_entropy(logits_t2i, labels)


def _soft_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean over rows with at least one positive of ``-sum_j q_ij log softmax(logits_i)_j``,
    ``q_i`` uniform over row i's positives; 0 when no row has a positive."""
    pos = targets.float()
    count = pos.sum(dim=1)
    rows = count > 0
    if not bool(rows.any()):
        return logits.sum() * 0.0
    q = pos[rows] / count[rows, None]
    return -(q * logits[rows].log_softmax(dim=1)).sum(dim=1).mean()


def noun_contrastive_loss(
    image_emb: torch.Tensor,
    noun_emb: torch.Tensor,
    targets: torch.Tensor,
    logit_scale: torch.Tensor,
) -> torch.Tensor:
    """Multi-label image-noun InfoNCE: L_I->N + L_N->I on this worker's batch.

    ``image_emb [B,E]`` and ``noun_emb [U,E]`` L2-normalised (U distinct prompted nouns of the
    batch); ``targets [B,U]`` bool, True where noun u occurs in image i's caption. Image -> noun:
    soft cross-entropy over the U nouns, target uniform over the image's nouns; noun -> image:
    over the B images, target uniform over the images whose caption has the noun. Two images
    naming the same noun are both positives for it (no false negatives from duplicates).
    """
    logits = logit_scale * image_emb.float() @ noun_emb.float().T  # [B, U]
    t = targets.to(logits.device)
    return _soft_cross_entropy(logits, t) + _soft_cross_entropy(logits.T, t.T)


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
