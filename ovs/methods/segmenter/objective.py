"""One batch of the S-Seg+ segmenter's objective: pixel cross-entropy on pseudo-labels."""

from __future__ import annotations

import torch
from torch import nn

from ovs.methods.segmenter.losses import pixel_cross_entropy
from ovs.methods.segmenter.model import Segmenter


class SegmenterObjective(nn.Module):
    """The segmenter plus its loss, one module for one DDP forward.

    ``forward(images [B,3,H,W] in [0,1], labels [B,H,W] class ids, 255 = ignore) -> {"loss"}``.
    """

    def __init__(self, model: Segmenter) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"loss": pixel_cross_entropy(self.model(images), labels)}
