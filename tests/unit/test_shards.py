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


def _tar(path, fmt, members):
    with tarfile.open(path, "w", format=fmt) as tar:
        for name, data, kind in members:
            info = tarfile.TarInfo(name)
            if kind == "dir":
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            elif kind == "link":
                info.type, info.linkname = tarfile.SYMTYPE, "x"
                tar.addfile(info)
            else:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))


def test_shard_members_equal_tarfiles_reading_fast_or_not(tmp_path):
    """The direct ustar scan gives tarfile's names, offsets, sizes and kinds on every plain
    format, and hands anything else (long names, links) to tarfile."""
    import os

    from ovs.data.shards import _scan_ustar, shard_members

    plain = [
        (f"{i:09d}.{e}", os.urandom(i * 37 % 1500), "f") for i in range(20) for e in ("jpg", "txt")
    ]
    cases = {
        "pax": (tarfile.PAX_FORMAT, plain, True),
        "gnu": (tarfile.GNU_FORMAT, plain, True),
        "ustar": (tarfile.USTAR_FORMAT, plain, True),
        "dirs": (tarfile.PAX_FORMAT, [("d", b"", "dir"), ("d/0.jpg", b"abc", "f")], True),
        "prefix": (tarfile.USTAR_FORMAT, [("a" * 80 + "/" + "b" * 60 + ".jpg", b"xyz", "f")], True),
        "empty": (tarfile.PAX_FORMAT, [], True),
        "long_gnu": (tarfile.GNU_FORMAT, [("c" * 150 + ".jpg", b"xyz", "f")], False),
        "long_pax": (tarfile.PAX_FORMAT, [("\u00fc.jpg", b"1", "f")], False),
        "link": (tarfile.PAX_FORMAT, [("0.jpg", b"1", "f"), ("l", b"", "link")], False),
    }
    for name, (fmt, members, fast) in cases.items():
        path = tmp_path / f"{name}.tar"
        _tar(path, fmt, members)
        with tarfile.open(path, "r:") as tar:
            want = [(i.name, i.offset_data, i.size, i.isfile()) for i in tar.getmembers()]
        assert [tuple(m) for m in shard_members(path)] == want, name
        assert (_scan_ustar(path) is not None) == fast, name
    cut = tmp_path / "cut.tar"  # cut at a member boundary: no end marker, tarfile's message
    cut.write_bytes((tmp_path / "pax.tar").read_bytes()[: 512 + 512])
    assert _scan_ustar(cut) is None
