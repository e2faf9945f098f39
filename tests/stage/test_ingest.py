"""Training ingest: join, plan, decode + augment (against ovs.data.augment), assembly,
determinism, resume, and the Ray Data plan against the same plan evaluated in-process."""

import io
from collections import Counter

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from ovs.codecs import decode_label_png, encode_label_png
from ovs.data.augment import AugmentConfig, augment_pair, sample_crop
from ovs.data.ingest import (
    BatchAssembler,
    IngestConfig,
    augment_jpeg,
    crop_labels,
    decode_label,
    join_shard,
    plan_epoch,
    sample_rng,
)
from ovs.data.shards import list_shards
from pipelines.ingest import RankIngest
from tests.unit.test_shards import make_shard
from tools.bench.ingest import synthetic_jpeg, write_shards


def _cfg(**kw):
    base = {
        "augment": AugmentConfig(size=32, scale=(0.08, 1.0)),
        "batch_size": 8,
        "window_shards": 2,
        "chunk_rows": 5,
    }
    return IngestConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """4 shards x 12 samples of 96-px JPEGs with 12x12 pseudo-mask grids."""
    root = tmp_path_factory.mktemp("ingest")
    return write_shards(root, shards=4, per_shard=12, size=96, grid=12)


def _ingest(data, executor="local", **kw):
    shard_dir, masks, texts = data
    return RankIngest(list_shards(shard_dir), masks, texts, _cfg(**kw), seed=3, executor=executor)


def _take(it, n):
    return [next(it) for _ in range(n)]


def _same(a, b):
    assert (a.epoch, a.index, a.keys, a.texts, a.nouns) == (
        b.epoch,
        b.index,
        b.keys,
        b.texts,
        b.nouns,
    )
    assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)


# ----------------------------------------------------------------------------- augment


@pytest.mark.parametrize("grid_hw,image_hw", [((12, 12), (96, 96)), ((7, 9), (61, 83))])
def test_crop_labels_equals_augment_pair(grid_hw, image_hw):
    rng = np.random.default_rng(0)
    cfg = AugmentConfig(size=40, scale=(0.08, 1.0), hflip=0.0)
    for trial in range(20):
        grid = rng.integers(0, 8, grid_hw).astype(np.uint8)
        image = torch.zeros(3, *image_hw)
        _, want = augment_pair(
            image, torch.from_numpy(grid).long(), cfg, np.random.default_rng(trial)
        )
        box = sample_crop(*image_hw, cfg.scale, cfg.ratio, np.random.default_rng(trial))
        got = crop_labels(grid, image_hw, box, cfg.size)
        np.testing.assert_array_equal(got, want.numpy())


def test_augment_jpeg_matches_augment_pair():
    """Same generator state -> same crop box and flip as augment_pair on the full-resolution
    image: labels identical, pixels within resampling rounding (draft off)."""
    rng = np.random.default_rng(1)
    data = synthetic_jpeg(rng, 128)
    full = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
    grid = rng.integers(0, 8, (16, 16)).astype(np.uint8)
    cfg = AugmentConfig(size=48, scale=(0.08, 1.0), hflip=0.5)
    flips = 0
    for trial in range(16):
        want_img, want_lab = augment_pair(
            torch.from_numpy(full.copy()).permute(2, 0, 1),
            torch.from_numpy(grid).long(),
            cfg,
            np.random.default_rng(trial),
        )
        got = augment_jpeg(data, grid, cfg, np.random.default_rng(trial), "off")
        assert got is not None
        img, lab = got
        np.testing.assert_array_equal(lab, want_lab.numpy())
        diff = np.abs(img.astype(np.float32) - want_img.numpy() * 255)
        assert diff.mean() < 1.5 and np.percentile(diff, 99) < 8, (trial, diff.mean())
        draw = np.random.default_rng(trial)
        sample_crop(128, 128, cfg.scale, cfg.ratio, draw)
        flips += bool(draw.uniform() < cfg.hflip)
    assert 0 < flips < 16  # both the flipped and the unflipped path were compared


def test_augment_jpeg_draft_decodes_reduced_and_bad_bytes_give_none():
    rng = np.random.default_rng(2)
    data = synthetic_jpeg(rng, 256)
    grid = np.zeros((8, 8), np.uint8)
    cfg = AugmentConfig(size=32, scale=(0.9, 1.0), hflip=0.0)
    a = augment_jpeg(data, grid, cfg, np.random.default_rng(0), "image")
    b = augment_jpeg(data, grid, cfg, np.random.default_rng(0), "off")
    assert a is not None and b is not None and a[0].shape == (3, 32, 32)
    assert np.abs(a[0].astype(int) - b[0].astype(int)).mean() < 6  # same crop, 1/8 scale
    assert augment_jpeg(b"not a jpeg", grid, cfg, np.random.default_rng(0), "image") is None
    assert sample_rng(0, 1, "k").integers(1 << 30) == sample_rng(0, 1, "k").integers(1 << 30)
    assert sample_rng(0, 1, "k").integers(1 << 30) != sample_rng(0, 2, "k").integers(1 << 30)


