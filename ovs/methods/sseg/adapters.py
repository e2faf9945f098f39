"""A trained S-Seg model as the evaluation harness's ``SegMethod`` and as the pairs scorer."""

from __future__ import annotations

import torch

from ovs.methods.sseg.model import SSeg
from ovs.pairs.maker import DenseScorer


class SSegMethod:
    """A trained S-Seg model as a :class:`~ovs.eval.method.SegMethod` on one device (eval
    mode, no grad)."""

    def __init__(self, model: SSeg, device: str | torch.device = "cpu") -> None:
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()

    def text_embeddings(self, texts: list[str]) -> torch.Tensor:
        """``[T, E]`` L2-normalised."""
        return self.model.text_embeddings(texts)

    def dense_probs(self, images: torch.Tensor, text_emb: torch.Tensor) -> torch.Tensor:
        """``[B, 3, H, W]`` in [0, 1], ``[M, E]`` → ``[B, M, H, W]`` (see ``SSeg.dense_probs``)."""
        return self.model.dense_probs(images.to(self.device), text_emb.to(self.device))


def seg_method(model: SSeg, device: str | torch.device) -> SSegMethod:
    """The spec's ``seg_method``: :class:`SSegMethod`."""
    return SSegMethod(model, device)


def pair_scorer(model: SSeg, device: torch.device, image_size: int, batch_size: int) -> DenseScorer:
    """The spec's ``pair_scorer``: masks scored by ``SSeg.mask_embeddings``."""
    return DenseScorer(model, image_size, device, batch_size)


def image_backbone(model: SSeg) -> torch.nn.Module:
    """The spec's ``image_backbone``: the MaskFormer's timm backbone."""
    return model.image_backbone()
