"""Closed-vocabulary evaluation of the S-Seg+ segmenter with the evaluation harness.

The segmenter predicts the target dataset's own K classes, so no text side is involved; the
image side is the protocol's, unchanged (:mod:`ovs.eval.protocol`): resize to the protocol's
short side, average softmax probabilities over its sliding windows, resize back to the
ground-truth size, argmax. Background: S-Seg's background decision (the protocol threshold) is
already part of the pseudo-labels, so on datasets with a background class the segmenter has
learnt class 0 like any other and no threshold is applied again. Scores come from the same
confusion-matrix metrics (:func:`ovs.eval.protocol.shard_metrics`) as S-Seg's.
"""

from __future__ import annotations

from typing import cast

import numpy as np
import torch
import torch.nn.functional as F

from ovs.eval.datasets import SegDataset
from ovs.eval.method import SegMethod
from ovs.eval.metrics import confusion_matrix
from ovs.eval.protocol import (
    EvalShard,
    ProtocolConfig,
    image_to_tensor,
    resize_short_side,
    shard_metrics,
    sliding_window_probs,
)
from ovs.methods.segmenter.adapters import ClosedVocabMethod
from ovs.methods.segmenter.model import Segmenter


@torch.no_grad()
def predict_closed(model: Segmenter, image: np.ndarray, protocol: ProtocolConfig) -> np.ndarray:
    """``uint8[H, W]`` class ids for one ``uint8[H, W, 3]`` image (protocol resizing and
    sliding windows; see module docstring)."""
    method = ClosedVocabMethod(model)
    x = image_to_tensor(image).to(method.device)
    h, w = x.shape[-2:]
    x = resize_short_side(x, protocol.short_side, protocol.max_long_side)
    eye = torch.eye(model.num_classes, device=method.device)
    # The window loop only calls dense_probs; there is no text side to a closed vocabulary.
    probs = sliding_window_probs(
        cast(SegMethod, method), x, eye, protocol.window, protocol.stride, protocol.window_batch
    )
    probs = F.interpolate(probs[None], size=(h, w), mode="bilinear", align_corners=False)[0]
    return probs.argmax(dim=0).to(torch.uint8).cpu().numpy()


@torch.no_grad()
def evaluate_closed(
    model: Segmenter,
    dataset: SegDataset,
    protocol: ProtocolConfig,
    indices: list[int] | range | None = None,
) -> dict:
    """mIoU etc. of ``model`` on ``dataset`` (same keys as :func:`ovs.eval.protocol.evaluate`).

    Unreadable samples are skipped and counted. ``model`` must predict ``dataset.num_classes``
    classes.
    """
    if model.num_classes != dataset.num_classes:
        raise ValueError(
            f"segmenter predicts {model.num_classes} classes, {dataset.name} has "
            f"{dataset.num_classes}"
        )
    model.eval()
    c = dataset.num_classes
    conf = np.zeros((c, c), dtype=np.int64)
    n, skipped = 0, []
    for i in range(len(dataset)) if indices is None else indices:
        try:
            sample = dataset[i]
        except (OSError, ValueError) as e:
            skipped.append(f"{dataset.samples[i].id}: {e}")
            continue
        conf += confusion_matrix(
            predict_closed(model, sample["image"], protocol), sample["label"], c
        )
        n += 1
    out = shard_metrics(EvalShard(conf, n, skipped), dataset)
    out.update(dataset=dataset.name, protocol=protocol.name)
    return out
