"""A trained PACL model as the evaluation harness's ``SegMethod``: every patch classified."""

from __future__ import annotations

import torch

from ovs.methods.pacl.model import PACL


class PACLMethod:
    """:class:`~ovs.eval.method.SegMethod` of PACL on one device (eval mode, no grad)."""

    def __init__(self, model: PACL, device: str | torch.device = "cpu") -> None:
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()

    def text_embeddings(self, texts: list[str]) -> torch.Tensor:
        """``[T, E]`` L2-normalised (the frozen CLIP's)."""
        return self.model.text_embeddings(texts)

    def dense_probs(self, images: torch.Tensor, text_emb: torch.Tensor) -> torch.Tensor:
        """``[B,3,H,W]`` in [0,1], ``[M,E]`` -> ``[B,M,H,W]`` (see ``PACL.dense_probs``)."""
        return self.model.dense_probs(images.to(self.device), text_emb.to(self.device))


def seg_method(model: PACL, device: str | torch.device) -> PACLMethod:
    """The spec's ``seg_method``: :class:`PACLMethod`."""
    return PACLMethod(model, device)
