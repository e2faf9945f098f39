"""One batch of CLIP's objective: symmetric InfoNCE between the images and their captions,
open_clip's ``ClipLoss`` (the mean of the image->text and text->image cross-entropies) with
negatives all-gathered from every worker (``local_loss``, ``gather_with_grad``: each worker's
loss over its own rows; DDP's averaging gives the global batch's gradient)."""

from __future__ import annotations

import warnings
from typing import Any

import torch
from torch import nn

from ovs.methods.clip.model import ClipModel


class ClipObjective(nn.Module):
    """``forward(images [B,3,S,S] in [0,1], labels (unused), tokens [B,L], *unused)`` ->
    ``{"loss", "contrastive", "logit_scale"}`` scalars. Takes the caption batch the ``train``
    stage builds for every caption method; the pseudo-mask labels and noun prompts are not
    used by CLIP."""

    def __init__(self, model: ClipModel) -> None:
        super().__init__()
        self.model = model
        self._loss: Any = None

    def loss_fn(self) -> Any:
        """open_clip's ``ClipLoss`` for the current process group (built on first use: the group
        exists only inside the training workers)."""
        if self._loss is None:
            from open_clip.loss import ClipLoss

            # open_clip gathers with ``torch.distributed.nn.all_gather``, which torch deprecates
            # with a FutureWarning on every rank's console; the call itself is correct.
            warnings.filterwarnings(
                "ignore", r"torch\.distributed\.nn\.functional\.all_gather", FutureWarning
            )

            from ovs.train.contrastive import is_distributed

            rank, world = 0, 1
            if is_distributed():
                rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
            self._loss = ClipLoss(
                local_loss=True, gather_with_grad=True, rank=rank, world_size=world
            )
        return self._loss

    def forward(
        self, images: torch.Tensor, labels: Any, tokens: torch.Tensor, *_: Any
    ) -> dict[str, torch.Tensor]:
        img = self.model.encode_image(images)
        txt = self.model.encode_text(tokens)
        scale = self.model.logit_scale()
        loss = self.loss_fn()(img.float(), txt.float(), scale)
        return {"loss": loss, "contrastive": loss.detach(), "logit_scale": scale.detach()}


def objective(model: ClipModel, cfg: Any) -> ClipObjective:
    """The spec's ``objective``."""
    return ClipObjective(model)
