"""A trained pseudo-mask ViT as the evaluation harness's ``SegMethod``: the test image is cut
into segments by the pseudo-mask extractor (``cfg.test_masks``: features + K-means, the
pseudo-mask stage's :class:`~ovs.pseudo_masks.masker.PseudoMasker`), each segment's feature is
classified and its class distribution painted on its pixels."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ovs.methods.pmvit.model import PMViT
from ovs.pseudo_masks.masker import PseudoMasker

TEST_SEED = 0  # K-means seed of every test image (deterministic predictions)


class PMViTMethod:
    """:class:`~ovs.eval.method.SegMethod` of a pseudo-mask ViT on one device (eval, no grad)."""

    def __init__(self, model: PMViT, device: str | torch.device = "cpu") -> None:
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.masker = PseudoMasker(model.cfg.test_masks, device=str(self.device))

    def text_embeddings(self, texts: list[str]) -> torch.Tensor:
        """``[T, E]`` L2-normalised."""
        return self.model.text_embeddings(texts)

    @torch.no_grad()
    def segments(self, images: torch.Tensor) -> torch.Tensor:
        """``[B,3,H,W]`` in [0,1] -> ``[B,h,w]`` int64 pseudo-mask ids of the masker's grid
        (images resized to its ``image_size``, quantised to uint8 as stored images are)."""
        size = self.masker.cfg.image_size
        x = F.interpolate(images.float(), size=(size, size), mode="bilinear", align_corners=False)
        u8 = (x.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
        labels = self.masker.labels(np.ascontiguousarray(u8), [TEST_SEED] * len(u8))
        return torch.from_numpy(labels.astype(np.int64)).to(self.device)

    def dense_probs(self, images: torch.Tensor, text_emb: torch.Tensor) -> torch.Tensor:
        """``[B,3,H,W]`` in [0,1], ``[M,E]`` -> ``[B,M,H,W]`` (see ``PMViT.segment_probs``)."""
        images = images.to(self.device)
        return self.model.segment_probs(images, self.segments(images), text_emb.to(self.device))


def seg_method(model: PMViT, device: str | torch.device) -> PMViTMethod:
    """The spec's ``seg_method``: :class:`PMViTMethod`."""
    return PMViTMethod(model, device)


def image_backbone(model: PMViT) -> torch.nn.Module:
    """The spec's ``image_backbone``: the timm ViT."""
    return model.vit
