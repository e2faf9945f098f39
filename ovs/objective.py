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

from ovs.losses import (
    class_loss,
    contrastive_loss,
    gather_with_grad,
    is_distributed,
    mask_loss,
    noun_contrastive_loss,
)
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


class _SparseRowAllReduce:
    """Averages the gradient of an embedding table over workers by its used rows only.

    Only the rows whose ids some worker looked up this step can have a non-zero gradient on any
    worker, so averaging those rows (and leaving the rest at zero) is exactly DDP's dense
    average. For the text tower's 49,408 x 64 token table (half of the tiny model's 6.6M
    parameters) a step touches a few hundred rows: two small collectives (the union of ids,
    then the rows) replace 12.6 MB of the gradient all-reduce. They run on their own process
    group, so their order cannot interleave with DDP's bucket all-reduces.
    """

    def __init__(self, embedding: nn.Embedding, group: dist.ProcessGroup | None) -> None:
        self.group = group
        self.world = dist.get_world_size(group)
        self.used = torch.zeros(embedding.num_embeddings, dtype=torch.uint8)
        embedding.register_forward_pre_hook(self._record)
        embedding.weight.register_post_accumulate_grad_hook(self._reduce)

    def _record(self, module: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
        if torch.is_grad_enabled():
            ids = args[0]
            if self.used.device != ids.device:
                self.used = self.used.to(ids.device)
            self.used[ids.flatten()] = 1

    def _reduce(self, weight: torch.Tensor) -> None:
        grad = weight.grad
        assert grad is not None
        dist.all_reduce(self.used, op=dist.ReduceOp.MAX, group=self.group)
        rows = self.used.nonzero().flatten()
        part = grad.index_select(0, rows).div_(self.world)  # DDP's order: divide, then sum
        dist.all_reduce(part, group=self.group)
        grad.index_copy_(0, rows, part)
        self.used.zero_()


def wrap_ddp(objective: SSegObjective, **ddp_kwargs: object) -> nn.Module:
    """``DistributedDataParallel(objective)`` with the options that make the tiny CPU step
    scale, gradients unchanged (the same average over workers):

    * ``gradient_as_bucket_view=True``: gradients live in DDP's buckets (no copy per step);
    * the text tower's token embedding is left out of DDP and averaged over its used rows
      only (:class:`_SparseRowAllReduce`), which halves the all-reduced bytes of the tiny model.

    Every worker must call it (it creates a process group) and every step must look up the
    token table (captions always are). ``ddp_kwargs`` override or extend the options.
    Not distributed: returns ``objective`` itself.
    """
    from torch.nn.parallel import DistributedDataParallel

    if not is_distributed():
        return objective
    table = objective.model.text.token_embedding
    name = next(n for n, p in objective.named_parameters() if p is table.weight)
    DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(objective, [name])
    group = dist.new_group(backend=dist.get_backend())
    assert isinstance(group, dist.ProcessGroup)  # every rank is a member
    _SparseRowAllReduce(table, group)
    options: dict = {"gradient_as_bucket_view": True, **ddp_kwargs}
    return DistributedDataParallel(objective, **options)
