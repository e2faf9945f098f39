"""Cross-image pairs (OVSegmentor): samples that share an entity, and entity frequencies, built
in memory bounded by a bucket of rows, not by the dataset.

Input is a sequence of per-shard entity tables (``key`` + ``entities`` list column, optionally
``keep``), read twice. Sampling, per kept sample and partner slot: pick one of the sample's
entities that some other kept sample also has, then a uniformly random *other* kept sample of
that entity (as OVSegmentor's ``construct_crossimage``, minus self-pairs); repeated partners are
dropped, so a sample gets up to ``n`` distinct partners, listed in key order.

No pass holds more than one shard or one bucket (:func:`bucket_count`: about
``bucket_rows`` samples each) of per-sample rows, in four passes over files in ``work_dir``:

1. per shard: count every entity over kept samples (a dict the size of the vocabulary), write
   the ``(entity, key)`` rows to entity buckets (``crc32(entity) % B``) and each kept key to
   its key bucket (``crc32(key) % B``);
2. per shard, with the global counts: draw each sample's ``n`` (entity, rank fraction)
   requests (the generator seeded by ``(seed, crc32(shard name))``, rows in key order) and
   write them to the entity's bucket;
3. per entity bucket: sort its rows by (entity, key) and resolve every request to the partner
   at that rank among the entity's other members; write the answers to the requester's key
   bucket;
4. per key bucket: group by key, drop repeated partners, and yield ``PAIRS_SCHEMA`` rows
   (samples nobody shares an entity with get empty lists).

The largest bucket of pass 3 holds the most frequent entity's whole member list (a fraction of
the dataset: at CC12M scale "man" or "people" is a few percent of the captions). The result
depends on the shards' contents and names and the seed, not on ``bucket_rows`` or machine.
"""

from __future__ import annotations

import itertools
import tempfile
import zlib
from collections import Counter
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

BUCKET_ROWS = 1 << 18  # samples per bucket, about (``entities.pairs_bucket_rows``)

PAIRS_SCHEMA = pa.schema(
    [
        ("key", pa.string()),
        ("partner_keys", pa.list_(pa.string())),
        ("shared_entity", pa.list_(pa.string())),
    ]
)
_ENTITY_ROWS = pa.schema([("entity", pa.string()), ("key", pa.string())])
_KEYS = pa.schema([("key", pa.string())])
_REQUESTS = pa.schema(
    [("entity", pa.string()), ("key", pa.string()), ("slot", pa.int32()), ("u", pa.float64())]
)
_ANSWERS = pa.schema(
    [("key", pa.string()), ("partner", pa.string()), ("slot", pa.int32()), ("entity", pa.string())]
)

# A zero-argument callable giving ``(shard name, entity table)`` pairs; called once per pass.
Shards = Callable[[], Iterable[tuple[str, pa.Table]]]


def kept_rows(table: pa.Table) -> pa.Table:
    """``key`` + ``entities`` of the kept rows (``keep`` true; all rows without the column) in
    key order, each entity list without nulls and repeats (first occurrence order)."""
    t = table.select(["key", "entities"] + (["keep"] if "keep" in table.column_names else []))
    if "keep" in t.column_names:
        t = t.filter(pc.fill_null(t.column("keep"), False)).drop_columns(["keep"])
    t = t.sort_by("key").combine_chunks()
    ents = t.column("entities").chunk(0) if t.num_rows else pa.array([], pa.list_(pa.string()))
    parent = pc.list_parent_indices(ents).to_numpy().astype(np.int64)
    flat = pc.list_flatten(ents)
    valid = pc.is_valid(flat).to_numpy(zero_copy_only=False)
    parent, flat = parent[valid], flat.filter(pa.array(valid))
    if len(flat):  # a caption listing an entity twice counts once
        code = pc.dictionary_encode(flat).indices.to_numpy(zero_copy_only=False).astype(np.int64)
        first = np.zeros(len(flat), bool)
        first[np.unique(parent * (int(code.max()) + 1) + code, return_index=True)[1]] = True
        parent, flat = parent[first], flat.filter(pa.array(first))
    offsets = np.zeros(t.num_rows + 1, np.int32)
    np.cumsum(np.bincount(parent, minlength=t.num_rows), out=offsets[1:])
    return pa.table(
        {"key": t.column("key"), "entities": pa.ListArray.from_arrays(pa.array(offsets), flat)}
    )


