"""The pseudo-label shards of S-Seg+: their row schema, the per-shard labeller that writes
them, and the one pass over them that the confidence rule and its diagnostics need.

A shard is one row group of the target list (``write_target_list``: ``id``, ``path``,
``index`` per target image); its table has one ``LABEL_SCHEMA`` row per image:
``label_png`` / ``conf_png`` (uint8 PNGs of the label map and the quantised confidence),
``gt_png`` (the target's ground truth when it has one, else empty) and ``status`` (``ok`` or
``bad_image``, with empty PNGs).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import torch

LABEL_SCHEMA = pa.schema(
    [
        ("key", pa.string()),
        ("image_path", pa.string()),
        ("label_png", pa.binary()),
        ("conf_png", pa.binary()),
        ("gt_png", pa.binary()),
        ("status", pa.string()),
    ]
)
STATUS_OK = "ok"
STATUS_BAD_IMAGE = "bad_image"


class PseudoLabeler:
    """The ``self_train`` stage's per-shard function: a shard's target images -> its
    ``LABEL_SCHEMA`` table.

    Loads the trained S-Seg once (in ``__init__``, one per Ray actor) on CUDA when there is
    one, and builds the text classifier of the dataset's class names under ``protocol``.
    ``targets`` is the target list (:func:`~ovs.selftrain.pseudo_labels.write_target_list`);
    the actor builds the target dataset (``target``; none for a plain image folder) to resolve
    the rows that carry an ``index``; the others are read from ``path``.
    """

    def __init__(
        self,
        checkpoint: str,
        target: Any,
        world_dir: str | None,
        targets: str,
        class_names: list[list[str]],
        has_background: bool,
        dataset_key: str,
        protocol: str,
        num_threads: int,
    ) -> None:
        from ovs.eval.method import load_trained
        from ovs.eval.protocol import build_classifier, get_protocol
        from ovs.selftrain.pseudo_labels import target_dataset

        torch.set_num_threads(max(1, num_threads))
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.method = load_trained(checkpoint, device)
        self.protocol = get_protocol(protocol)
        self.classifier = build_classifier(
            self.method, class_names, has_background, self.protocol, dataset_key
        )
        world = Path(world_dir) if world_dir else None
        self.dataset = None if target.image_dir else target_dataset(target, world, target.split)
        self.targets = targets

    def _one(self, ref: dict) -> dict:
        from ovs.codecs import png_bytes, read_image
        from ovs.selftrain.pseudo_labels import pseudo_label

        row = {"key": ref["id"], "image_path": ref["path"], "status": STATUS_OK}
        row.update(label_png=b"", conf_png=b"", gt_png=b"")
        try:
            if ref["index"] is not None and self.dataset is not None:
                sample = self.dataset[ref["index"]]
                image, gt = sample["image"], sample["label"]
            else:
                image, gt = read_image(ref["path"]), None
        except (OSError, ValueError):
            row["status"] = STATUS_BAD_IMAGE
            return row
        label, conf = pseudo_label(self.method, image, self.classifier, self.protocol)
        row.update(label_png=png_bytes(label), conf_png=png_bytes(conf))
        if gt is not None:
            row["gt_png"] = png_bytes(gt)
        return row

    def __call__(self, group: int) -> pa.Table:
        import pyarrow.parquet as pq

        refs = pq.ParquetFile(self.targets).read_row_group(group).to_pylist()
        rows = [self._one(r) for r in refs]
        return pa.table(
            {name: [r[name] for r in rows] for name in LABEL_SCHEMA.names}, schema=LABEL_SCHEMA
        )


def label_statistics(files: list[Path], num_classes: int) -> dict:
    """One pass over the shards: ``hist`` (int64 [C, 256], per-class confidence histograms),
    ``joint`` (the (pseudo-label, ground truth, confidence) histogram where the target has
    ground truth, else None) and the ``ok`` / ``bad`` image counts."""
    import pyarrow.parquet as pq

    from ovs.codecs import decode_label_png
    from ovs.selftrain.pseudo_labels import confidence_histogram, label_gt_histogram

    stats: dict = {"hist": np.zeros((num_classes, 256), dtype=np.int64), "joint": None}
    stats.update(ok=0, bad=0)
    for f in files:
        batches = pq.ParquetFile(f).iter_batches(batch_size=64, columns=LABEL_SCHEMA.names[2:])
        for r in (row for b in batches for row in b.to_pylist()):  # 64 rows in RAM at a time
            if r["status"] != STATUS_OK:
                stats["bad"] += 1
                continue
            stats["ok"] += 1
            label, conf = decode_label_png(r["label_png"]), decode_label_png(r["conf_png"])
            stats["hist"] += confidence_histogram(label, conf, num_classes)
            if r["gt_png"]:
                joint = label_gt_histogram(label, conf, decode_label_png(r["gt_png"]), num_classes)
                stats["joint"] = joint if stats["joint"] is None else stats["joint"] + joint
    return stats


def label_quality(stats: dict, thresholds: np.ndarray) -> dict[str, float]:
    """Pseudo-label mIoU / accuracy against the target split's ground truth, before and after
    the confidence rule (kept pixels only), and the kept fraction."""
    from ovs.eval.metrics import mean_iou, pixel_accuracy
    from ovs.selftrain.pseudo_labels import kept_confusion

    total = int(stats["hist"].sum())
    kept = sum(int(stats["hist"][c, t:].sum()) for c, t in enumerate(thresholds.tolist()))
    out = {"label_kept_fraction": kept / total if total else 0.0}
    if stats["joint"] is None:
        return out
    all_conf = kept_confusion(stats["joint"])
    kept_conf = kept_confusion(stats["joint"], thresholds)
    out.update(
        label_miou=mean_iou(all_conf),
        label_acc=pixel_accuracy(all_conf),
        label_kept_miou=mean_iou(kept_conf),
        label_kept_acc=pixel_accuracy(kept_conf),
    )
    return out
