import io
import json
import tarfile

from ovs.data.shards import iter_shard, iter_shard_by_key, list_shards


def make_shard(directory, stem, samples, finished=True):
    with tarfile.open(directory / f"{stem}.tar", "w") as tar:
        for key, members in samples:
            for ext, payload in members.items():
                data = payload if isinstance(payload, bytes) else payload.encode()
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    if finished:
        (directory / f"{stem}_stats.json").write_text(json.dumps({"count": len(samples)}))


def test_list_and_iter(tmp_path):
    make_shard(
        tmp_path,
        "00000",
        [
            ("000000000", {"jpg": b"\xff\xd8x", "txt": "a cat", "json": "{}"}),
            ("000000001", {"jpg": b"y", "txt": "caf\xe9", "json": '{"a": 1}'}),
        ],
    )
    make_shard(tmp_path, "00001", [("000010000", {"txt": "partial"})], finished=False)
    shards = list_shards(tmp_path)
    assert [p.name for p in shards] == ["00000.tar"]  # unfinished shard never read
    rows = list(iter_shard(shards[0], members=("txt", "json")))
    assert [r["key"] for r in rows] == ["000000000", "000000001"]
    assert rows[0]["txt"] == "a cat" and "jpg" not in rows[0]
    assert rows[1]["json"] == {"a": 1} and rows[1]["txt"] == "café"
    full = list(iter_shard(shards[0]))
    assert full[0]["jpg"] == b"\xff\xd8x"


def test_iter_by_key_is_tar_iteration_in_key_order(tmp_path):
    """img2dataset writes samples as downloads finish: the key-ordered reader gives the same
    samples and members as the tar-order one, sorted by key, whatever the tar order."""
    samples = [
        (f"{k:09d}", {"jpg": f"img{k}".encode(), "txt": f"caption {k}", "json": f'{{"k": {k}}}'})
        for k in (7, 2, 9, 0, 5)
    ]
    make_shard(tmp_path, "00000", samples)
    shard = list_shards(tmp_path)[0]
    in_tar = list(iter_shard(shard, members=("jpg", "json")))
    by_key = list(iter_shard_by_key(shard, members=("jpg", "json")))
    assert [r["key"] for r in in_tar] == [k for k, _ in samples]  # tar order, not sorted
    assert by_key == sorted(in_tar, key=lambda r: r["key"])
    assert "txt" not in by_key[0] and by_key[0]["json"] == {"k": 0}
