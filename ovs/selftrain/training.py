"""S-Seg+ training pieces that do not depend on Ray: the ``self_train`` section and its batches
(the segmenter's model, objective and optimiser recipe are :mod:`ovs.methods.segmenter`).

The distributed loop (Ray Train workers, DDP, checkpoints, MLflow from rank 0) is
``pipelines/loop.py``, driven by ``pipelines/self_train.py``'s task; everything here is
single-process and unit-tested.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, overload

import numpy as np
import torch

from ovs.codecs import decode_label_png, read_image
from ovs.data.augment import AugmentConfig, augment_pair
from ovs.methods.segmenter.config import SegmenterConfig, paper_segmenter
from ovs.selftrain.pseudo_labels import (
    PseudoLabelConfig,
    TargetConfig,
    apply_confidence_rule,
)
from ovs.train.loop_config import LoopConfig

# Paper iterations per target dataset (S-Seg Table 6 setup: 20k / 40k / 80k).
PAPER_STEPS = {"voc21": 20000, "voc20": 20000, "context60": 40000, "context59": 40000}
PAPER_STEPS["coco_object"] = 80000


@dataclass
class SelfTrainConfig(LoopConfig):
    """The ``self_train`` stage (S-Seg+). Defaults: the tiny CPU recipe for the synthetic world
    (half-width ResNet-18 + 64-channel UperNet from scratch, 1000 steps of 16 = 1.6 epochs of
    the 10k world images; ~6 min on 2 cores including labelling and evaluation). Measured on the
    default S-Seg (mIoU 0.378): ignore_quantile 0.2 / 0.5 / 0.7 gave 0.399 / 0.423-0.435 / 0.430;
    1500 steps no better than 1000; lr 5e-4 worse than 1e-3; S-Seg backbone init no better.

    Paper (:func:`paper_self_train`): UperNet on an MAE ViT-B/16 (blocks 4/6/8/12), AdamW lr
    1e-4, wd 0.05, batch 16, poly decay (power 1) after 1.5k linear warm-up iterations,
    20k/40k/80k iterations for VOC/Context/COCO, layer-wise lr decay 0.7, 512 crops.
    """

    SECTION: ClassVar[str] = "self_train"

    target: TargetConfig = field(default_factory=TargetConfig)
    # Evaluation protocol used both to pseudo-label and to evaluate S-Seg+ (and S-Seg again, for
    # the side-by-side numbers); "" = train.eval_protocol, what S-Seg was scored with.
    protocol: str = ""
    label: PseudoLabelConfig = field(default_factory=PseudoLabelConfig)
    model: SegmenterConfig = field(default_factory=SegmenterConfig)
    # Start the backbone from S-Seg's own image backbone (same timm architecture needed): the
    # label-free pretraining available offline, in place of the paper's MAE weights.
    init_from_sseg: bool = False
    augment: AugmentConfig = field(default_factory=lambda: AugmentConfig(scale=(0.35, 1.0)))
    # The LoopConfig defaults are this recipe's: 1 CPU per worker (fastest on a shared 2-core
    # box), no gradient clipping and poly decay to 0 (mmseg's UperNet).
    layer_decay: float = 1.0  # lr scale decay ** (L - layer) for backbone layers (paper 0.7)
    poly_power: float = 1.0  # the schedule: warm-up, then (1 - t) ** poly_power
    # Decode every image and label map of the rank into RAM once (small datasets); false:
    # images read and label PNGs decoded per batch (LabelStore), RAM flat in the data.
    cache_in_memory: bool = True
    eval_limit: int | None = None  # evaluate on the first N held-out images (None = all)


def paper_self_train(dataset: str, root: str) -> SelfTrainConfig:
    """The paper's S-Seg+ recipe for a benchmark (``voc21``, ``context60``, ``coco_object``)."""
    return SelfTrainConfig(
        target=TargetConfig(dataset=dataset, root=root, split="train"),
        protocol="mask_free",
        label=PseudoLabelConfig(num_actors=8, num_cpus=4, num_gpus=1),
        model=paper_segmenter(),
        augment=AugmentConfig(size=512, scale=(0.25, 1.0)),
        num_workers=8,
        cpus_per_worker=4,
        use_gpu=True,
        batch_size=2,  # x 8 workers = 16
        steps=PAPER_STEPS.get(dataset, 40000),
        warmup_steps=1500,
        lr=1e-4,
        layer_decay=0.7,
        weight_decay=0.05,
        log_every=50,
        checkpoint_every=2000,
    )


# ----------------------------------------------------------------------------- data


