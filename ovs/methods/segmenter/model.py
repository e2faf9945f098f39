"""The S-Seg+ segmenter: a timm backbone + a UperNet head -> per-pixel logits over K classes.

Closed vocabulary: the segmenter is trained on the pseudo-labels of one dataset and predicts
that dataset's K classes (S-Seg paper §4.4 / Table 6: UperNet on an MAE-pretrained ViT-B/16,
features from blocks 4, 6, 8 and 12). :class:`Segmenter` = ``MultiScaleBackbone`` +
``UperNetHead`` (:mod:`ovs.models.upernet`); ``forward(images [B,3,H,W] in [0,1]) -> logits
[B,K,H,W]`` (bilinear upsampling from stride 4). mmseg's auxiliary FCN head is not used.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ovs.methods.segmenter.config import SegmenterConfig
from ovs.models.upernet import MultiScaleBackbone, UperNetHead


class Segmenter(nn.Module):
    """Backbone + UperNet: ``forward(images [B,3,H,W] RGB in [0,1]) -> logits [B,K,H,W]``,
    ``K = num_classes`` (the target dataset's classes, background included if it has one).

    Inputs whose sides are not multiples of 32 (and of the ViT patch size) are zero-padded
    after normalisation and the output cropped back.
    """

    def __init__(self, cfg: SegmenterConfig, num_classes: int) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be positive, got {num_classes}")
        self.cfg = cfg
        self.num_classes = num_classes
        self.backbone = MultiScaleBackbone(
            cfg.backbone, cfg.pretrained, cfg.checkpoint, dict(cfg.backbone_kwargs), cfg.out_indices
        )
        self.head = UperNetHead(
            self.backbone.channels, cfg.channels, num_classes, cfg.pool_scales, cfg.dropout
        )
        patch = getattr(getattr(self.backbone.model, "patch_embed", None), "patch_size", (1,))
        self.pad_to = math.lcm(32, int(patch[0]))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        h, w = images.shape[-2:]
        ph, pw = (-h) % self.pad_to, (-w) % self.pad_to
        x = (images - self.backbone.mean.to(images)) / self.backbone.std.to(images)
        x = F.pad(x, (0, pw, 0, ph))
        logits = self.head(self.backbone(x))
        logits = F.interpolate(logits, size=(h + ph, w + pw), mode="bilinear", align_corners=False)
        return logits[..., :h, :w]

    @torch.no_grad()
    def probs(self, images: torch.Tensor) -> torch.Tensor:
        """``[B,3,H,W]`` in [0,1] -> softmax class probabilities ``[B,K,H,W]``."""
        return self.forward(images).float().softmax(dim=1)


def build_segmenter(cfg: SegmenterConfig, num_classes: int, seed: int = 0) -> Segmenter:
    """A segmenter with seeded random init for everything not loaded from weights."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return Segmenter(cfg, num_classes)
