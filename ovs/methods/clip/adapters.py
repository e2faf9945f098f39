"""A trained (or pretrained) CLIP as the evaluation harness's ``SegMethod`` rows:

- ``clip`` (the spec's ``seg_method``): dense CLIP, every patch token classified;
- ``maskclip``: MaskCLIP, the value embeddings of the last attention layer;
- ``pm_clip``: Baseline 1, each pseudo-mask segment classified by CLIP on the masked image.

The first two are :class:`ovs.eval.baselines.ClipDenseMethod` on the trained open_clip model;
the third is :class:`ovs.methods.clip.pseudo_mask_clip.PseudoMaskClip`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from ovs.eval.baselines import ClipDenseMethod
from ovs.eval.method import SegMethod
from ovs.methods.clip.model import ClipModel
from ovs.methods.clip.pseudo_mask_clip import PseudoMaskClip
from ovs.methods.spec import RowOptions


def dense(model: ClipModel, device: torch.device, mode: str) -> ClipDenseMethod:
    """``mode`` ``clip`` or ``maskclip`` on ``model``'s open_clip CLIP, on ``device``."""
    mean, std = model.mean.flatten().tolist(), model.std.flatten().tolist()
    method = ClipDenseMethod(
        model.clip.eval(),
        model.tokenize,
        mode,
        tuple(mean),
        tuple(std),
        text_batch=model.cfg.text_batch_size,
    )
    return method.to(device)


def seg_method(model: ClipModel, device: torch.device) -> ClipDenseMethod:
    """The spec's ``seg_method``: dense CLIP (row ``clip``)."""
    return dense(model, device, "clip")


def maskclip(model: ClipModel, device: torch.device, options: RowOptions) -> ClipDenseMethod:
    """Row ``maskclip``."""
    return dense(model, device, "maskclip")


def pm_clip(model: ClipModel, device: torch.device, options: RowOptions) -> PseudoMaskClip:
    """Row ``pm_clip`` (Baseline 1): segments from ``options.pseudo_masks`` (the run's
    pseudo-mask settings; the masker's defaults outside a run)."""
    from ovs.pseudo_masks.masker import PseudoMaskConfig

    cfg = options.pseudo_masks if options.pseudo_masks is not None else PseudoMaskConfig()
    return PseudoMaskClip(model, cfg, device)


ROWS: dict[str, Callable[[ClipModel, torch.device, RowOptions], SegMethod]] = {
    "maskclip": maskclip,
    "pm_clip": pm_clip,
}