# ----------------------------------------------------------------------------- join + plan


def test_join_shard_statuses(tmp_path):
    shards, masks, texts = (tmp_path / d for d in "smt")
    for d in (shards, masks, texts):
        d.mkdir()
    jpg = synthetic_jpeg(np.random.default_rng(0), 32)
    keys = [f"{i:09d}" for i in range(5)]
    make_shard(
        shards,
        "00000",
        [(k, {"jpg": jpg, "txt": "t"}) for k in keys[:4]] + [(keys[4], {"txt": "no image"})],
    )
    png = encode_label_png(np.zeros((4, 4), np.uint8))
    pq.write_table(
        pa.table({"key": keys[1:], "label_png": [png] * 4, "status": ["ok"] * 4}),
        masks / "00000.parquet",
    )
    pq.write_table(
        pa.table(
            {
                "key": keys,
                "text": ["a", "", "c", "d", "e"],
                "keep": [True, True, False, True, True],
                "status": ["ok"] * 5,
                "nouns": [["a"], [], ["c"], ["d"], ["e"]],
            }
        ),
        texts / "00000.parquet",
    )
    t = join_shard(shards / "00000.tar", masks, texts, require_keep=True)
    assert t.keys == keys
    assert list(t.status) == ["no_pseudo_mask", "no_text", "filtered_cc4m", "ok", "undecodable"]
    assert t.size[4] == 0 and t.size[3] == len(jpg)
    with open(t.path, "rb") as f:
        f.seek(int(t.offset[3]))
        assert f.read(int(t.size[3])) == jpg
    loose = join_shard(shards / "00000.tar", masks, texts, require_keep=False)
    assert list(loose.status)[2] == "ok" and loose.nouns[3] == ("d",)


def test_plan_is_a_windowed_permutation_and_resumes():
    sizes = [7, 5, 9, 6, 8]
    good = [np.arange(n) % 4 != 3 for n in sizes]  # every 4th sample bad
    counts = [Counter({"no_text": int((~g).sum())}) for g in good]
    shards = [f"/s/{i}.tar" for i in range(5)]
    cfg = _cfg(chunk_rows=4, window_shards=2)
    plan = plan_epoch(shards, good, counts, cfg, seed=1, rank=0, epoch=0)
    assert plan.rows == sum(int(g.sum()) for g in good)
    assert plan.counts["no_text"] == sum(c["no_text"] for c in counts)
    seen = []
    for c in plan.chunks:
        assert len(c.shards) <= 2 and len(c.sel) <= 4
        members = [int(p.split("/")[-1][:-4]) for p in c.shards]
        offsets = np.cumsum([0] + [sizes[m] for m in members])
        for r in c.sel:
            j = int(np.searchsorted(offsets, r, side="right")) - 1
            assert good[members[j]][r - offsets[j]]
            seen.append((members[j], r - offsets[j]))
    assert len(seen) == len(set(seen)) == plan.rows  # every usable row once
    assert [c.start for c in plan.chunks] == sorted(c.start for c in plan.chunks)
    again = plan_epoch(shards, good, counts, cfg, seed=1, rank=0, epoch=0)
    assert again.chunks == plan.chunks
    other = plan_epoch(shards, good, counts, cfg, seed=1, rank=0, epoch=1)
    assert other.chunks != plan.chunks
    stream = [(c.shards, r) for c in plan.chunks for r in c.sel]
    for skip in (0, 3, 13, plan.rows - 1):
        resumed = plan_epoch(shards, good, counts, cfg, seed=1, rank=0, epoch=0, skip_rows=skip)
        assert [(c.shards, r) for c in resumed.chunks for r in c.sel] == stream[skip:]
        assert resumed.chunks[0].start == skip


# ----------------------------------------------------------------------------- assemble


def _block(pos, ok, s=2):
    n = len(pos)
    return {
        "image": np.arange(n, dtype=np.uint8)[:, None, None, None]
        * np.ones((1, 3, s, s), np.uint8),
        "label": np.zeros((n, s, s), np.uint8),
        "ok": np.asarray(ok, bool),
        "pos": np.asarray(pos, np.int64),
        "key": np.array([f"k{p}" for p in pos], dtype=object),
        "text": np.array([f"t{p}" for p in pos], dtype=object),
        "nouns": np.array([[f"n{p}"] for p in pos] + [None], dtype=object)[:-1],
    }


def test_assembler_exact_batches_replaces_undecodable_and_checks_order():
    blocks = [_block([0, 1, 2], [1, 0, 1]), _block([3, 4, 5, 6], [0, 1, 1, 1]), _block([7], [1])]
    asm = BatchAssembler(3)
    out = list(asm.batches(blocks, epoch=2, first_pos=0, first_index=0))
    assert [b.index for b in out] == [0, 1]
    assert all(b.images.shape == (3, 3, 2, 2) and b.labels.dtype == torch.int64 for b in out)
    assert out[0].keys == ["k0", "k0", "k2"]  # undecodable row 1 -> previous good row
    assert out[1].keys == ["k4", "k4", "k5"]  # undecodable first row -> next good row
    assert asm.counts == Counter({"used": 4, "undecodable": 2, "epoch_remainder": 2})
    with pytest.raises(RuntimeError, match="out of order"):
        list(BatchAssembler(2).batches([_block([0, 1], [1, 1]), _block([3], [1])], 0, 0, 0))


