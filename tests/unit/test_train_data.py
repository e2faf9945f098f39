import io

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from ovs.data.shards import list_shards
from ovs.data.train_data import JoinStats, iter_samples, shards_for_rank, write_gt_masks
from tests.unit.test_shards import make_shard


def _jpg(colour):
    buf = io.BytesIO()
    Image.fromarray(np.full((20, 20, 3), colour, np.uint8)).save(buf, format="JPEG")
    return buf.getvalue()


def _png(arr):
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def test_join_skips_and_counts(tmp_path):
    shards, masks, texts = tmp_path / "s", tmp_path / "m", tmp_path / "t"
    for d in (shards, masks, texts):
        d.mkdir()
    make_shard(
        shards,
        "00000",
        [
            ("000000000", {"jpg": _jpg(10), "txt": "a"}),
            ("000000001", {"jpg": _jpg(20), "txt": "b"}),
            ("000000002", {"jpg": b"not a jpeg", "txt": "c"}),
            ("000000003", {"jpg": _jpg(40), "txt": "d"}),
            ("000000004", {"jpg": _jpg(50), "txt": "e"}),
        ],
    )
    grid = np.arange(16, dtype=np.uint8).reshape(4, 4) % 8
    pq.write_table(
        pa.table(
            {
                "key": ["000000000", "000000001", "000000002", "000000004"],
                "label_png": [_png(grid)] * 4,
                "status": ["ok"] * 4,
            }
        ),
        masks / "00000.parquet",
    )
    pq.write_table(
        pa.table(
            {
                "key": ["000000000", "000000001", "000000002", "000000003", "000000004"],
                "text": ["cat", "dog", "x", "y", ""],
                "keep": [True, False, True, True, True],
                "status": ["ok"] * 5,
                "nouns": [["cat", "lawn"], [], ["x"], ["y"], []],
            }
        ),
        texts / "00000.parquet",
    )
    stats = JoinStats()
    got = list(iter_samples(shards_for_rank(shards, 0, 1), masks, texts, 16, stats))
    assert [s.key for s in got] == ["000000000", "000000001"]
    assert got[0].image.shape == (16, 16, 3) and np.array_equal(got[0].mask, grid)
    assert [s.nouns for s in got] == [("cat", "lawn"), ()]
    assert stats.as_dict() == {"used": 2, "undecodable": 1, "no_pseudo_mask": 1, "no_text": 1}
    stats = JoinStats()
    got = list(
        iter_samples(shards_for_rank(shards, 0, 1), masks, texts, 16, stats, require_keep=True)
    )
    assert [s.key for s in got] == ["000000000"] and stats.counts["filtered_cc4m"] == 1


def test_rank_split_is_a_partition(tmp_path):
    for i in range(5):
        make_shard(tmp_path, f"{i:05d}", [(f"{i:05d}0000", {"txt": "x"})])
    parts = [shards_for_rank(tmp_path, r, 2) for r in range(2)]
    names = sorted(p.name for part in parts for p in part)
    assert names == [f"{i:05d}.tar" for i in range(5)] and len(parts[0]) == 3


def test_gt_masks_join_like_pseudo_masks(tmp_path):
    shards, labels, out, texts = (tmp_path / d for d in ("s", "l", "gt", "t"))
    for d in (shards, labels, texts):
        d.mkdir()
    keys = ["000000000", "000000001", "000000002"]
    make_shard(shards, "00000", [(k, {"jpg": _jpg(10 * i), "txt": k}) for i, k in enumerate(keys)])
    pq.write_table(
        pa.table({"key": keys + ["000000003"], "id": ["a", "b", "c", "d"],
                  "status": ["success"] * 3 + ["failed_to_download"]}),
        shards / "00000.parquet",
    )  # fmt: skip
    lab_a = np.arange(64, dtype=np.uint8).reshape(8, 8) % 16
    Image.fromarray(lab_a).save(labels / "a.png")
    Image.fromarray(np.full((8, 8), 3, np.uint8)).save(labels / "b.png")  # "c" has no label
    counts = write_gt_masks(shards, labels, out)
    assert counts == {"ok": 2, "no_label": 1}
    pq.write_table(
        pa.table({"key": keys, "text": ["x"] * 3, "keep": [True] * 3, "status": ["ok"] * 3}),
        texts / "00000.parquet",
    )
    stats = JoinStats()
    got = {s.key: s.mask for s in iter_samples(list_shards(shards), out, texts, 8, stats)}
    assert set(got) == {"000000000", "000000001"} and stats.counts["no_pseudo_mask"] == 1
    np.testing.assert_array_equal(got["000000000"], lab_a)