def _flat(rows: pa.Table) -> tuple[pa.Array, np.ndarray]:
    """The entities of ``kept_rows`` flattened, and the row of each."""
    ents = rows.column("entities").combine_chunks()
    return pc.list_flatten(ents), pc.list_parent_indices(ents).to_numpy().astype(np.int64)


def _crc_buckets(values: pa.Array, buckets: int) -> np.ndarray:
    """``crc32(value) % buckets`` per string (distinct values hashed once)."""
    if buckets == 1 or len(values) == 0:
        return np.zeros(len(values), np.int64)
    enc = pc.dictionary_encode(values)
    table = np.array(
        [zlib.crc32(s.encode()) % buckets for s in enc.dictionary.to_pylist()], np.int64
    )
    return table[enc.indices.to_numpy(zero_copy_only=False).astype(np.int64)]


def bucket_count(rows: int, bucket_rows: int = BUCKET_ROWS) -> int:
    """Buckets for about ``rows`` samples: at least one, about ``bucket_rows`` samples each."""
    return max(1, -(-rows // max(bucket_rows, 1)))


class _Buckets:
    """One parquet file per bucket under ``root``, written shard by shard (a row group each)."""

    def __init__(self, root: Path, name: str, schema: pa.Schema, buckets: int) -> None:
        root.mkdir(parents=True, exist_ok=True)
        self.paths = [root / f"{name}-{b:05d}.parquet" for b in range(buckets)]
        self.writers = [pq.ParquetWriter(p, schema) for p in self.paths]
        self.schema = schema

    def write(self, table: pa.Table, bucket: np.ndarray) -> None:
        if not table.num_rows:
            return
        order = np.argsort(bucket, kind="stable")
        bounds = np.searchsorted(bucket[order], np.arange(len(self.writers) + 1))
        table = table.take(pa.array(order))
        for b, (lo, hi) in enumerate(itertools.pairwise(bounds)):
            if hi > lo:
                self.writers[b].write_table(table.slice(lo, hi - lo))

    def close(self) -> None:
        for w in self.writers:
            w.close()

    def read(self, b: int) -> pa.Table:
        return pq.read_table(self.paths[b], schema=self.schema)


def count_entities(shards: Shards) -> Counter:
    """Kept samples per entity over all shards (one shard in memory at a time)."""
    counts: Counter = Counter()
    for _, table in shards():
        _add_counts(counts, _flat(kept_rows(table))[0])
    return counts


def _add_counts(counts: Counter, flat: pa.Array) -> None:
    """Add one shard's flattened kept entities to ``counts``."""
    for item in pc.value_counts(flat).to_pylist():
        counts[item["values"]] += item["counts"]


def entity_frequency(counts: Counter | pa.Table) -> pa.Table:
    """``entity`` / ``count`` (kept samples having it), most frequent first, ties by name;
    from :func:`count_entities`' counts or from one entity table."""
    if isinstance(counts, pa.Table):
        table = counts
        counts = count_entities(lambda: [("", table)])
    items = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    return pa.table(
        {
            "entity": pa.array([k for k, _ in items], pa.string()),
            "count": pa.array([v for _, v in items], pa.int64()),
        }
    )


def _requests(rows: pa.Table, shareable: pa.Array, n: int, rng: np.random.Generator) -> pa.Table:
    """``n`` draws per row of ``kept_rows``: a uniform shareable entity of the row and a
    uniform fraction ``u`` in [0, 1) that pass 3 turns into a rank among the other holders."""
    flat, parent = _flat(rows)
    ok = pc.is_in(flat, value_set=shareable).to_numpy(zero_copy_only=False)
    flat, parent = flat.filter(pa.array(ok)), parent[ok]
    m = rows.num_rows
    deg = np.bincount(parent, minlength=m)
    off = np.zeros(m + 1, np.int64)
    np.cumsum(deg, out=off[1:])
    pick = np.floor(rng.random((m, n)) * deg[:, None]).astype(np.int64)
    u = rng.random((m, n))
    has = np.broadcast_to(deg[:, None] > 0, (m, n))
    row = np.broadcast_to(np.arange(m)[:, None], (m, n))[has]
    slot = np.broadcast_to(np.arange(n, dtype=np.int32)[None, :], (m, n))[has]
    return pa.table(
        {
            "entity": flat.take(pa.array((off[:-1, None] + pick)[has])),
            "key": rows.column("key").take(pa.array(row)),
            "slot": pa.array(slot),
            "u": pa.array(u[has]),
        },
        schema=_REQUESTS,
    )


def _codes(*arrays: pa.Array | pa.ChunkedArray) -> list[np.ndarray]:
    """int64 codes of strings over all ``arrays`` together: equal strings get equal codes, and
    codes sort as the strings do (so the passes below sort and search integers)."""
    lengths = [len(a) for a in arrays]
    chunks = [c for a in arrays for c in (a.chunks if isinstance(a, pa.ChunkedArray) else [a])]
    enc = pc.dictionary_encode(pa.chunked_array(chunks, pa.string()).combine_chunks())
    rank = np.empty(len(enc.dictionary), np.int64)
    rank[pc.sort_indices(enc.dictionary).to_numpy()] = np.arange(len(enc.dictionary))
    codes = rank[enc.indices.to_numpy(zero_copy_only=False).astype(np.int64)]
    return np.split(codes, np.cumsum(lengths)[:-1])


def _resolve(members: pa.Table, requests: pa.Table) -> pa.Table:
    """Each request's partner: among the kept samples of its entity other than the requester,
    sorted by key, the one at rank ``floor(u * (holders - 1))``."""
    if not requests.num_rows:
        return _ANSWERS.empty_table()
    e_m, e_r = _codes(members.column("entity"), requests.column("entity"))
    k_m, k_r = _codes(members.column("key"), requests.column("key"))
    width = int(max(k_m.max(), k_r.max())) + 1
    member = e_m * width + k_m  # (entity, key) as one sortable integer
    order = np.argsort(member, kind="stable")
    member = member[order]
    if len(member) > 1 and bool((member[1:] == member[:-1]).any()):
        raise ValueError("duplicate sample keys in the entity table")
    start = np.searchsorted(member, e_r * width)
    count = np.searchsorted(member, (e_r + 1) * width) - start
    me = np.searchsorted(member, e_r * width + k_r)  # the requester's own position
    assert bool((member[np.minimum(me, len(member) - 1)] == e_r * width + k_r).all())
    v = np.floor(requests.column("u").to_numpy() * (count - 1)).astype(np.int64)
    v += v >= me - start  # skip the requester itself
    partner = members.column("key").take(pa.array(order[start + v]))
    return pa.table(
        {
            "key": requests.column("key"),
            "partner": partner,
            "slot": requests.column("slot"),
            "entity": requests.column("entity"),
        },
        schema=_ANSWERS,
    )


def _assemble(keys: pa.Table, answers: pa.Table) -> pa.Table:
    """``PAIRS_SCHEMA`` rows for ``keys`` (one key bucket) from their resolved requests."""
    k, a_key, a_partner = _codes(
        keys.column("key"), answers.column("key"), answers.column("partner")
    )
    by_key = np.argsort(k, kind="stable")
    k = k[by_key]
    if len(k) > 1 and bool((k[1:] == k[:-1]).any()):
        raise ValueError("duplicate sample keys in the entity table")
    # by key, then partner; a partner reached twice keeps its first slot's entity
    slot = answers.column("slot").to_numpy()
    order = np.lexsort((slot, a_partner, a_key))
    a_key, a_partner = a_key[order], a_partner[order]
    first = np.ones(len(order), bool)
    first[1:] = (a_key[1:] != a_key[:-1]) | (a_partner[1:] != a_partner[:-1])
    order, a_key = order[first], a_key[first]
    offsets = np.zeros(len(k) + 1, np.int32)
    np.cumsum(np.bincount(np.searchsorted(k, a_key), minlength=len(k)), out=offsets[1:])
    off, take = pa.array(offsets), pa.array(order)
    return pa.Table.from_arrays(
        [
            keys.column("key").take(pa.array(by_key)).combine_chunks(),
            pa.ListArray.from_arrays(off, answers.column("partner").take(take).combine_chunks()),
            pa.ListArray.from_arrays(off, answers.column("entity").take(take).combine_chunks()),
        ],
        schema=PAIRS_SCHEMA,
    )


def write_pairs(
    shards: Shards,
    write: Callable[[pa.Table], None],
    work_dir: str | Path,
    n: int = 10,
    seed: int = 0,
    rows: int | None = None,
    bucket_rows: int = BUCKET_ROWS,
) -> Counter:
    """The four passes (module docstring) over ``shards``: ``write`` gets one
    ``PAIRS_SCHEMA`` table per key bucket; returns the entity counts (:func:`count_entities`).
    ``rows`` (a bound on the kept samples, e.g. the shards' row count) sizes the buckets;
    scratch files go under ``work_dir``."""
    work = Path(work_dir)
    buckets = bucket_count(rows if rows is not None else bucket_rows, bucket_rows)
    members = _Buckets(work, "members", _ENTITY_ROWS, buckets)
    keys = _Buckets(work, "keys", _KEYS, buckets)
    counts: Counter = Counter()
    try:
        for _, table in shards():  # pass 1
            kept = kept_rows(table)
            flat, parent = _flat(kept)
            _add_counts(counts, flat)
            members.write(
                pa.table({"entity": flat, "key": kept.column("key").take(pa.array(parent))}),
                _crc_buckets(flat, buckets),
            )
            k = kept.column("key").combine_chunks()
            keys.write(pa.table({"key": k}), _crc_buckets(k, buckets))
    finally:
        members.close()
        keys.close()
    shareable = pa.array(sorted(e for e, c in counts.items() if c >= 2), pa.string())
    requests = _Buckets(work, "requests", _REQUESTS, buckets)
    try:
        for name, table in shards():  # pass 2
            rng = np.random.default_rng([seed, zlib.crc32(name.encode())])
            req = _requests(kept_rows(table), shareable, max(n, 0), rng)
            requests.write(req, _crc_buckets(req.column("entity").combine_chunks(), buckets))
    finally:
        requests.close()
    answers = _Buckets(work, "answers", _ANSWERS, buckets)
    try:
        for b in range(buckets):  # pass 3
            got = _resolve(members.read(b), requests.read(b))
            answers.write(got, _crc_buckets(got.column("key").combine_chunks(), buckets))
    finally:
        answers.close()
    for b in range(buckets):  # pass 4
        write(_assemble(keys.read(b), answers.read(b)))
    return counts


def build_pairs(table: pa.Table, n: int = 10, seed: int = 0) -> pa.Table:
    """:func:`write_pairs` over one in-memory table (one shard named ``""``), rows in key order."""
    parts: list[pa.Table] = []
    with tempfile.TemporaryDirectory() as tmp:
        write_pairs(lambda: [("", table)], parts.append, tmp, n, seed, rows=table.num_rows)
    return pa.concat_tables(parts).sort_by("key").combine_chunks()
