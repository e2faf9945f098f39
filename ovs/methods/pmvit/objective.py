"""The pseudo-mask ViT's objective for one batch: symmetric InfoNCE between image embeddings
(pooled from pseudo-mask segment features) and caption embeddings, negatives from all workers
(:func:`ovs.train.contrastive.contrastive_loss`)."""

from __future__ import annotations

import torch
from torch import nn

from ovs.methods.pmvit.model import PMViT
from ovs.train.contrastive import contrastive_loss


class PMViTObjective(nn.Module):
    """The model plus its loss, one module for DDP.

    ``forward(images [B,3,H,W] in [0,1], labels [B,H',W'] pseudo-mask ids, tokens [B,L])`` ->
    ``{"loss", "contrastive", "logit_scale", "segments"}`` (``segments``: mean present
    segments per image). The trailing arguments of the caption batch (class tokens, noun
    tokens and targets: S-Seg's supervised and noun losses) must be ``None``.
    """

    def __init__(self, model: PMViT) -> None:
        super().__init__()
        self.model = model

    def forward(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        tokens: torch.Tensor,
        class_tokens: torch.Tensor | None = None,
        noun_tokens: torch.Tensor | None = None,
        noun_targets: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        if class_tokens is not None or noun_tokens is not None or noun_targets is not None:
            raise ValueError("pmvit trains on captions only (no class or noun losses)")
        model = self.model
        feats, present = model(images, labels)
        image_emb = model.image_embedding(feats, present)
        text_emb = model.encode_text(tokens)
        scale = model.logit_scale()
        loss = contrastive_loss(image_emb, text_emb, scale)
        return {
            "loss": loss,
            "contrastive": loss.detach(),
            "logit_scale": scale.detach(),
            "segments": present.float().sum(dim=1).mean().detach(),
        }