class LabelStore:
    """Rows streamed from pseudo-label shards (``cache_in_memory: false``), kept out of RAM:
    the rank's shards are read one at a time and each ``ok`` row's key, image path,
    ``label_png`` and ``conf_png`` bytes are appended to an anonymous temp file; RAM holds four
    int64 offsets per row (32 bytes; 3.8 MB for COCO's 118k images). :meth:`row` rebuilds a
    :class:`LabelledRow` and :meth:`read` decodes its label pair and applies the confidence
    rule, per batch; reads are ``os.pread`` (no mmap, so touched pages are not the process's
    RSS)."""

    FIELDS = 4  # key, image path, label PNG, confidence PNG

    def __init__(self, thresholds: np.ndarray) -> None:
        from array import array

        self.thresholds = np.asarray(thresholds)
        self._file = tempfile.TemporaryFile(prefix="ovs-labels-")
        self._starts = array("q")  # byte offset of each field of each row, row-major
        self._end = 0
        self._offsets: np.ndarray | None = None  # int64 [n + 1, FIELDS] once :meth:`seal`-ed

    def append(self, key: str, image_path: str, label_png: bytes, conf_png: bytes) -> int:
        """Store one row; returns its index."""
        for part in (key.encode(), image_path.encode(), label_png, conf_png):
            self._file.write(part)
            self._starts.append(self._end)
            self._end += len(part)
        return len(self._starts) // self.FIELDS - 1

    def __len__(self) -> int:
        return len(self._starts) // self.FIELDS if self._offsets is None else len(self._offsets) - 1

    def seal(self) -> None:
        """Done appending: the offsets become one int64 array."""
        self._file.flush()
        flat = np.frombuffer(self._starts, dtype=np.int64)
        self._offsets = np.concatenate([flat, np.full(self.FIELDS, self._end)]).reshape(
            -1, self.FIELDS
        )
        del self._starts

    def _fields(self, index: int, first: int, last: int) -> list[bytes]:
        assert self._offsets is not None, "LabelStore read before seal"
        bounds = [int(v) for v in self._offsets[index]] + [int(self._offsets[index + 1, 0])]
        data = os.pread(self._file.fileno(), bounds[last + 1] - bounds[first], bounds[first])
        base = bounds[first]
        return [data[bounds[i] - base : bounds[i + 1] - base] for i in range(first, last + 1)]

    def row(self, index: int) -> LabelledRow:
        """Row ``index`` (its label map is read from this store when asked for)."""
        key, path = self._fields(index, 0, 1)
        return LabelledRow(key.decode(), path.decode(), None, None, self, index)

    def read(self, index: int) -> np.ndarray:
        """Row ``index``'s label map after the confidence rule (``uint8[H, W]``, 255 = ignore)."""
        label, conf = self._fields(index, 2, 3)
        return apply_confidence_rule(
            decode_label_png(label), decode_label_png(conf), self.thresholds
        )

    def close(self) -> None:
        self._file.close()


class StoredRows(Sequence["LabelledRow"]):
    """The rows of a sealed :class:`LabelStore` as a read-only sequence: ``rows[i]`` is built
    from the store when indexed, so a rank's RAM does not grow with its row count."""

    def __init__(self, store: LabelStore) -> None:
        self.store = store

    def __len__(self) -> int:
        return len(self.store)

    @overload
    def __getitem__(self, index: int) -> LabelledRow: ...
    @overload
    def __getitem__(self, index: slice) -> list[LabelledRow]: ...
    def __getitem__(self, index: int | slice) -> LabelledRow | list[LabelledRow]:
        if isinstance(index, slice):
            return [self.store.row(i) for i in range(*index.indices(len(self)))]
        n = len(self)
        if not -n <= index < n:
            raise IndexError(index)
        return self.store.row(int(index) % n)


@dataclass
class LabelledRow:
    """One pseudo-labelled image: path + its label map after the confidence rule, in RAM
    (``label``) or read per batch from ``store`` (row ``index``)."""

    key: str
    image_path: str
    label: np.ndarray | None  # uint8[H, W], 255 = ignore; None = in ``store``
    image: np.ndarray | None = None  # decoded once when caching in memory
    store: LabelStore | None = None
    index: int = -1

    def label_map(self) -> np.ndarray:
        """The label map (``uint8[H, W]``, 255 = ignore), decoded now if it is in a store."""
        if self.label is not None:
            return self.label
        assert self.store is not None
        return self.store.read(self.index)


SHARD_COLUMNS = ["key", "image_path", "label_png", "conf_png", "status"]


