"""Cross-image pairs (OVSegmentor): samples that share an entity, and entity frequencies, built
in memory bounded by a bucket of rows, not by the dataset.

Input is a sequence of named per-shard entity tables (``key`` + ``entities`` list column,
optionally ``keep``), each loaded twice. Sampling, per kept sample and partner slot: pick one of
the sample's entities that some other kept sample also has, then a uniformly random *other*
kept sample of that entity (as OVSegmentor's ``construct_crossimage``, minus self-pairs);
repeated partners are dropped, so a sample gets up to ``n`` distinct partners, listed in key
order.

An entity's holders are ranked in (shard name, key) order, and a draw names its partner by
rank, so no pass needs an entity's whole holder list. No pass holds more than one shard or
one bucket (:func:`bucket_count`: about ``bucket_rows`` samples each) of per-sample rows, in
four passes over files in ``work_dir``, shards in name order:

1. per shard: give each (entity, kept sample) its holder rank (the entity's holders on earlier
   shards plus its key order here; the running counts are a dict the size of the vocabulary)
   and write it to bucket ``(crc32(entity) + rank) % B``; write each kept key to its key
   bucket (``crc32(key) % B``);
2. per shard, with the final counts: draw each sample's ``n`` (entity, rank) requests (the
   generator seeded by ``(seed, crc32(shard name))``, rows in key order; a uniform rank among
   the entity's holders other than the requester) and write each to the bucket of the holder
   it names;
3. per bucket: look every request's rank up among the bucket's holders; write the answers to
   the requester's key bucket;
4. per key bucket: group by key, drop repeated partners, and yield ``PAIRS_SCHEMA`` rows
   (samples nobody shares an entity with get empty lists).

Holders and requests spread over the buckets by rank, so a frequent entity ("man" is a few
percent of CC12M's captions) is split over all of them. The result depends on the shards'
contents and names and the seed, not on their order, ``bucket_rows`` or the machine.
"""

from __future__ import annotations

import itertools
import tempfile
import zlib
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

BUCKET_ROWS = 1 << 18  # samples per bucket, about (``entities.pairs_bucket_rows``)

PAIRS_SCHEMA = pa.schema(
    [
        ("key", pa.string()),
        ("partner_keys", pa.list_(pa.string())),
        ("shared_entity", pa.list_(pa.string())),
    ]
)
_HOLDERS = pa.schema([("entity", pa.string()), ("rank", pa.int64()), ("key", pa.string())])
_KEYS = pa.schema([("key", pa.string())])
_REQUESTS = pa.schema(
    [("entity", pa.string()), ("rank", pa.int64()), ("key", pa.string()), ("slot", pa.int32())]
)
_ANSWERS = pa.schema(
    [("key", pa.string()), ("partner", pa.string()), ("slot", pa.int32()), ("entity", pa.string())]
)

# Named shards: ``(name, load)`` with ``load()`` giving the entity table; each loaded once per
# pass, in name order.
Shards = Sequence[tuple[str, Callable[[], pa.Table]]]


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


def _crc(values: pa.Array) -> np.ndarray:
    """``crc32`` of each string (distinct values hashed once)."""
    code, names = _encode(values)
    return np.array([zlib.crc32(s.encode()) for s in names], np.int64)[code]


def _crc_buckets(values: pa.Array, buckets: int) -> np.ndarray:
    """``crc32(value) % buckets`` per string."""
    if buckets == 1:
        return np.zeros(len(values), np.int64)
    return _crc(values) % buckets


def _holder_buckets(entity: pa.Array, rank: np.ndarray, buckets: int) -> np.ndarray:
    """The bucket of holder ``rank`` of ``entity``: ``(crc32(entity) + rank) % buckets``, so
    one entity's holders go round the buckets."""
    if buckets == 1:
        return np.zeros(len(entity), np.int64)
    return (_crc(entity) + rank) % buckets


