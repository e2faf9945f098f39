"""Training samples: shard images joined by key with their pseudo-masks and caption texts.

Each Ray Train worker reads its own share of the shards (shard ``i`` goes to rank
``i % world_size``), so no two workers see the same sample in an epoch and no coordinator is
needed at 12M-sample scale. A sample missing its pseudo-mask or text (failed upstream), or
whose image does not decode, is skipped and counted, never fatal.
"""

from __future__ import annotations

import io
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
from PIL import Image

from ovs.codecs import decode_label_png, read_keyed
from ovs.data.shards import iter_shard_by_key, list_shards


@dataclass
class Sample:
    key: str
    image: np.ndarray  # uint8 [H, W, 3] at the training input size
    mask: np.ndarray  # uint8 [h, w] pseudo-mask labels at feature-grid resolution (0..K-1)
    text: str
    nouns: tuple[str, ...] = ()  # noun lemmas of the caption (entities stage), for noun prompts


@dataclass
class JoinStats:
    """Why samples were dropped while joining (kept in the train stage's manifest)."""

    counts: Counter = field(default_factory=Counter)

    def as_dict(self) -> dict[str, int]:
        return dict(self.counts)


def shards_for_rank(shard_dir: str | Path, rank: int, world_size: int) -> list[Path]:
    """The finished shards rank ``rank`` of ``world_size`` reads (round-robin by name)."""
    shards = list_shards(shard_dir)
    return shards[rank::world_size]


def decode_image(data: bytes, size: int) -> np.ndarray | None:
    """JPEG/PNG bytes → uint8 ``[size, size, 3]`` (bilinear), or None if undecodable."""
    im: Image.Image  # the opened file, then its RGB conversion
    try:
        with Image.open(io.BytesIO(data)) as im:
            im = im.convert("RGB")
            if im.size != (size, size):
                im = im.resize((size, size), Image.Resampling.BILINEAR)
            return np.asarray(im, dtype=np.uint8)
    except Exception:  # noqa: BLE001 - any decode failure is a bad sample, counted by caller
        return None


def decode_mask(png: bytes) -> np.ndarray | None:
    """A stored pseudo-mask (label PNG) -> uint8 ``[h, w]``, or None if undecodable."""
    try:
        return decode_label_png(png)
    except Exception:  # noqa: BLE001 - a corrupt mask is an undecodable sample, counted
        return None


def iter_samples(
    shards: list[Path],
    masks_dir: Path,
    texts_dir: Path,
    image_size: int,
    stats: JoinStats,
    require_keep: bool = False,
) -> Iterator[Sample]:
    """Yield joined samples from ``shards`` in order.

    ``masks_dir/<stem>.parquet`` holds ``key,label_png,status``; ``texts_dir/<stem>.parquet``
    holds ``key,text,keep,status`` (and ``nouns`` when present). With ``require_keep`` only samples that passed the CC4M
    entity filter are used.
    """
    for shard in shards:
        masks = read_keyed(masks_dir / f"{shard.stem}.parquet", ["key", "label_png", "status"])
        text_path = texts_dir / f"{shard.stem}.parquet"
        columns = ["key", "text", "keep", "status"]
        if "nouns" in pq.read_schema(text_path).names:
            columns.append("nouns")
        texts = read_keyed(text_path, columns)
        # Key order, not tar order: img2dataset writes a shard's members as their downloads
        # finish, which differs from run to run; the batches must not.
        for row in iter_shard_by_key(shard, members=("jpg",)):
            key = row["key"]
            m, t = masks.get(key), texts.get(key)
            if m is None or m.get("label_png") is None:
                stats.counts["no_pseudo_mask"] += 1
                continue
            if t is None or not t.get("text"):
                stats.counts["no_text"] += 1
                continue
            if require_keep and not t.get("keep"):
                stats.counts["filtered_cc4m"] += 1
                continue
            image = decode_image(row.get("jpg", b""), image_size)
            mask = decode_mask(m["label_png"])
            if image is None or mask is None:
                stats.counts["undecodable"] += 1
                continue
            stats.counts["used"] += 1
            yield Sample(key, image, mask, t["text"], tuple(t.get("nouns") or ()))


def write_gt_masks(shard_dir: str | Path, label_dir: str | Path, out_dir: str | Path) -> dict:
    """Ground-truth label maps in the pseudo-mask file format, for the supervised upper bound.

    For each finished shard, ``<out_dir>/<stem>.parquet`` gets ``key, label_png, status`` with
    the PNG of ``<label_dir>/<id>.png`` (the shard parquet's ``id`` column: the download stage
    keeps the synthetic world's sample id), so :func:`iter_samples` joins GT masks exactly as it
    joins pseudo-masks. Samples without a label file are written with ``status="no_label"``
    and no PNG (skipped and counted by the join). Returns counts.
    """
    import pyarrow as pa

    from ovs.io import atomic_write_parquet

    out_dir, label_dir = Path(out_dir), Path(label_dir)
    counts: Counter = Counter()
    for shard in list_shards(shard_dir):
        meta = pq.read_table(shard.with_suffix(".parquet"), columns=["key", "id", "status"])
        keys, pngs, status = [], [], []
        for row in meta.to_pylist():
            if row["status"] != "success":
                continue
            label = label_dir / f"{row['id']}.png"
            ok = row["id"] is not None and label.is_file()
            keys.append(row["key"])
            pngs.append(label.read_bytes() if ok else None)
            status.append("ok" if ok else "no_label")
            counts[status[-1]] += 1
        table = pa.table(
            {
                "key": pa.array(keys, pa.string()),
                "label_png": pa.array(pngs, pa.binary()),
                "status": pa.array(status, pa.string()),
            }
        )
        atomic_write_parquet(out_dir / f"{shard.stem}.parquet", table)
    return dict(counts)
