"""One batch of the GroupViT objective: image-text InfoNCE plus the multi-label noun InfoNCE.

``L = contrastive_weight * (L_I->T + L_T->I) + noun_weight * L_noun`` (GroupViT: both 1, 3
prompted nouns per caption), on the shared terms of :mod:`ovs.train.contrastive`.
"""

from __future__ import annotations

import torch
from torch import nn

from ovs.methods.groupvit.config import GroupViTLossConfig
from ovs.methods.groupvit.model import GroupViT
from ovs.train.contrastive import contrastive_loss, noun_contrastive_loss


class GroupViTObjective(nn.Module):
    """The model plus its loss (one module, so DDP sees one forward).

    ``forward(images [B,3,H,W] in [0,1], labels (unused: caption batches carry pseudo-mask
    ids), tokens [B,L], class_tokens (unused), noun_tokens [U,L] | None, noun_targets [B,U] |
    None) -> dict`` of scalars: ``loss``, ``contrastive``, ``logit_scale`` and, with nouns and
    ``noun_weight > 0``, ``noun``. The argument order is the caption batch's (``SSegTask``).
    """

    def __init__(self, model: GroupViT, cfg: GroupViTLossConfig) -> None:
        super().__init__()
        self.model = model
        self.cfg = cfg

    def forward(
        self,
        images: torch.Tensor,
        labels: torch.Tensor | None,
        tokens: torch.Tensor,
        class_tokens: torch.Tensor | None = None,
        noun_tokens: torch.Tensor | None = None,
        noun_targets: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        model, cfg = self.model, self.cfg
        image_emb, _, _ = model.encode_image(images)
        text_emb = model.encode_text(tokens)
        scale = model.logit_scale()
        contrastive = contrastive_loss(image_emb, text_emb, scale)
        out = {"contrastive": contrastive.detach(), "logit_scale": scale.detach()}
        loss = cfg.contrastive_weight * contrastive
        if noun_tokens is not None and noun_targets is not None and cfg.noun_weight > 0:
            noun = noun_contrastive_loss(
                image_emb, model.encode_text(noun_tokens), noun_targets, scale
            )
            loss = loss + cfg.noun_weight * noun
            out["noun"] = noun.detach()
        out["loss"] = loss
        return out
