"""Cross-image partners of a training batch, from what the ``entities`` stage wrote.

:class:`PartnerIndex` is built once per training worker from the stage's ``pairs.parquet``
(key -> partner keys and the entity each shares) and its per-shard entity tables (key -> CC4M
entities, for masking the caption), plus a locator of every sample's JPEG member in *all*
download shards (tar headers only: offset and size), so a partner is read wherever it lives,
on another shard or another rank's shards. :meth:`PartnerIndex.draw` picks one partner per
sample that has any (uniformly, from the caller's generator) and decodes its image.

Every rank holds the whole index, so it is kept in flat numpy arrays, not per-sample Python
objects: sorted fixed-width key arrays searched with ``np.searchsorted``, CSR-style offsets into
flat partner and entity-id arrays, entity names once in a vocabulary, keys copied from arrow's
buffers without a Python object each. Tables are read a batch at a time; where a key appears
twice the last one wins, as a dict's would. Measured (tracemalloc, 150,000 samples with 10
partners and 2 entities each): 199 bytes a sample retained and a 58 MB peak, where dicts of str,
lists and tuples took 2,398 bytes and 404 MB (~2.4 GB against ~29 GB per rank at CC12M's 12M).
What still costs is the locator's pass over every shard's tar headers
(:func:`ovs.data.shards.shard_members`, ~5 µs a member: ~3 minutes per rank at CC12M).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ovs.data.shards import list_shards, shard_members
from ovs.data.train_data import decode_image

BATCH = 65_536  # rows read from a table at a time


def _keys(arr: pa.Array) -> np.ndarray:
    """String keys as a fixed-width bytes array (``S<n>``, n the longest key's UTF-8 bytes),
    straight from arrow's offsets and data buffers (no Python object per key)."""
    arr = pc.cast(arr, pa.large_binary())
    if arr.null_count:
        arr = pc.fill_null(arr, b"")
    n = len(arr)
    offsets = np.frombuffer(arr.buffers()[1], np.int64)[arr.offset : arr.offset + n + 1]
    lens = np.diff(offsets)
    width = max(int(lens.max()) if n else 1, 1)
    out = np.zeros((n, width), np.uint8)
    data = np.frombuffer(arr.buffers()[2], np.uint8) if arr.buffers()[2] else np.zeros(0, np.uint8)
    starts = offsets[:-1]
    for c in range(width):  # a column of bytes at a time: memory of one n-long index
        has = lens > c
        out[has, c] = data[starts[has] + c]
    return out.view(f"S{width}").reshape(n)


class _Vocab:
    """Entity names <-> int32 ids (the set of names is small: CC4M has 100)."""

    def __init__(self) -> None:
        self.names: list[str] = []
        self._ids: dict[str, int] = {}

    def encode(self, arr: pa.Array) -> np.ndarray:
        """The ids of ``arr``'s names (new names get the next ids)."""
        codes = pc.dictionary_encode(pc.cast(arr, pa.string()))
        names = codes.dictionary.to_pylist()
        for name in names:
            if name not in self._ids:
                self._ids[name] = len(self.names)
                self.names.append(name)
        ids = np.array([self._ids[u] for u in names], np.int32)
        index = codes.indices.to_numpy(zero_copy_only=False)
        return ids[index] if len(ids) else np.zeros(len(index), np.int32)


def _take(parts: list[np.ndarray], empty: np.ndarray) -> np.ndarray:
    """The parts concatenated, the list emptied (so the parts can be freed)."""
    out = np.concatenate(parts) if parts else empty
    parts.clear()
    return out


class _Lists:
    """Sorted keys -> variable-length rows of flat arrays (CSR offsets); last duplicate wins.
    Built from per-batch parts, which it consumes (the lists are emptied)."""

    def __init__(self, keys: list[np.ndarray], lengths: list[np.ndarray], *flat: list[np.ndarray]):
        key = _take(keys, np.zeros(0, "S1"))
        length = _take(lengths, np.zeros(0, np.int64)).astype(np.int64)
        values = [_take(f, np.zeros(0, np.int32)) for f in flat]
        start = np.concatenate([[0], np.cumsum(length)[:-1]]).astype(np.int64)
        order = np.argsort(key, kind="stable")
        last = np.r_[key[order][1:] != key[order][:-1], True] if len(key) else np.zeros(0, bool)
        order = order[last]
        self.keys = key[order]
        length = length[order]
        self.offsets = np.concatenate([[0], np.cumsum(length)]).astype(np.int64)
        gather = np.repeat(start[order] - self.offsets[:-1], length) + np.arange(self.offsets[-1])
        del start, order
        self.values = []
        while values:  # one reordered copy alive at a time
            self.values.append(values.pop(0)[gather])

    def lookup(self, keys: np.ndarray) -> np.ndarray:
        """The rows of fixed-width ``keys`` (-1 where absent): :meth:`find` for many."""
        i = np.searchsorted(self.keys, keys).astype(np.int64)
        hit = np.zeros(len(keys), bool)
        inside = i < len(self.keys)
        hit[inside] = self.keys[i[inside]] == keys[inside]
        return np.where(hit, i, -1)

    def find(self, key: str) -> int:
        """The row of ``key``, or -1."""
        k = key.encode()
        i = int(np.searchsorted(self.keys, k))
        return i if i < len(self.keys) and self.keys[i] == k else -1

    def row(self, i: int) -> list[np.ndarray]:
        a, b = self.offsets[i], self.offsets[i + 1]
        return [v[a:b] for v in self.values]

    def nbytes(self) -> int:
        return self.keys.nbytes + self.offsets.nbytes + sum(v.nbytes for v in self.values)


def _batches(path: Path, columns: list[str]) -> Iterable[pa.RecordBatch]:
    yield from pq.ParquetFile(path).iter_batches(batch_size=BATCH, columns=columns)


class PartnerIndex:
    """``entities_out``: the entities stage's output directory (``pairs.parquet``,
    ``entities/<stem>.parquet``); ``shard_dir``: the download shards; images are decoded to
    ``image_size`` squares."""

    def __init__(self, entities_out: str | Path, shard_dir: str | Path, image_size: int) -> None:
        out = Path(entities_out)
        self.image_size = image_size
        self._vocab = _Vocab()
        # where every JPEG member is: sorted keys -> (shard, offset, size)
        self._shards = list(list_shards(shard_dir))
        keys, lengths, shard_ids, offsets, sizes = [], [], [], [], []
        for s, shard in enumerate(self._shards):
            names, at, size = [], [], []
            for info in shard_members(shard):  # ShardError naming a cut-short tar
                key, _, ext = info.name.rsplit("/", 1)[-1].partition(".")
                if info.isfile() and ext == "jpg":
                    names.append(key)
                    at.append(info.offset_data)
                    size.append(info.size)
            keys.append(_keys(pa.array(names, pa.string())))
            lengths.append(np.ones(len(names), np.int64))
            shard_ids.append(np.full(len(names), s, np.int32))
            offsets.append(np.array(at, np.int64))
            sizes.append(np.array(size, np.int64))
        self._where = _Lists(keys, lengths, shard_ids, offsets, sizes)
        # each caption's entities: sorted keys -> entity ids
        keys, lengths, ids = [], [], []
        for path in sorted((out / "entities").glob("*.parquet")):
            for b in _batches(path, ["key", "entities"]):
                ents = pc.fill_null(b.column("entities"), pa.scalar([], b.column("entities").type))
                keys.append(_keys(b.column("key")))
                lengths.append(pc.list_value_length(ents).to_numpy(zero_copy_only=False))
                ids.append(self._vocab.encode(pc.list_flatten(ents)))
        self._entities = _Lists(keys, lengths, ids)
        # each sample's partners: sorted keys -> (partner's row in _where or -1, shared entity)
        keys, lengths, partner_rows, shared = [], [], [], []
        for b in _batches(out / "pairs.parquet", ["key", "partner_keys", "shared_entity"]):
            plist = pc.fill_null(b.column("partner_keys"), pa.scalar([], pa.list_(pa.string())))
            n = pc.list_value_length(plist).to_numpy(zero_copy_only=False).astype(np.int64)
            has = n > 0
            keys.append(_keys(b.column("key").filter(pa.array(has))))
            lengths.append(n[has])
            partner_rows.append(self._where.lookup(_keys(pc.list_flatten(plist))))
            shared.append(self._vocab.encode(pc.list_flatten(b.column("shared_entity"))))
        self._pairs = _Lists(keys, lengths, partner_rows, shared)

    def nbytes(self) -> int:
        """Bytes of the index's arrays (what a rank holds besides the vocabulary)."""
        return self._where.nbytes() + self._entities.nbytes() + self._pairs.nbytes()

    def entities(self, key: str) -> list[str]:
        """The sample's CC4M entities (folded classes); empty when it has none."""
        i = self._entities.find(key)
        if i < 0:
            return []
        (ids,) = self._entities.row(i)
        return [self._vocab.names[j] for j in ids]

    def _image_at(self, row: int) -> np.ndarray | None:
        if row < 0:
            return None
        shard, offset, size = (int(v[row]) for v in self._where.values)
        with open(self._shards[shard], "rb") as f:
            f.seek(offset)
            return decode_image(f.read(size), self.image_size)

    def image(self, key: str) -> np.ndarray | None:
        """The sample's decoded image, uint8 ``[S,S,3]``, or None when absent/undecodable."""
        return self._image_at(self._where.find(key))

    def draw(
        self, keys: Sequence[str], rng: np.random.Generator
    ) -> tuple[list[int], list[np.ndarray], list[str]]:
        """For each batch row whose sample has partners, one partner drawn uniformly:
        ``(rows, images uint8 [S,S,3] each, shared entities)``; rows whose drawn partner's
        image is missing are left out."""
        rows, images, shared = [], [], []
        for i, key in enumerate(keys):
            j = self._pairs.find(key)
            if j < 0:
                continue
            partner_rows, entity_ids = self._pairs.row(j)
            pick = int(rng.integers(len(partner_rows)))
            img = self._image_at(int(partner_rows[pick]))
            if img is not None:
                rows.append(i)
                images.append(img)
                shared.append(self._vocab.names[int(entity_ids[pick])])
        return rows, images, shared