# ----------------------------------------------------------------------------- end to end


def test_rank_ingest_deterministic_and_resumes_exactly(data):
    ingest = _ingest(data)
    assert ingest.rows == 48 and ingest.per_epoch == 6
    full = _take(ingest.batches(), 9)  # 1.5 epochs
    assert [(b.epoch, b.index) for b in full] == [(0, i) for i in range(6)] + [
        (1, 0),
        (1, 1),
        (1, 2),
    ]
    assert ingest.counts["used"] == 72
    keys0 = [k for b in full[:6] for k in b.keys]
    assert len(set(keys0)) == 48  # an epoch is a permutation of the usable samples
    assert set(full[6].keys) <= set(keys0) and full[6].keys != full[0].keys  # reshuffled
    again = _take(_ingest(data).batches(), 9)
    for a, b in zip(full, again, strict=True):
        _same(a, b)
    for start in (4, 6, 7):  # mid-epoch, at an epoch boundary, into the second epoch
        resumed = _take(_ingest(data).batches(start_step=start), 9 - start)
        for a, b in zip(full[start:], resumed, strict=True):
            _same(a, b)
    # augmentation depends on (seed, epoch, key): the same key in epoch 1 gets another crop
    b0 = {k: i for i, k in enumerate(full[0].keys)}
    k = next(k for k in full[6].keys if k in b0) if set(full[6].keys) & set(b0) else None
    if k is not None:
        assert not torch.equal(full[6].images[full[6].keys.index(k)], full[0].images[b0[k]])


def test_rank_ingest_counts_bad_samples(tmp_path):
    shard_dir, masks, texts = write_shards(tmp_path, shards=2, per_shard=10, size=64, grid=8)
    table = pq.read_table(masks / "00000.parquet").to_pylist()
    table[0]["label_png"] = None  # failed pseudo-mask
    pq.write_table(pa.Table.from_pylist(table), masks / "00000.parquet")
    # corrupt one JPEG in place (same length: offsets stay valid)
    t = join_shard(shard_dir / "00001.tar", masks, texts)
    with open(t.path, "r+b") as f:
        f.seek(int(t.offset[2]))
        f.write(b"\x00" * int(t.size[2]))
    ingest = RankIngest(
        list_shards(shard_dir), masks, texts, _cfg(batch_size=4), seed=0, executor="local"
    )
    assert ingest.rows == 19
    batches = list(ingest.epoch(0))
    assert len(batches) == 4 and all(b.images.shape[0] == 4 for b in batches)
    assert ingest.counts["no_pseudo_mask"] == 1
    assert ingest.counts["undecodable"] == 1
    assert ingest.counts["used"] == 15
    assert ingest.counts["epoch_remainder"] == 3


def test_ray_data_plan_equals_local(data, ray_local):
    local = _take(_ingest(data).batches(start_step=3), 5)
    ray_it = _ingest(data, executor="ray")
    remote = _take(ray_it.batches(start_step=3), 5)
    for a, b in zip(local, remote, strict=True):
        _same(a, b)
    assert ray_it.counts["used"] == 40


def _worker_loop(config):
    """Ray Train V2 worker: builds its own rank dataset (no ``datasets=``) and records keys."""
    import json
    from pathlib import Path

    import ray.train

    rank = ray.train.get_context().get_world_rank()
    shards, masks, texts = config["dirs"]
    ingest = RankIngest(list_shards(shards), masks, texts, _cfg(), seed=3, rank=rank)
    keys = [b.keys for b in _take(ingest.batches(start_step=1), 2)]
    Path(config["out"]).write_text(json.dumps({"keys": keys, "used": ingest.counts["used"]}))


def test_rank_dataset_inside_ray_train_worker(data, ray_local, tmp_path):
    import json

    import ray.train
    from ray.train.torch import TorchTrainer

    out = tmp_path / "keys.json"
    trainer = TorchTrainer(
        _worker_loop,
        train_loop_config={"dirs": [str(d) for d in data], "out": str(out)},
        scaling_config=ray.train.ScalingConfig(num_workers=1, resources_per_worker={"CPU": 1}),
        run_config=ray.train.RunConfig(name="ingest", storage_path=str(tmp_path / "ray")),
    )
    trainer.fit()
    got = json.loads(out.read_text())
    want = [b.keys for b in _take(_ingest(data).batches(start_step=1), 2)]
    assert got == {"keys": want, "used": 16}


def test_decode_label_equals_pil():
    grid = np.random.default_rng(0).integers(0, 8, (14, 9)).astype(np.uint8)
    png = encode_label_png(grid)
    np.testing.assert_array_equal(decode_label(png), decode_label_png(png))
    np.testing.assert_array_equal(decode_label(png), grid)
    assert decode_label(b"\x89PNG broken") is None
