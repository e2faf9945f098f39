"""Oracle mIoU of pseudo-masks (S-Seg Table 1) and the figure that shows it.

Each pseudo segment takes its majority ground-truth label; the mIoU of those labels over a
dataset measures how well the segments could be named at best (the paper: 78.8 VOC / 66.3
Context for DINO ViT-S/8, 49.5 / 43.3 for K-means on pixels). The confusion matrix and IoUs are
:mod:`ovs.eval.metrics`'.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ovs.eval.metrics import IGNORE_INDEX, confusion_matrix, per_class_iou
from ovs.pseudo_masks.masker import upsample_labels


def oracle_labels(
    pseudo: np.ndarray, gt: np.ndarray, num_classes: int, ignore: int = IGNORE_INDEX
) -> np.ndarray:
    """Give each pseudo segment its majority ground-truth label.

    pseudo [h, w] (any resolution; upsampled nearest to gt's), gt [H, W] uint8 -> [H, W] uint8.
    Segments that cover only ignored pixels map to ``ignore``.
    """
    if pseudo.shape != gt.shape:
        pseudo = upsample_labels(pseudo, gt.shape)
    seg = pseudo.astype(np.int64)
    n_seg = int(seg.max()) + 1 if seg.size else 0
    valid = (gt != ignore) & (gt < num_classes)
    hist = np.bincount(
        seg[valid] * num_classes + gt[valid].astype(np.int64), minlength=n_seg * num_classes
    ).reshape(n_seg, num_classes)
    mapping = np.where(hist.sum(1) > 0, hist.argmax(1), ignore).astype(np.uint8)
    return mapping[seg]


def oracle_miou(
    pseudo_labels: Sequence[np.ndarray],
    gt_labels: Sequence[np.ndarray],
    num_classes: int,
    ignore: int = IGNORE_INDEX,
) -> float:
    """Oracle mIoU of pseudo-masks: majority GT label per segment, confusion over the dataset.

    pseudo_labels: per image [h, w] segment ids; gt_labels: per image [H, W] class ids (0..C-1,
    ``ignore`` = void; ids >= C are left out like void). Returns mIoU in [0, 1], the mean over
    the classes present in GT or prediction.
    """
    if len(pseudo_labels) != len(gt_labels):
        raise ValueError(f"{len(pseudo_labels)} pseudo maps for {len(gt_labels)} GT maps")
    conf = np.zeros((num_classes, num_classes), dtype=np.int64)
    for pseudo, gt in zip(pseudo_labels, gt_labels, strict=True):
        conf += oracle_confusion(pseudo, gt, num_classes, ignore)
    return oracle_miou_from_confusion(conf)


def oracle_confusion(
    pseudo: np.ndarray, gt: np.ndarray, num_classes: int, ignore: int = IGNORE_INDEX
) -> np.ndarray:
    """One image's ``[C, C]`` confusion of its oracle-labelled pseudo segments against ``gt``
    (summed over a dataset, then :func:`oracle_miou_from_confusion`: constant memory in the
    number of images)."""
    pred = oracle_labels(pseudo, gt, num_classes, ignore)
    valid = (gt != ignore) & (gt < num_classes) & (pred < num_classes)
    return confusion_matrix(pred[valid], gt[valid], num_classes, ignore)


def oracle_miou_from_confusion(conf: np.ndarray) -> float:
    """The oracle mIoU of a summed confusion matrix (mean over the classes present)."""
    iou = per_class_iou(conf)
    present = ~np.isnan(iou)
    # The mean of the present classes' IoUs as one compact array: np.nanmean
    # (metrics.mean_iou) sums with the absent classes' zeros interleaved, which can move the
    # last bit of the reported oracle_miou.
    return float(iou[present].mean()) if present.any() else float("nan")


def _palette(n: int = 256, seed: int = 0) -> np.ndarray:
    pal = np.random.default_rng(seed).integers(40, 256, size=(n, 3), dtype=np.uint8)
    pal[255] = 0  # ignore -> black
    return pal


def pseudo_mask_figure(
    images: Sequence[np.ndarray],
    pseudo_labels: Sequence[np.ndarray],
    gt_labels: Sequence[np.ndarray] | None = None,
    num_classes: int | None = None,
    max_rows: int = 8,
) -> Any:
    """Grid figure (matplotlib ``Figure``, no pyplot state): one row per image with columns
    image | pseudo-mask | (oracle-labelled pseudo-mask | ground truth, when GT is given)."""
    from matplotlib.figure import Figure

    rows = min(len(images), max_rows)
    with_gt = gt_labels is not None
    if with_gt and num_classes is None:
        raise ValueError("num_classes is needed to draw oracle labels")
    cols = 4 if with_gt else 2
    fig = Figure(figsize=(2.2 * cols, 2.2 * rows), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False)
    pal = _palette()
    titles = ["image", "pseudo-mask", "oracle labels", "ground truth"]
    for r in range(rows):
        img = images[r]
        size = img.shape[:2]
        panels = [img, pal[upsample_labels(pseudo_labels[r], size)]]
        if gt_labels is not None and num_classes is not None:  # with_gt (checked above)
            gt = gt_labels[r]
            panels += [pal[oracle_labels(pseudo_labels[r], gt, num_classes)], pal[gt]]
        for c, panel in enumerate(panels):
            ax = axes[r, c]
            ax.imshow(panel, interpolation="nearest")
            ax.set_axis_off()
            if r == 0:
                ax.set_title(titles[c], fontsize=9)
    return fig
