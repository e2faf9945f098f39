"""Cross-image pairs (OVSegmentor): samples that share an entity, and entity frequencies.

Input is the concatenation of the per-shard entity tables (``key`` + ``entities`` list
column, optionally ``keep``). Everything is arrow/numpy vectorised so CC12M's ~12M rows fit:
the inverted index entity -> samples is a CSR (``offsets``, ``members``) built by sorting the
flattened (entity, row) pairs, never a Python dict of lists.

Sampling, per kept sample and partner slot: pick one of the sample's entities that some other
sample also has, then a uniformly random *other* sample of that entity (as OVSegmentor's
``construct_crossimage``, minus self-pairs); repeated partners are dropped, so a sample gets
up to ``n`` distinct partners. Rows are put in key order first and the generator is seeded
per fixed-size block of that order, so the result depends only on the set of rows and the
seed, not on shard or worker order.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

_BLOCK_ROWS = 1 << 20  # rows per RNG block; fixed so results never depend on machine size

PAIRS_SCHEMA = pa.schema(
    [
        ("key", pa.string()),
        ("partner_keys", pa.list_(pa.string())),
        ("shared_entity", pa.list_(pa.string())),
    ]
)


@dataclass
class InvertedIndex:
    """Entity -> rows CSR over a key-sorted table.

    keys: ``[N]`` sample keys (sorted). entities: ``[E]`` entity names (sorted).
    offsets: ``[E+1]`` int64, rows of entity ``e`` are ``members[offsets[e]:offsets[e+1]]``
    (ascending). pair_row / pair_entity: ``[P]`` the deduplicated (row, entity) pairs in
    that same entity-major order.
    """

    keys: pa.Array
    entities: np.ndarray
    offsets: np.ndarray
    members: np.ndarray
    pair_entity: np.ndarray

    @property
    def counts(self) -> np.ndarray:
        """``[E]`` number of samples per entity."""
        return np.diff(self.offsets)


def _kept_sorted(table: pa.Table) -> pa.Table:
    t = table.select(["key", "entities"] + (["keep"] if "keep" in table.column_names else []))
    if "keep" in t.column_names:
        t = t.filter(pc.fill_null(t.column("keep"), False)).drop_columns(["keep"])
    t = t.sort_by("key")
    if pc.count_distinct(t.column("key")).as_py() != t.num_rows:
        raise ValueError("duplicate sample keys in the entity table")
    return t.combine_chunks()


def build_index(table: pa.Table) -> InvertedIndex:
    """Inverted index of the kept rows of ``table`` (columns ``key``, ``entities`` [, ``keep``])."""
    t = _kept_sorted(table)
    ents = t.column("entities").chunk(0) if t.num_rows else pa.array([], pa.list_(pa.string()))
    parent = pc.list_parent_indices(ents).to_numpy().astype(np.int64)
    flat = pc.list_flatten(ents)
    valid = pc.is_valid(flat).to_numpy(zero_copy_only=False)
    parent, flat = parent[valid], flat.filter(pa.array(valid))
    enc = pc.dictionary_encode(flat) if len(flat) else None
    if enc is None:
        names = np.array([], dtype=object)
        ent_id = np.zeros(0, np.int64)
    else:
        names_unsorted = np.array(enc.dictionary.to_pylist(), dtype=object)
        order = np.argsort(names_unsorted, kind="stable")  # entity ids in name order
        rank = np.empty_like(order)
        rank[order] = np.arange(len(order))
        names = names_unsorted[order]
        ent_id = rank[enc.indices.to_numpy().astype(np.int64)]
    srt = np.lexsort((parent, ent_id))
    ent_id, parent = ent_id[srt], parent[srt]
    if len(ent_id):  # a caption listing an entity twice counts once
        first = np.ones(len(ent_id), bool)
        first[1:] = (ent_id[1:] != ent_id[:-1]) | (parent[1:] != parent[:-1])
        ent_id, parent = ent_id[first], parent[first]
    offsets = np.zeros(len(names) + 1, np.int64)
    np.cumsum(np.bincount(ent_id, minlength=len(names)), out=offsets[1:])
    return InvertedIndex(
        keys=t.column("key").chunk(0) if t.num_rows else pa.array([], pa.string()),
        entities=names,
        offsets=offsets,
        members=parent,
        pair_entity=ent_id,
    )


def entity_frequency(table: pa.Table) -> pa.Table:
    """``entity`` / ``count`` (kept samples having it), most frequent first, ties by name."""
    idx = build_index(table)
    counts = idx.counts
    order = np.lexsort((np.arange(len(counts)), -counts))  # names are sorted already
    return pa.table(
        {
            "entity": pa.array(idx.entities[order].tolist(), pa.string()),
            "count": pa.array(counts[order], pa.int64()),
        }
    )


def _sample_block(
    idx: InvertedIndex,
    lo: int,
    hi: int,
    n: int,
    rng: np.random.Generator,
    row_off: np.ndarray,
    row_pairs: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Partner rows / entity ids ``[hi-lo, n]`` (-1 = none) for rows ``lo:hi``."""
    m = hi - lo
    if len(row_pairs) == 0:
        return np.full((m, n), -1, np.int64), np.full((m, n), -1, np.int64)
    deg = row_off[lo + 1 : hi + 1] - row_off[lo:hi]  # shareable entities per row
    u = np.floor(rng.random((m, n)) * deg[:, None]).astype(np.int64)
    has = np.broadcast_to(deg[:, None] > 0, (m, n))
    pidx = row_pairs[np.where(has, row_off[lo:hi, None] + u, 0)]  # pair index (entity order)
    ent = idx.pair_entity[pidx]
    start = idx.offsets[ent]
    cnt = idx.offsets[ent + 1] - start
    self_rank = pidx - start  # position of the row itself in that entity's member list
    v = np.floor(rng.random((m, n)) * (cnt - 1)).astype(np.int64)
    v += v >= self_rank  # skip self
    partner = np.where(has, idx.members[np.minimum(start + v, len(idx.members) - 1)], -1)
    ent = np.where(has, ent, -1)
    # drop repeated partners: sort each row by partner, blank equal neighbours
    o = np.argsort(partner, axis=1, kind="stable")
    partner = np.take_along_axis(partner, o, 1)
    ent = np.take_along_axis(ent, o, 1)
    dup = np.zeros_like(partner, bool)
    dup[:, 1:] = partner[:, 1:] == partner[:, :-1]
    partner[dup] = -1
    ent[dup] = -1
    return partner, ent