def bucket_count(rows: int, bucket_rows: int = BUCKET_ROWS) -> int:
    """Buckets for about ``rows`` samples: at least one, about ``bucket_rows`` samples each."""
    return max(1, -(-rows // max(bucket_rows, 1)))


class _Buckets:
    """Rows split into ``buckets``, spilled under ``root``: each :meth:`write` (one shard's or
    one bucket's rows) is one Arrow IPC file of ``buckets`` record batches (zstd), the rows of
    bucket ``b`` in batch ``b``; :meth:`read` gathers one bucket's batch from every file. One
    file is open at a time, so neither the bucket count nor the number of writes holds
    memory (a parquet writer per bucket would keep every row group's metadata until closed)."""

    def __init__(self, root: Path, name: str, schema: pa.Schema, buckets: int) -> None:
        root.mkdir(parents=True, exist_ok=True)
        self.root, self.name, self.schema, self.buckets = root, name, schema, buckets
        self.paths: list[Path] = []

    def write(self, table: pa.Table, bucket: np.ndarray) -> None:
        if not table.num_rows:
            return
        order = np.argsort(bucket, kind="stable")
        bounds = np.searchsorted(bucket[order], np.arange(self.buckets + 1))
        (batch,) = table.take(pa.array(order)).combine_chunks().to_batches()
        path = self.root / f"{self.name}-{len(self.paths):06d}.arrow"
        options = pa.ipc.IpcWriteOptions(compression="zstd")
        with pa.OSFile(str(path), "wb") as sink:
            with pa.ipc.new_file(sink, self.schema, options=options) as writer:
                for lo, hi in itertools.pairwise(bounds.tolist()):  # empty ones too
                    writer.write_batch(batch.slice(lo, hi - lo))
        self.paths.append(path)

    def read(self, b: int) -> pa.Table:
        parts = []
        for path in self.paths:
            with pa.OSFile(str(path), "rb") as source:
                parts.append(pa.ipc.open_file(source).get_batch(b))
        return pa.Table.from_batches(parts, self.schema).combine_chunks()


def _ordered(shards: Shards) -> Iterator[tuple[str, pa.Table]]:
    """``(name, table)`` per shard in name order (a name given twice is refused)."""
    names = [name for name, _ in shards]
    if len(set(names)) != len(names):
        raise ValueError("two shards have one name")
    for name, load in sorted(shards, key=lambda s: s[0]):
        yield name, load()


def count_entities(shards: Shards) -> Counter:
    """Kept samples per entity over all shards (one shard in memory at a time)."""
    counts: Counter = Counter()
    for _, table in _ordered(shards):
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
        counts = count_entities([("", lambda: table)])
    items = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    return pa.table(
        {
            "entity": pa.array([k for k, _ in items], pa.string()),
            "count": pa.array([v for _, v in items], pa.int64()),
        }
    )


def _encode(values: pa.Array) -> tuple[np.ndarray, list[str]]:
    """Dictionary codes (int64) of the strings ``values``, and the distinct strings."""
    enc = pc.dictionary_encode(values)
    return enc.indices.to_numpy(zero_copy_only=False).astype(np.int64), enc.dictionary.to_pylist()


def _holder_ranks(code: np.ndarray, names: list[str], seen: Counter) -> np.ndarray:
    """Per flattened kept entity of one shard (:func:`_encode`d; rows in key order): its
    holder rank, the entity's holders on earlier shards (``seen``) plus its order here; adds
    this shard's holders to ``seen``."""
    before = np.array([seen[e] for e in names], np.int64)
    size = np.bincount(code, minlength=len(names))
    start = np.zeros(len(names), np.int64)
    np.cumsum(size[:-1], out=start[1:])
    order = np.argsort(code, kind="stable")
    within = np.empty(len(code), np.int64)
    within[order] = np.arange(len(code)) - start[code[order]]
    for e, c in zip(names, size.tolist(), strict=True):
        seen[e] += c
    return before[code] + within


def _requests(
    rows: pa.Table, counts: Counter, seen: Counter, n: int, rng: np.random.Generator
) -> pa.Table:
    """``n`` draws per row of ``kept_rows`` (one shard, ``seen``: holders on earlier shards,
    updated): a uniform shareable entity of the row, then a uniform holder rank of it other
    than the row's own."""
    flat, parent = _flat(rows)
    code, names = _encode(flat)
    own = _holder_ranks(code, names, seen)
    total = np.array([counts[e] for e in names], np.int64)[code]
    ok = total >= 2  # shareable: some other kept sample has it
    flat, parent, own, total = flat.filter(pa.array(ok)), parent[ok], own[ok], total[ok]
    m = rows.num_rows
    deg = np.bincount(parent, minlength=m)
    off = np.zeros(m + 1, np.int64)
    np.cumsum(deg, out=off[1:])
    pick = np.floor(rng.random((m, n)) * deg[:, None]).astype(np.int64)
    u = rng.random((m, n))
    has = np.broadcast_to(deg[:, None] > 0, (m, n))
    row = np.broadcast_to(np.arange(m)[:, None], (m, n))[has]
    slot = np.broadcast_to(np.arange(n, dtype=np.int32)[None, :], (m, n))[has]
    chosen = (off[:-1, None] + pick)[has]
    rank = np.floor(u[has] * (total[chosen] - 1)).astype(np.int64)
    rank += rank >= own[chosen]  # skip the requester itself
    return pa.table(
        {
            "entity": flat.take(pa.array(chosen)),
            "rank": pa.array(rank),
            "key": rows.column("key").take(pa.array(row)),
            "slot": pa.array(slot),
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


def _resolve(holders: pa.Table, requests: pa.Table) -> pa.Table:
    """Each request's partner: the holder of its entity at its rank (both from one bucket)."""
    if not requests.num_rows:
        return _ANSWERS.empty_table()
    e_h, e_r = _codes(holders.column("entity"), requests.column("entity"))
    r_h, r_r = holders.column("rank").to_numpy(), requests.column("rank").to_numpy()
    width = int(max(r_h.max(initial=0), r_r.max())) + 1
    holder = e_h * width + r_h  # (entity, rank) as one sortable integer
    order = np.argsort(holder, kind="stable")
    want = e_r * width + r_r
    at = np.minimum(np.searchsorted(holder[order], want), len(order) - 1)
    if not len(order) or not bool((holder[order[at]] == want).all()):
        raise AssertionError("a request names a holder its bucket does not have")
    return pa.table(
        {
            "key": requests.column("key"),
            "partner": holders.column("key").take(pa.array(order[at])),
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
    holders = _Buckets(work, "holders", _HOLDERS, buckets)
    keys = _Buckets(work, "keys", _KEYS, buckets)
    counts: Counter = Counter()
    for _, table in _ordered(shards):  # pass 1
        kept = kept_rows(table)
        flat, parent = _flat(kept)
        rank = _holder_ranks(*_encode(flat), counts)
        key = kept.column("key").combine_chunks()
        holders.write(
            pa.table(
                {"entity": flat, "rank": pa.array(rank), "key": key.take(pa.array(parent))},
                schema=_HOLDERS,
            ),
            _holder_buckets(flat, rank, buckets),
        )
        keys.write(pa.table({"key": key}), _crc_buckets(key, buckets))
    requests = _Buckets(work, "requests", _REQUESTS, buckets)
    seen: Counter = Counter()
    for name, table in _ordered(shards):  # pass 2
        rng = np.random.default_rng([seed, zlib.crc32(name.encode())])
        req = _requests(kept_rows(table), counts, seen, max(n, 0), rng)
        ent = req.column("entity").combine_chunks()
        requests.write(req, _holder_buckets(ent, req.column("rank").to_numpy(), buckets))
    answers = _Buckets(work, "answers", _ANSWERS, buckets)
    for b in range(buckets):  # pass 3
        got = _resolve(holders.read(b), requests.read(b))
        answers.write(got, _crc_buckets(got.column("key").combine_chunks(), buckets))
    for b in range(buckets):  # pass 4
        write(_assemble(keys.read(b), answers.read(b)))
    return counts


def build_pairs(table: pa.Table, n: int = 10, seed: int = 0) -> pa.Table:
    """:func:`write_pairs` over one in-memory table (one shard named ``""``), rows in key order."""
    parts: list[pa.Table] = []
    with tempfile.TemporaryDirectory() as tmp:
        write_pairs([("", lambda: table)], parts.append, tmp, n, seed, rows=table.num_rows)
    return pa.concat_tables(parts).sort_by("key").combine_chunks()
