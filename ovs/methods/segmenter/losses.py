"""Pixel-wise cross-entropy for training on pseudo-labels with ignored pixels."""

from __future__ import annotations

import torch
import torch.nn.functional as F

IGNORE_INDEX = 255


def pixel_cross_entropy(
    logits: torch.Tensor, target: torch.Tensor, ignore_index: int = IGNORE_INDEX
) -> torch.Tensor:
    """Mean cross-entropy over the pixels whose target is not ``ignore_index``.

    Args:
        logits: ``[B, K, H, W]`` unnormalised class scores.
        target: ``[B, H, W]`` integer class ids in ``[0, K)`` or ``ignore_index``.
    Returns:
        A scalar. A batch whose pixels are all ignored gives 0 (still differentiable, so
        every DDP rank runs the same backward).
    """
    if logits.shape[0] != target.shape[0] or logits.shape[2:] != target.shape[1:]:
        raise ValueError(f"logits {tuple(logits.shape)} vs target {tuple(target.shape)}")
    target = target.long()
    valid = target != ignore_index
    if not bool(valid.any()):
        return logits.sum() * 0.0
    bad = valid & ((target < 0) | (target >= logits.shape[1]))
    if bool(bad.any()):
        raise ValueError(f"target ids outside [0, {logits.shape[1]}) and != {ignore_index}")
    loss = F.cross_entropy(logits.float(), target, ignore_index=ignore_index, reduction="sum")
    return loss / valid.sum()
