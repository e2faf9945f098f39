"""One batch of the OVSegmentor objective.

``L = contrastive_weight * InfoNCE(image, caption) + entity_weight * InfoNCE(image, masked
caption) + cross_weight * L_cross`` (seed 000: 1.0, 1.0, 0.1), each proxy task switchable
(``masked_entity``, ``cross_image``: the ablation); ``noun_weight`` adds GroupViT's multi-label
noun loss (0 in OVSegmentor). ``L_cross``: :func:`ovs.methods.ovsegmentor.losses.cross_image_loss`
over the batch's (sample, partner) pairs.
"""

from __future__ import annotations

import torch
from torch import nn

from ovs.methods.ovsegmentor.config import OVSegmentorLossConfig
from ovs.methods.ovsegmentor.losses import cross_image_loss
from ovs.methods.ovsegmentor.model import OVSegmentor
from ovs.train.contrastive import contrastive_loss, noun_contrastive_loss


class OVSegmentorObjective(nn.Module):
    """``forward(images [B,3,H,W], tokens [B,L], masked_tokens [B,L] | None, partner_images
    [P,3,H,W] | None, pair_index [P] int64 (the batch row of each partner's sample) | None,
    entity_tokens [P,L] (each pair's prompted shared entity) | None, noun_tokens, noun_targets)
    -> dict`` of scalars: ``loss``, ``contrastive``, ``logit_scale``, ``pairs`` (pairs that
    reached the cross-image loss), and ``masked_entity`` / ``cross_image`` / ``noun`` when on."""

    def __init__(self, model: OVSegmentor, cfg: OVSegmentorLossConfig) -> None:
        super().__init__()
        self.model = model
        self.cfg = cfg

    def forward(
        self,
        images: torch.Tensor,
        tokens: torch.Tensor,
        masked_tokens: torch.Tensor | None = None,
        partner_images: torch.Tensor | None = None,
        pair_index: torch.Tensor | None = None,
        entity_tokens: torch.Tensor | None = None,
        noun_tokens: torch.Tensor | None = None,
        noun_targets: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        model, cfg = self.model, self.cfg
        image_emb, groups, maps = model.encode_image(images)
        scale = model.logit_scale()
        contrastive = contrastive_loss(image_emb, model.encode_text(tokens), scale)
        loss = cfg.contrastive_weight * contrastive
        out = {"contrastive": contrastive.detach(), "logit_scale": scale.detach()}
        if cfg.masked_entity and masked_tokens is not None:
            masked = contrastive_loss(image_emb, model.encode_text(masked_tokens), scale)
            loss = loss + cfg.entity_weight * masked
            out["masked_entity"] = masked.detach()
        pairs = 0
        if (
            cfg.cross_image
            and partner_images is not None
            and pair_index is not None
            and entity_tokens is not None
            and len(pair_index) > 0
        ):
            _, p_groups, p_maps = model.encode_image(partner_images)
            cross = cross_image_loss(
                groups,
                maps,
                p_groups,
                p_maps,
                pair_index,
                model.encode_text(entity_tokens),
                cfg.entity_groups,
                scale,
            )
            loss = loss + cfg.cross_weight * cross
            out["cross_image"] = cross.detach()
            pairs = len(pair_index)
        out["pairs"] = torch.tensor(float(pairs), device=images.device)
        if noun_tokens is not None and noun_targets is not None and cfg.noun_weight > 0:
            noun = noun_contrastive_loss(
                image_emb, model.encode_text(noun_tokens), noun_targets, scale
            )
            loss = loss + cfg.noun_weight * noun
            out["noun"] = noun.detach()
        out["loss"] = loss
        return out
