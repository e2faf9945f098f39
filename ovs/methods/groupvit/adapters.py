"""A trained GroupViT (or any model with its inference interface) as the harness's
``SegMethod``: text embeddings and group-classified dense probabilities."""

from __future__ import annotations

from typing import Protocol

import torch
from torch import nn


class GroupingModel(Protocol):
    def text_embeddings(self, texts: list[str]) -> torch.Tensor: ...

    def dense_probs(self, images: torch.Tensor, text_emb: torch.Tensor) -> torch.Tensor: ...


class GroupingMethod:
    """A trained grouping model as a :class:`~ovs.eval.method.SegMethod` on one device (eval
    mode: no Gumbel noise, no drop path)."""

    def __init__(self, model: nn.Module, device: str | torch.device = "cpu") -> None:
        self.device = torch.device(device)
        self.model: GroupingModel = model.to(self.device).eval()  # type: ignore[assignment]

    def text_embeddings(self, texts: list[str]) -> torch.Tensor:
        """``[T, E]`` L2-normalised."""
        return self.model.text_embeddings(texts)

    def dense_probs(self, images: torch.Tensor, text_emb: torch.Tensor) -> torch.Tensor:
        """``[B, 3, H, W]`` in [0, 1], ``[M, E]`` -> ``[B, M, H, W]``: each pixel's group's
        class distribution."""
        return self.model.dense_probs(images.to(self.device), text_emb.to(self.device))


def seg_method(model: nn.Module, device: str | torch.device) -> GroupingMethod:
    """The spec's ``seg_method``: :class:`GroupingMethod`."""
    return GroupingMethod(model, device)


def image_backbone(model: nn.Module) -> nn.Module:
    """The spec's ``image_backbone``: the grouping encoder."""
    return model.image  # type: ignore[return-value]