def build_pairs(table: pa.Table, n: int = 10, seed: int = 0) -> pa.Table:
    """Up to ``n`` distinct partners per kept sample, each sharing ``shared_entity`` with it.

    Returns ``PAIRS_SCHEMA`` rows (``key``, ``partner_keys``, ``shared_entity``) for every kept
    sample in key order; samples whose entities nobody else has get empty lists.
    """
    idx = build_index(table)
    num = len(idx.keys)
    shareable = idx.counts[idx.pair_entity] >= 2
    pair_ids = np.nonzero(shareable)[0]
    by_row = np.argsort(idx.members[pair_ids], kind="stable")
    row_pairs = pair_ids[by_row]  # pair indices grouped by row
    row_off = np.zeros(num + 1, np.int64)
    np.cumsum(np.bincount(idx.members[pair_ids], minlength=num), out=row_off[1:])

    counts, flat_partner, flat_ent = [np.zeros(0, np.int64)], [], []
    for b, lo in enumerate(range(0, num, _BLOCK_ROWS)):
        hi = min(num, lo + _BLOCK_ROWS)
        rng = np.random.default_rng([seed, b])
        p, e = _sample_block(idx, lo, hi, max(n, 0), rng, row_off, row_pairs)
        valid = p >= 0
        counts.append(valid.sum(1))
        flat_partner.append(p[valid])  # row-major: partners of a row stay together, in order
        flat_ent.append(e[valid])
    offsets = np.zeros(num + 1, np.int64)
    np.cumsum(np.concatenate(counts), out=offsets[1:])
    partner = np.concatenate(flat_partner) if flat_partner else np.zeros(0, np.int64)
    ent = np.concatenate(flat_ent) if flat_ent else np.zeros(0, np.int64)
    partner_keys = idx.keys.take(pa.array(partner))
    ent_names = pa.array(idx.entities.tolist(), pa.string()).take(pa.array(ent))
    return pa.Table.from_arrays(
        [
            idx.keys,
            pa.ListArray.from_arrays(pa.array(offsets.astype(np.int32)), partner_keys),
            pa.ListArray.from_arrays(pa.array(offsets.astype(np.int32)), ent_names),
        ],
        schema=PAIRS_SCHEMA,
    )
