"""Cross-image pairs and entity frequencies against plain-Python references."""

from __future__ import annotations

import time
import zlib
from collections import Counter
from collections.abc import Callable

import numpy as np
import pyarrow as pa
import pytest

from ovs.text.cross_image import (
    PAIRS_SCHEMA,
    bucket_count,
    build_pairs,
    count_entities,
    entity_frequency,
    write_pairs,
)

CLASSES = ["dog", "cat", "people", "car", "tv", "sofa", "bus", "kite"]


def _table(n: int, seed: int) -> pa.Table:
    rng = np.random.default_rng(seed)
    keys = [f"{i:09d}" for i in rng.permutation(n)]
    ents = []
    for _ in range(n):
        k = rng.integers(0, 4)
        ents.append(list(dict.fromkeys(rng.choice(CLASSES, k, p=_P).tolist())))
    return pa.table({"key": keys, "entities": ents, "keep": [bool(e) for e in ents]})


_P = np.array([30, 20, 20, 10, 8, 6, 5, 1], float) / 100


def _reference(shards: list[tuple[str, pa.Table]], n: int, seed: int) -> dict[str, list]:
    """Plain-Python pairs with the same draws: per shard (generator seeded by its name), rows
    in key order, a uniform shareable entity, then the holder at rank ``floor(u * others)``
    among the entity's other holders in (shard name, key) order; repeats dropped, partners in
    key order."""
    kept = {}
    for _, t in shards:
        for r in t.to_pylist():
            if r.get("keep", True):
                kept[r["key"]] = list(dict.fromkeys(e for e in r["entities"] if e is not None))
    holders: dict[str, list[str]] = {}
    for _, t in sorted(shards, key=lambda s: s[0]):
        for k in sorted(r["key"] for r in t.to_pylist() if r.get("keep", True)):
            for e in kept[k]:
                holders.setdefault(e, []).append(k)
    out = {}
    for name, t in shards:
        keys = sorted(r["key"] for r in t.to_pylist() if r.get("keep", True))
        rng = np.random.default_rng([seed, zlib.crc32(name.encode())])
        pick, u = rng.random((len(keys), n)), rng.random((len(keys), n))
        for i, k in enumerate(keys):
            ents = [e for e in kept[k] if len(holders[e]) >= 2]
            got: dict[str, str] = {}
            for j in range(n if ents else 0):
                e = ents[int(np.floor(pick[i, j] * len(ents)))]
                others = [h for h in holders[e] if h != k]
                got.setdefault(others[int(np.floor(u[i, j] * len(others)))], e)
            out[k] = sorted(got.items())
    return out


def _shards(n_shards: int, per: int, seed: int) -> list[tuple[str, pa.Table]]:
    t = _table(n_shards * per, seed)
    return [(f"{s:05d}", t.slice(s * per, per)) for s in range(n_shards)]


def _named(shards: list[tuple[str, pa.Table]]) -> list[tuple[str, Callable[[], pa.Table]]]:
    return [(name, lambda t=t: t) for name, t in shards]


@pytest.mark.parametrize("bucket_rows", [1 << 18, 7])
def test_pairs_over_shards_and_buckets_match_the_python_reference(tmp_path, bucket_rows) -> None:
    shards = _shards(4, 50, 5)
    parts: list[pa.Table] = []
    counts = write_pairs(
        _named(shards), parts.append, tmp_path, n=4, seed=2, rows=200, bucket_rows=bucket_rows
    )
    assert len(parts) == bucket_count(200, bucket_rows)
    got = {
        r["key"]: list(zip(r["partner_keys"], r["shared_entity"], strict=True))
        for p in parts
        for r in p.to_pylist()
    }
    assert got == _reference(shards, n=4, seed=2)
    assert counts == count_entities(_named(shards))
    # the shards' order does not matter (ranks follow their names; each draws from its own
    # name's generator)
    again: list[pa.Table] = []
    write_pairs(_named(shards[::-1]), again.append, tmp_path / "b", 4, 2, 200, bucket_rows)
    assert pa.concat_tables(again).equals(pa.concat_tables(parts))


def test_a_key_on_two_shards_is_refused(tmp_path) -> None:
    a = pa.table({"key": ["a", "b"], "entities": [["dog"], ["cat"]]})
    b = pa.table({"key": ["c", "a"], "entities": [["dog"], ["bus"]]})
    for bucket_rows in (1 << 18, 1):
        with pytest.raises(ValueError, match="duplicate"):
            write_pairs(
                _named([("x", a), ("y", b)]), lambda t: None, tmp_path / str(bucket_rows), 3, 0,
                4, bucket_rows,
            )  # fmt: skip


def test_entity_frequency() -> None:
    t = _table(400, 1)
    ref = Counter(e for r in t.to_pylist() for e in r["entities"])
    f = entity_frequency(t).to_pylist()
    assert {r["entity"]: r["count"] for r in f} == dict(ref)
    assert [r["count"] for r in f] == sorted(ref.values(), reverse=True)
    dup = pa.table({"key": ["a", "b"], "entities": [["dog", "dog"], ["dog"]]})
    assert entity_frequency(dup).to_pylist() == [{"entity": "dog", "count": 2}]


