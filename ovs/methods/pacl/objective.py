"""PACL's objective for one caption batch: frozen CLIP text embeddings of the captions, the
embedded patches, and :func:`ovs.methods.pacl.losses.pacl_loss`."""

from __future__ import annotations

import torch
from torch import nn

from ovs.methods.pacl.losses import pacl_loss
from ovs.methods.pacl.model import PACL


class PACLObjective(nn.Module):
    """The model plus its loss, one module for DDP.

    ``forward(images [B,3,H,W] in [0,1], labels (unused: PACL needs no masks), tokens [B,L]
    CLIP token ids)`` -> ``{"loss", "contrastive", "logit_scale"}``. The trailing arguments of
    the caption batch (S-Seg's class / noun losses) must be ``None``.
    """

    def __init__(self, model: PACL) -> None:
        super().__init__()
        self.model = model

    def forward(
        self,
        images: torch.Tensor,
        labels: torch.Tensor | None,
        tokens: torch.Tensor,
        class_tokens: torch.Tensor | None = None,
        noun_tokens: torch.Tensor | None = None,
        noun_targets: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        if class_tokens is not None or noun_tokens is not None or noun_targets is not None:
            raise ValueError("pacl trains on captions only (no class or noun losses)")
        model = self.model
        scale = model.logit_scale()
        loss = pacl_loss(model.patch_embeddings(images), model.encode_text(tokens), scale)
        return {"loss": loss, "contrastive": loss.detach(), "logit_scale": scale.detach()}
