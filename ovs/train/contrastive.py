"""Image-text contrastive losses shared by the contrastive methods (S-Seg; CLIP, PACL, GroupViT).

* ``contrastive_loss`` = L_I->T + L_T->I (S-Seg paper Eq. 2-3, summed as the paper writes) with
  the learnable logit scale 1/sigma; negatives come from every worker.
* ``noun_contrastive_loss``: multi-label image-noun InfoNCE (GroupViT's multi-label
  contrastive loss, with positives defined by noun identity).

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