def test_pairs_are_valid_and_deterministic() -> None:
    t = _table(600, 2)
    n = 5
    pairs = build_pairs(t, n=n, seed=3)
    assert pairs.schema == PAIRS_SCHEMA
    ents = {r["key"]: set(r["entities"]) for r in t.to_pylist() if r["keep"]}
    holders = Counter(e for es in ents.values() for e in es)
    rows = pairs.to_pylist()
    assert [r["key"] for r in rows] == sorted(ents)
    for r in rows:
        k, partners, shared = r["key"], r["partner_keys"], r["shared_entity"]
        assert len(partners) == len(shared) <= n
        assert len(set(partners)) == len(partners) and k not in partners
        for p, e in zip(partners, shared, strict=True):
            assert e in ents[k] and e in ents[p]
        can_pair = any(holders[e] >= 2 for e in ents[k])
        assert bool(partners) == can_pair
    # order of rows / shards does not matter, the seed does
    shuffled = t.take(np.random.default_rng(9).permutation(t.num_rows))
    assert build_pairs(shuffled, n=n, seed=3).equals(pairs)
    halves = pa.concat_tables([t.slice(300), t.slice(0, 300)])
    assert build_pairs(halves, n=n, seed=3).equals(pairs)
    assert not build_pairs(t, n=n, seed=4).equals(pairs)


def test_pairs_sampling_is_uniform_over_holders() -> None:
    # "a" shares "dog" with b, c, d (and "kite" with nobody): each partner equally likely
    t = pa.table(
        {
            "key": ["a", "b", "c", "d", "e"],
            "entities": [["dog", "kite"], ["dog"], ["dog"], ["dog"], ["cat"]],
        }
    )
    seen: Counter[str] = Counter()
    for seed in range(300):
        row = build_pairs(t, n=1, seed=seed).to_pylist()[0]
        assert row["shared_entity"] == ["dog"]
        seen.update(row["partner_keys"])
    assert set(seen) == {"b", "c", "d"} and min(seen.values()) > 70
    e_row = build_pairs(t, n=3, seed=0).to_pylist()[4]
    assert e_row == {"key": "e", "partner_keys": [], "shared_entity": []}


def test_edge_cases() -> None:
    empty = pa.table(
        {"key": pa.array([], pa.string()), "entities": pa.array([], pa.list_(pa.string()))}
    )
    assert build_pairs(empty, 3).num_rows == 0 and entity_frequency(empty).num_rows == 0
    dropped = pa.table({"key": ["a", "b"], "entities": [["dog"], ["dog"]], "keep": [True, False]})
    assert build_pairs(dropped, 3).to_pylist() == [
        {"key": "a", "partner_keys": [], "shared_entity": []}
    ]
    with pytest.raises(ValueError, match="duplicate"):
        build_pairs(pa.table({"key": ["a", "a"], "entities": [["dog"], ["dog"]]}), 2)


def test_scales_to_many_rows() -> None:
    n = 300_000
    rng = np.random.default_rng(0)
    counts = rng.integers(1, 4, n)
    flat = rng.choice(len(CLASSES) * 9, counts.sum())  # 72 classes, like CC4M's 73
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int32)
    ents = pa.ListArray.from_arrays(pa.array(offsets), pa.array([f"e{x}" for x in flat]))
    t = pa.table({"key": pa.array([f"{i:09d}" for i in rng.permutation(n)]), "entities": ents})
    t0 = time.perf_counter()
    pairs = build_pairs(t, n=10, seed=0)
    assert time.perf_counter() - t0 < 20
    assert pairs.num_rows == n
    lens = np.diff(pairs.column("partner_keys").combine_chunks().offsets.to_numpy())
    assert lens.min() >= 1 and lens.mean() > 9


def test_a_frequent_entity_is_spread_over_all_buckets(tmp_path) -> None:
    # "dog" on every sample: bucketing by entity alone would put all its holders and every
    # request in one bucket (the dataset's size); by (entity, rank) each bucket gets a share
    n, per = 2000, 250
    t = pa.table({"key": [f"{i:06d}" for i in range(n)], "entities": [["dog"]] * n})
    shards = [(f"{s:03d}", t.slice(s * per, per)) for s in range(n // per)]
    write_pairs(_named(shards), lambda p: None, tmp_path, n=4, seed=0, rows=n, bucket_rows=200)
    for kind, total in (("holders", n), ("requests", 4 * n)):
        files = [pa.ipc.open_file(p) for p in sorted(tmp_path.glob(f"{kind}-*.arrow"))]
        assert len(files) == n // per and all(f.num_record_batches == 10 for f in files)
        rows = [sum(f.get_batch(b).num_rows for f in files) for b in range(10)]
        assert sum(rows) == total
        assert max(rows) <= 1.2 * total / 10, (kind, rows)


def test_two_shards_of_one_name_are_refused(tmp_path) -> None:
    a = pa.table({"key": ["a"], "entities": [["dog"]]})
    b = pa.table({"key": ["b"], "entities": [["dog"]]})
    with pytest.raises(ValueError, match="one name"):
        write_pairs(_named([("x", a), ("x", b)]), lambda t: None, tmp_path, 2, 0, 2)
