"""Metrics against a plain per-pixel loop reference."""

import math

import numpy as np
import pytest
import torch

from ovs.eval.metrics import (
    confusion_matrix,
    mean_iou,
    merge_confusions,
    per_class_iou,
    pixel_accuracy,
    summarize,
)


def loop_reference(preds, labels, num_classes, ignore=255):
    """Obviously-correct reference: count every pixel, then IoU with mmseg's NaN rule."""
    inter = [0] * num_classes
    area_pred = [0] * num_classes
    area_gt = [0] * num_classes
    correct = total = 0
    for pred, label in zip(preds, labels):
        for p, g in zip(pred.ravel().tolist(), label.ravel().tolist()):
            if g == ignore:
                continue
            total += 1
            area_pred[p] += 1
            area_gt[g] += 1
            if p == g:
                inter[p] += 1
                correct += 1
    ious = []
    for c in range(num_classes):
        union = area_pred[c] + area_gt[c] - inter[c]
        ious.append(inter[c] / union if union > 0 else math.nan)
    present = [x for x in ious if not math.isnan(x)]
    return ious, sum(present) / len(present), correct / total


def random_case(rng, num_classes=7, n=3, h=13, w=17):
    preds, labels = [], []
    for _ in range(n):
        label = rng.integers(0, num_classes, (h, w))
        label[label == 3] = 4  # class 3 never in GT ...
        label[rng.random((h, w)) < 0.2] = 255  # ... and ignore pixels
        pred = rng.integers(0, num_classes, (h, w))
        pred[pred == 5] = 6  # class 5 never predicted
        pred[label == 255] = rng.integers(0, num_classes)  # predictions at ignore: don't count
        preds.append(pred.astype(np.uint8))
        labels.append(label.astype(np.uint8))
    return preds, labels


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_confusion_metrics_match_loop(seed):
    rng = np.random.default_rng(seed)
    c = 7
    preds, labels = random_case(rng, c)
    conf = merge_confusions([confusion_matrix(p, g, c) for p, g in zip(preds, labels)])
    ious, miou, acc = loop_reference(preds, labels, c)
    np.testing.assert_allclose(per_class_iou(conf), ious, equal_nan=True)
    assert mean_iou(conf) == pytest.approx(miou)
    assert pixel_accuracy(conf) == pytest.approx(acc)
    assert conf.sum() == sum(int((g != 255).sum()) for g in labels)


def test_absent_class_rules():
    # class 2 absent from GT and prediction → NaN, excluded; class 3 only predicted → IoU 0.
    label = np.array([[0, 0, 1, 255]])
    pred = np.array([[0, 3, 1, 2]])  # the 2 sits on an ignore pixel: not counted
    conf = confusion_matrix(pred, label, 4)
    iou = per_class_iou(conf)
    assert iou[0] == pytest.approx(0.5) and iou[1] == 1.0
    assert math.isnan(iou[2]) and iou[3] == 0.0
    assert mean_iou(conf) == pytest.approx((0.5 + 1.0 + 0.0) / 3)
    s = summarize(conf, ["a", "b", "c", "d"])
    assert s["per_class_iou"]["c"] is None and s["acc"] == pytest.approx(2 / 3)


def test_merge_equals_whole_and_torch_inputs():
    rng = np.random.default_rng(5)
    preds, labels = random_case(rng, 7, n=4)
    whole = confusion_matrix(np.stack(preds), np.stack(labels), 7)
    parts = merge_confusions(
        [
            confusion_matrix(torch.from_numpy(p), torch.from_numpy(g), 7)
            for p, g in zip(preds, labels)
        ]
    )
    np.testing.assert_array_equal(whole, parts)


def test_bad_inputs_raise():
    with pytest.raises(ValueError):
        confusion_matrix(np.zeros((2, 2)), np.zeros((2, 3)), 3)
    with pytest.raises(ValueError):
        confusion_matrix(np.zeros((2, 2), int), np.full((2, 2), 7), 3)  # label out of range
    with pytest.raises(ValueError):
        confusion_matrix(np.full((2, 2), 3), np.zeros((2, 2), int), 3)  # pred out of range
    with pytest.raises(ValueError):
        merge_confusions([np.zeros((2, 2)), np.zeros((3, 3))])
    assert math.isnan(mean_iou(np.zeros((3, 3), np.int64)))
