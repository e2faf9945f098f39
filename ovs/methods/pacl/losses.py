"""PACL's patch-aligned compatibility and its symmetric InfoNCE (seed 001).

For image ``b`` with L2-normalised embedded patches ``v[b,p]`` and caption ``t`` (normalised):

    a[b,t,p] = softmax_p(<v[b,p], t>)            patch weights (cosine, softmax over patches)
    z[b,t]   = sum_p a[b,t,p] v[b,p]             the caption-specific pooled image embedding
    phi[b,t] = <z[b,t] / |z[b,t]|, t>            the compatibility

and the loss is InfoNCE over ``scale * phi`` in both directions (L_I->T + L_T->I, as
:func:`ovs.train.contrastive.contrastive_loss` sums them). Negatives come from every worker:
local images are pooled against every worker's captions and every worker's images against
the local captions, so the pooled embedding of each (image, caption) pair exists where its
loss term is computed. Patches and captions travel in one all-gather.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F

from ovs.train.contrastive import gather_with_grad, is_distributed


def compatibility(patches: torch.Tensor, texts: torch.Tensor) -> torch.Tensor:
    """``patches [B,P,E]``, ``texts [T,E]`` (both L2-normalised) -> ``phi [B,T]`` (float32)."""
    v, t = patches.float(), texts.float()
    weights = torch.einsum("bpe,te->btp", v, t).softmax(dim=-1)  # [B,T,P]
    pooled = F.normalize(torch.einsum("btp,bpe->bte", weights, v), dim=-1)
    return torch.einsum("bte,te->bt", pooled, t)


def pacl_loss(
    patches: torch.Tensor, texts: torch.Tensor, logit_scale: torch.Tensor
) -> torch.Tensor:
    """Symmetric InfoNCE over :func:`compatibility`; row i of ``patches [B,P,E]`` pairs with
    row i of ``texts [B,E]``. Every worker passes the same B; returns this worker's scalar (the
    mean over workers is the global batch's loss, as for ``contrastive_loss``)."""
    b, p, e = patches.shape
    if is_distributed():  # both in one all-gather (and one all-reduce backward)
        packed = gather_with_grad(torch.cat([patches.flatten(1), texts], dim=1))
        all_patches, all_texts = packed[:, : p * e].view(-1, p, e), packed[:, p * e :]
    else:
        all_patches, all_texts = patches, texts
    rank = dist.get_rank() if is_distributed() else 0
    labels = torch.arange(b, device=patches.device) + rank * b
    i2t = logit_scale * compatibility(patches, all_texts)  # [B, W*B]
    t2i = logit_scale * compatibility(all_patches, texts).T  # [B, W*B]
    return F.cross_entropy(i2t, labels) + F.cross_entropy(t2i, labels)
