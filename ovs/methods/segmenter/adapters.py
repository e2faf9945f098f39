"""The S-Seg+ segmenter as the evaluation harness's ``SegMethod`` (closed vocabulary)."""

from __future__ import annotations

from typing import cast

import torch

from ovs.eval.method import SegMethod
from ovs.methods.segmenter.model import Segmenter


class ClosedVocabMethod:
    """The harness's ``dense_probs`` for a closed-vocabulary segmenter.

    ``text_emb`` ``[M, K]`` selects/mixes classes: ``probs[b, m] = sum_k text_emb[m, k] *
    p[b, k]``; the identity ``[K, K]`` gives the class probabilities themselves. A closed
    vocabulary has no text side, so there is no ``text_embeddings``: callers pass class
    selections (:func:`ovs.selftrain.evaluate.predict_closed`).
    """

    def __init__(self, model: Segmenter, device: str | torch.device | None = None) -> None:
        self.model = model
        self.device = torch.device(device) if device else next(model.parameters()).device

    @torch.no_grad()
    def dense_probs(self, images: torch.Tensor, text_emb: torch.Tensor) -> torch.Tensor:
        probs = self.model.probs(images.to(self.device))
        return torch.einsum("mk,bkhw->bmhw", text_emb.to(probs), probs)


def seg_method(model: Segmenter, device: str | torch.device) -> SegMethod:
    """The spec's ``seg_method``: the model on ``device`` in eval mode, as a
    :class:`ClosedVocabMethod` (the harness's window loop only calls ``dense_probs``)."""
    return cast(SegMethod, ClosedVocabMethod(model.to(device).eval(), device))
