"""Semantic-segmentation metrics from a confusion matrix.

Everything goes through one ``[C, C]`` int64 confusion matrix (rows = ground truth,
columns = prediction). Pixels whose ground truth is ``ignore_index`` (255) are dropped
before counting, so a prediction at an ignored pixel never counts. Confusion matrices from
several workers (or several shards of a dataset) add up: ``sum(confusions)`` gives exactly
the matrix of the union, which is what makes the evaluation shardable.

Absent classes follow mmsegmentation's ``IoUMetric`` rule: a class's IoU is
``TP / (TP + FP + FN)``; a class whose union is 0 (absent from both ground truth and
prediction over the whole evaluated set) gets IoU NaN and is left out of the mean
(``nanmean``). A class that is only predicted (absent from ground truth) has union > 0 and
IoU 0, so it does count and pulls the mean down. Equivalently: mIoU averages over the classes
present in GT ∪ prediction.
"""

from __future__ import annotations

import numpy as np
import torch

IGNORE_INDEX = 255


def confusion_matrix(
    pred: np.ndarray | torch.Tensor,
    label: np.ndarray | torch.Tensor,
    num_classes: int,
    ignore_index: int = IGNORE_INDEX,
) -> np.ndarray:
    """Confusion matrix of one prediction (or a batch) against its ground truth.

    Args:
        pred: integer class ids, any shape (e.g. ``[H, W]`` or ``[B, H, W]``).
        label: ground-truth ids, same shape; ``ignore_index`` pixels are skipped.
        num_classes: C. Predictions must lie in ``[0, C)``; labels other than ``ignore_index``
            must too (a value outside raises ``ValueError`` rather than being miscounted).
    Returns:
        ``np.int64[C, C]``, ``M[g, p]`` = number of pixels with GT ``g`` predicted as ``p``.
    """
    if tuple(pred.shape) != tuple(label.shape):
        raise ValueError(f"pred shape {tuple(pred.shape)} != label shape {tuple(label.shape)}")
    p = torch.as_tensor(pred).reshape(-1).long()
    g = torch.as_tensor(label).reshape(-1).long()
    keep = g != ignore_index
    p, g = p[keep], g[keep]
    if g.numel() and (int(g.min()) < 0 or int(g.max()) >= num_classes):
        raise ValueError(f"label values outside [0, {num_classes}) and != {ignore_index}")
    if p.numel() and (int(p.min()) < 0 or int(p.max()) >= num_classes):
        raise ValueError(f"prediction values outside [0, {num_classes})")
    counts = torch.bincount(g * num_classes + p, minlength=num_classes * num_classes)
    return counts.reshape(num_classes, num_classes).cpu().numpy().astype(np.int64)


def merge_confusions(confusions: list[np.ndarray]) -> np.ndarray:
    """Sum confusion matrices from several workers/shards. Returns ``int64[C, C]``."""
    if not confusions:
        raise ValueError("no confusion matrices to merge")
    out = np.zeros_like(np.asarray(confusions[0], dtype=np.int64))
    for c in confusions:
        c = np.asarray(c, dtype=np.int64)
        if c.shape != out.shape:
            raise ValueError(f"confusion shapes differ: {c.shape} vs {out.shape}")
        out += c
    return out


def per_class_iou(conf: np.ndarray) -> np.ndarray:
    """IoU per class, ``float64[C]``; NaN where the class is in neither GT nor prediction."""
    conf = np.asarray(conf, dtype=np.float64)
    tp = np.diag(conf)
    union = conf.sum(0) + conf.sum(1) - tp
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(union > 0, tp / np.where(union > 0, union, 1.0), np.nan)


def mean_iou(conf: np.ndarray) -> float:
    """nanmean of :func:`per_class_iou`; NaN if no class occurs at all."""
    iou = per_class_iou(conf)
    return float(np.nanmean(iou)) if np.isfinite(iou).any() else float("nan")


def pixel_accuracy(conf: np.ndarray) -> float:
    """Fraction of non-ignored pixels predicted correctly (mmseg ``aAcc``)."""
    conf = np.asarray(conf, dtype=np.float64)
    total = conf.sum()
    return float(np.trace(conf) / total) if total > 0 else float("nan")


def per_class_accuracy(conf: np.ndarray) -> np.ndarray:
    """Recall per GT class, ``float64[C]``; NaN for classes absent from GT (mmseg ``Acc``)."""
    conf = np.asarray(conf, dtype=np.float64)
    gt = conf.sum(1)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(gt > 0, np.diag(conf) / np.where(gt > 0, gt, 1.0), np.nan)


def summarize(conf: np.ndarray, class_names: list[str] | None = None) -> dict:
    """All metrics of a confusion matrix as a JSON-friendly dict.

    Returns ``{"miou", "acc", "macc", "per_class_iou": {name: iou|None}, "confusion"}``; mIoU
    and accuracies are fractions in [0, 1]; absent classes map to ``None`` (JSON null).
    """
    conf = np.asarray(conf, dtype=np.int64)
    names = class_names or [str(i) for i in range(conf.shape[0])]
    if len(names) != conf.shape[0]:
        raise ValueError(f"{len(names)} class names for a {conf.shape[0]}-class confusion")
    iou = per_class_iou(conf)
    cls_acc = per_class_accuracy(conf)
    return {
        "miou": mean_iou(conf),
        "acc": pixel_accuracy(conf),
        "macc": float(np.nanmean(cls_acc)) if np.isfinite(cls_acc).any() else float("nan"),
        "per_class_iou": {n: (None if np.isnan(v) else float(v)) for n, v in zip(names, iou)},
        "confusion": conf.tolist(),
    }
