"""The ingest's fast paths against plain references, without Ray: the hand-read JPEG frame
header against PIL, batch assembly without re-concatenating blocks against one concatenation,
and several epochs in one block stream against one stream per epoch."""

import io
import itertools
from collections import Counter

import numpy as np
import pytest
import torch
from PIL import Image

from ovs.data.augment import AugmentConfig
from ovs.data.ingest import BatchAssembler, IngestConfig, jpeg_size
from ovs.data.shards import list_shards
from pipelines.ingest import RankIngest
from tools.bench.ingest import write_shards


def _jpeg(size: tuple[int, int], mode: str = "RGB", **save: object) -> bytes:
    rng = np.random.default_rng(sum(size))
    bands = {"RGB": 3, "L": 1, "CMYK": 4}[mode]
    pixels = rng.integers(0, 256, (size[1], size[0], bands), dtype=np.uint8)
    im = Image.fromarray(pixels[..., 0] if bands == 1 else pixels, mode)
    buf = io.BytesIO()
    im.save(buf, format="JPEG", **save)
    return buf.getvalue()


@pytest.mark.parametrize(
    ("size", "mode", "save"),
    [
        ((512, 384), "RGB", {}),
        ((37, 1001), "RGB", {"progressive": True}),
        ((640, 480), "L", {}),
        ((96, 64), "CMYK", {}),
        ((300, 200), "RGB", {"exif": Image.Exif().tobytes() + b"\x00" * 600, "quality": 50}),
        ((256, 256), "RGB", {"icc_profile": b"\x00" * 70000}),  # spans several APP2 segments
        ((65, 17), "RGB", {"subsampling": 0, "restart_marker_blocks": 1}),
    ],
)
def test_jpeg_size_equals_pil(size, mode, save):
    data = _jpeg(size, mode, **save)
    with Image.open(io.BytesIO(data)) as im:
        assert im.format == "JPEG"
        assert jpeg_size(data) == (im.width, im.height) == size


def test_jpeg_size_refuses_what_it_cannot_read():
    png = io.BytesIO()
    Image.new("RGB", (8, 8)).save(png, format="PNG")
    data = _jpeg((64, 48))
    assert jpeg_size(png.getvalue()) is None
    assert jpeg_size(b"") is None
    assert jpeg_size(data[:20]) is None  # truncated before the frame header
    assert jpeg_size(b"\xff\xd8\xff\xda\x00\x02") is None  # a scan before any frame


def _block(pos: list[int], rng: np.random.Generator) -> dict[str, np.ndarray]:
    n = len(pos)
    return {
        "image": rng.integers(0, 256, (n, 3, 4, 4), dtype=np.uint8),
        "label": rng.integers(0, 9, (n, 4, 4), dtype=np.uint8),
        "ok": np.ones(n, bool),
        "epoch": np.zeros(n, np.int64),
        "pos": np.asarray(pos, np.int64),
        "key": np.array([f"k{p}" for p in pos], dtype=object),
        "text": np.array([f"t{p}" for p in pos], dtype=object),
        "nouns": np.array([["n"] for _ in pos] + [None], dtype=object)[:-1],
    }


@pytest.mark.parametrize("sizes", [[7, 7, 7], [1, 2, 9, 3, 1], [20], [3, 3, 3, 3, 3, 3, 3]])
def test_assembler_batches_equal_one_concatenation(sizes):
    rng = np.random.default_rng(len(sizes))
    starts = np.cumsum([0, *sizes])
    blocks = [_block(list(range(a, b)), rng) for a, b in itertools.pairwise(starts)]
    whole = {k: np.concatenate([b[k] for b in blocks]) for k in blocks[0]}
    before = [b["image"].copy() for b in blocks]
    asm = BatchAssembler(4)
    out = list(asm.batches(blocks, epoch=0, first_pos=0, first_index=0))
    assert len(out) == sum(sizes) // 4
    for i, batch in enumerate(out):
        rows = slice(4 * i, 4 * i + 4)
        assert torch.equal(batch.images, torch.from_numpy(whole["image"][rows]))
        assert torch.equal(batch.labels, torch.from_numpy(whole["label"][rows].astype(np.int64)))
        assert batch.keys == list(whole["key"][rows])
        batch.images.zero_()  # a batch owns its pixels: the blocks are untouched
    assert all(np.array_equal(b["image"], a) for a, b in zip(before, blocks, strict=True))
    assert asm.counts == Counter({"used": 4 * len(out), "epoch_remainder": sum(sizes) % 4})


def test_epochs_in_one_dataset_equal_one_dataset_per_epoch(tmp_path):
    shard_dir, masks, texts = write_shards(tmp_path, shards=3, per_shard=10, size=48, grid=12)

    def ingest(dataset_rows: int) -> RankIngest:
        cfg = IngestConfig(
            augment=AugmentConfig(size=16, scale=(0.08, 1.0)),
            batch_size=4,
            window_shards=2,
            chunk_rows=3,
            dataset_rows=dataset_rows,
        )
        return RankIngest(list_shards(shard_dir), masks, texts, cfg, seed=5, executor="local")

    grouped, single = ingest(50), ingest(1)  # 2 epochs per dataset, 1
    assert grouped.per_epoch == 7  # 30 rows: 2 remainder rows dropped per epoch
    for start in (0, 5, 7):
        it_a, it_b = grouped.batches(start), single.batches(start)
        a = [next(it_a) for _ in range(16)]
        b = [next(it_b) for _ in range(16)]
        for x, y in zip(a, b, strict=True):
            assert (x.epoch, x.index, x.keys) == (y.epoch, y.index, y.keys)
            assert torch.equal(x.images, y.images) and torch.equal(x.labels, y.labels)
        assert [x.epoch * 7 + x.index for x in a] == list(range(start, start + 16))
    assert grouped.counts == single.counts
