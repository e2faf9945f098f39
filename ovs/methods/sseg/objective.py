"""The S-Seg training objective for one batch: forward, match, mask loss, InfoNCE.

``L = mask_weight * L_mask + contrastive_weight * L_contrastive`` (paper Eq. 4, both 1.0;
L_mask = 1.0 dice + 20.0 focal). The mask loss is computed at the prediction resolution
(stride 4): pseudo-label maps are resized to it with nearest interpolation. Pseudo-masks come
from an 8-px-patch ViT, so they are coarser than stride 4 and nothing is lost, while the
N x H x W loss tensors stay 16x smaller than at full resolution.
"""

from __future__ import annotations

import torch
from torch import nn

from ovs.methods.sseg.config import SSegLossConfig
from ovs.methods.sseg.losses import class_loss, mask_loss
from ovs.methods.sseg.matching import hungarian_match, label_maps_to_masks
from ovs.methods.sseg.model import SSeg
from ovs.train.contrastive import (
    contrastive_loss,
    gather_with_grad,
    is_distributed,
    noun_contrastive_loss,
)


def _gather_for_losses(
    image_emb: torch.Tensor, text_emb: torch.Tensor, n_matched: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """What the losses need from the other workers, in one collective per step.

    ``image_emb, text_emb [B,E]`` -> ``(all_img [W*B,E], all_txt [W*B,E], num_masks)``:
    the embeddings of every worker (rank order, gradients flow back to their workers) and
    MaskFormer's normaliser, the average number of matched masks per worker, at least 1 (a
    scalar tensor, so no host sync). The matched count rides in an extra column of the
    all-gather that InfoNCE needs anyway: one all-gather forward and one all-reduce backward
    instead of three collectives. Single process: the inputs themselves, no copy.
    """
    if not is_distributed():
        n = torch.tensor(float(n_matched), device=image_emb.device)
        return image_emb, text_emb, n.clamp_min(1.0)
    b, e = image_emb.shape
    count = torch.full((b, 1), float(n_matched), device=image_emb.device)
    packed = torch.cat([image_emb.float(), text_emb.float(), count], dim=1)
    all_img, all_txt, all_count = gather_with_grad(packed).split([e, e, 1], dim=1)
    world = all_count.shape[0] // b
    num_masks = all_count.view(world, b)[:, 0].sum() / world
    return all_img.to(image_emb.dtype), all_txt.to(text_emb.dtype), num_masks.clamp_min(1.0)


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
        scale = model.logit_scale()
        image_emb = model.image_embedding(feats)
        text_emb = model.encode_text(tokens)
        all_img, all_txt, num_masks = _gather_for_losses(image_emb, text_emb, n_matched)
        ml = mask_loss(
            masks, targets, indices, cfg.dice_weight, cfg.focal_weight, cfg.focal_alpha,
            cfg.focal_gamma, num_masks=num_masks,
        )  # fmt: skip
        cl = contrastive_loss(image_emb, text_emb, scale, gathered=(all_img, all_txt))
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
