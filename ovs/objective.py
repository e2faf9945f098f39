"""The S-Seg training objective for one batch: forward, match, mask loss, InfoNCE.

``L = mask_weight * L_mask + contrastive_weight * L_contrastive`` (paper Eq. 4, both 1.0;
L_mask = 1.0 dice + 20.0 focal). The mask loss is computed at the prediction resolution
(stride 4): pseudo-label maps are resized to it with nearest interpolation. Pseudo-masks come
from an 8-px-patch ViT, so they are coarser than stride 4 and nothing is lost, while the
N x H x W loss tensors stay 16x smaller than at full resolution.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from ovs.losses import class_loss, contrastive_loss, mask_loss, noun_contrastive_loss
from ovs.matching import hungarian_match, label_maps_to_masks
from ovs.models.sseg import SSeg


@dataclass
class SSegLossConfig:
    """Loss weights (paper Sec. 3.3: all 1.0 except focal 20.0; MaskFormer focal alpha/gamma).
    Matching uses the same dice/focal weights as the loss, as MaskFormer does."""

    mask_weight: float = 1.0
    contrastive_weight: float = 1.0
    dice_weight: float = 1.0
    focal_weight: float = 20.0
    focal_alpha: float = 0.25
    focal_gamma: float = 2.0
    num_pseudo_masks: int = 8  # K; label ids >= K are ignored (paper: 8)
    # Supervised upper bound only (``train.supervision: gt``): label ids are class ids and each
    # matched mask feature is classified against the class-name text embeddings (CE). S-Seg: 0.
    class_weight: float = 0.0
    # Multi-label image-noun InfoNCE (GroupViT's multi-label contrastive loss; not in the S-Seg
    # paper, 0 there): up to ``nouns_per_image`` caption nouns per image, each prompted with
    # ``noun_template`` (the evaluation's prompt), contrasted with the image embeddings.
    noun_weight: float = 0.0
    nouns_per_image: int = 3
    noun_template: str = "a photo of a {}."


def _global_num_masks(n: int, device: torch.device) -> float:
    """Average number of matched masks per worker (MaskFormer's normaliser), at least 1."""
    t = torch.tensor(float(n), device=device)
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(t)
        t = t / dist.get_world_size()
    return max(float(t), 1.0)


class SSegObjective(nn.Module):
    """The model plus its loss, as one module so that a DDP wrapper sees a single forward.

    ``forward(images [B,3,H,W] in [0,1], labels [B,H',W'] pseudo-mask ids (any resolution,
    resized nearest to the prediction grid), tokens [B,L] caption ids) -> dict`` of scalars:
    ``loss`` (to backprop), ``mask``, ``dice``, ``focal``, ``contrastive``, ``logit_scale``,
    ``matched`` (mean matched masks per image).

    With ``class_tokens [C,L]`` (supervised upper bound: ``labels`` are class ids ``0..C-1``)
    the loss adds ``class_weight * CE(scale * <mask feature, class text>, class id)`` over the
    matched pairs, and the output has ``class``. With ``noun_tokens [U,L]`` + ``noun_targets
    [B,U]`` (:func:`ovs.training.noun_prompts`) and ``noun_weight > 0`` it adds
    ``noun_weight * noun_contrastive_loss`` and the output has ``noun``.
    """

    def __init__(self, model: SSeg, cfg: SSegLossConfig) -> None:
        super().__init__()
        self.model = model
        self.cfg = cfg

    def forward(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        tokens: torch.Tensor,
        class_tokens: torch.Tensor | None = None,
        noun_tokens: torch.Tensor | None = None,
        noun_targets: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        model, cfg = self.model, self.cfg
        masks, feats = model(images)
        targets, valid = label_maps_to_masks(labels, masks.shape[-2:], cfg.num_pseudo_masks)
        indices = hungarian_match(
            masks.detach(), targets, valid, cfg.dice_weight, cfg.focal_weight,
            cfg.focal_alpha, cfg.focal_gamma,
        )  # fmt: skip
        n_matched = sum(len(p) for p, _ in indices)
        ml = mask_loss(
            masks, targets, indices, cfg.dice_weight, cfg.focal_weight, cfg.focal_alpha,
            cfg.focal_gamma, num_masks=_global_num_masks(n_matched, masks.device),
        )  # fmt: skip
        scale = model.logit_scale()
        image_emb = model.image_embedding(feats)
        cl = contrastive_loss(image_emb, model.encode_text(tokens), scale)
        loss = cfg.mask_weight * ml["loss"] + cfg.contrastive_weight * cl
        extra = {}
        if noun_tokens is not None and noun_targets is not None and cfg.noun_weight > 0:
            if len(noun_tokens):
                nl = noun_contrastive_loss(
                    image_emb, model.encode_text(noun_tokens), noun_targets, scale
                )
            else:  # no nouns in this batch: a zero that still carries a graph
                nl = image_emb.sum() * 0.0
            loss = loss + cfg.noun_weight * nl
            extra["noun"] = nl.detach()
        if class_tokens is not None:
            ce = class_loss(feats, model.encode_text(class_tokens), indices, scale)
            loss = loss + cfg.class_weight * ce
            extra["class"] = ce.detach()
        return {
            **extra,
            "loss": loss,
            "mask": ml["loss"].detach(),
            "dice": ml["dice"].detach(),
            "focal": ml["focal"].detach(),
            "contrastive": cl.detach(),
            "logit_scale": scale.detach(),
            "matched": torch.tensor(n_matched / max(images.shape[0], 1), device=masks.device),
        }