def load_rows(
    shard_files: list[Path], thresholds: np.ndarray, cache_images: bool
) -> tuple[Sequence[LabelledRow], dict[str, int]]:
    """Read pseudo-label shards (``key, image_path, label_png, conf_png, status``), apply the
    confidence rule; rows without a label or with an unreadable image are skipped, counted.

    ``cache_images`` (``cache_in_memory: true``): every image and label map decoded into RAM
    now. Else the rows stream: keys, paths and label PNG pairs in a :class:`LabelStore` (RAM:
    32 bytes per row), read and decoded per batch, one shard's table in memory at a time; the same
    rows, counts and label maps (images are read per batch either way)."""
    if not cache_images:
        return _stream_rows(shard_files, thresholds)
    import pyarrow.parquet as pq

    rows: list[LabelledRow] = []
    counts = {"rows": 0, "used": 0, "skipped_status": 0, "skipped_image": 0}
    for path in shard_files:
        table = pq.read_table(path, columns=SHARD_COLUMNS)
        for r in table.to_pylist():
            counts["rows"] += 1
            if r["status"] != "ok":
                counts["skipped_status"] += 1
                continue
            label = apply_confidence_rule(
                decode_label_png(r["label_png"]), decode_label_png(r["conf_png"]), thresholds
            )
            try:
                image = read_image(r["image_path"])
            except (OSError, ValueError):
                counts["skipped_image"] += 1
                continue
            rows.append(LabelledRow(r["key"], r["image_path"], label, image))
            counts["used"] += 1
    return rows, counts


def _stream_rows(
    shard_files: list[Path], thresholds: np.ndarray
) -> tuple[StoredRows, dict[str, int]]:
    """:func:`load_rows` without the cache: every ``ok`` row into a :class:`LabelStore`, shard by
    shard (row group by row group), nothing decoded."""
    import pyarrow.parquet as pq

    store = LabelStore(thresholds)
    counts = {"rows": 0, "used": 0, "skipped_status": 0, "skipped_image": 0}
    for path in shard_files:
        shard = pq.ParquetFile(path)
        for group in range(shard.num_row_groups):
            table = shard.read_row_group(group, columns=SHARD_COLUMNS)
            cols = {c: table.column(c).to_pylist() for c in ("key", "image_path", "status")}
            labels, confs = table.column("label_png"), table.column("conf_png")
            for i, status in enumerate(cols["status"]):
                counts["rows"] += 1
                if status != "ok":
                    counts["skipped_status"] += 1
                    continue
                store.append(
                    cols["key"][i], cols["image_path"][i], labels[i].as_py(), confs[i].as_py()
                )
                counts["used"] += 1
            del table, labels, confs, cols
    store.seal()
    return StoredRows(store), counts


class BatchStream:
    """Endless augmented batches ``(images [B,3,S,S] float in [0,1], labels [B,S,S] int64)``
    from per-epoch permutations of ``rows`` (images read from disk when not cached).

    One ``numpy`` generator draws the permutations and the augmentations. :meth:`state_dict`
    (the generator's state, the epoch's permutation and the position in it, plain values and
    tensors only) taken after a batch resumes the stream exactly at the next one.
    """

    def __init__(
        self,
        rows: Sequence[LabelledRow],
        batch_size: int,
        augment: AugmentConfig,
        rng: np.random.Generator,
    ) -> None:
        if not rows:
            raise RuntimeError("no pseudo-labelled rows to train on")
        self.rows, self.batch_size, self.augment, self.rng = rows, batch_size, augment, rng
        self._perm: np.ndarray | None = None
        self._pos = 0

    def state_dict(self) -> dict:
        perm = None if self._perm is None else torch.from_numpy(self._perm.astype(np.int64))
        return {"rng": self.rng.bit_generator.state, "perm": perm, "pos": self._pos}

    def load_state_dict(self, state: dict) -> None:
        self.rng.bit_generator.state = state["rng"]
        perm = state["perm"]
        self._perm = None if perm is None else perm.numpy()
        self._pos = int(state["pos"])

    def __iter__(self) -> BatchStream:
        return self

    def __next__(self) -> tuple[torch.Tensor, torch.Tensor]:
        step = min(self.batch_size, len(self.rows))
        while True:
            if self._perm is None or self._pos + step > len(self._perm):
                self._perm, self._pos = self.rng.permutation(len(self.rows)), 0
            chosen = self._perm[self._pos : self._pos + step]
            self._pos += step
            images, labels = [], []
            for j in chosen:
                row = self.rows[j]
                try:
                    image = row.image if row.image is not None else read_image(row.image_path)
                except (OSError, ValueError):  # vanished/corrupt since labelling: skip it
                    continue
                img = torch.from_numpy(image).permute(2, 0, 1)
                lab = torch.from_numpy(row.label_map().astype(np.int64))
                img, lab = augment_pair(img, lab, self.augment, self.rng)
                images.append(img)
                labels.append(lab)
            if images:
                return torch.stack(images), torch.stack(labels)


def batches(
    rows: Sequence[LabelledRow], batch_size: int, augment: AugmentConfig, rng: np.random.Generator
) -> BatchStream:
    """The :class:`BatchStream` over ``rows`` (raises ``RuntimeError`` when there are none)."""
    return BatchStream(rows, batch_size, augment, rng)
