"""Cross-image partners of a training batch, from what the ``entities`` stage wrote.

:class:`PartnerIndex` is built once per training worker from the stage's ``pairs.parquet``
(key -> partner keys and the entity each shares) and its per-shard entity tables (key -> CC4M
entities, for masking the caption), plus a locator of every sample's JPEG member in *all*
download shards (tar headers only: offset and size), so a partner is read wherever it lives,
on another shard or another rank's shards. :meth:`PartnerIndex.draw` picks one partner per
sample that has any (uniformly, from the caller's generator) and decodes its image.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from ovs.data.shards import list_shards, shard_members
from ovs.data.train_data import decode_image


class PartnerIndex:
    """``entities_out``: the entities stage's output directory (``pairs.parquet``,
    ``entities/<stem>.parquet``); ``shard_dir``: the download shards; images are decoded to
    ``image_size`` squares."""

    def __init__(self, entities_out: str | Path, shard_dir: str | Path, image_size: int) -> None:
        out = Path(entities_out)
        pairs = pq.read_table(out / "pairs.parquet").to_pydict()
        self.pairs: dict[str, list[tuple[str, str]]] = {
            k: list(zip(p, e, strict=True))
            for k, p, e in zip(
                pairs["key"], pairs["partner_keys"], pairs["shared_entity"], strict=True
            )
            if p
        }
        self._entities: dict[str, list[str]] = {}
        for path in sorted((out / "entities").glob("*.parquet")):
            t = pq.read_table(path, columns=["key", "entities"]).to_pydict()
            for k, ents in zip(t["key"], t["entities"], strict=True):
                self._entities[k] = list(ents or ())
        self.image_size = image_size
        self._where: dict[str, tuple[Path, int, int]] = {}
        for shard in list_shards(shard_dir):
            for info in shard_members(shard):  # ShardError naming a cut-short tar
                key, _, ext = info.name.rsplit("/", 1)[-1].partition(".")
                if info.isfile() and ext == "jpg":
                    self._where[key] = (shard, info.offset_data, info.size)

    def entities(self, key: str) -> list[str]:
        """The sample's CC4M entities (folded classes); empty when it has none."""
        return self._entities.get(key, [])

    def image(self, key: str) -> np.ndarray | None:
        """The sample's decoded image, uint8 ``[S,S,3]``, or None when absent/undecodable."""
        where = self._where.get(key)
        if where is None:
            return None
        path, offset, size = where
        with open(path, "rb") as f:
            f.seek(offset)
            return decode_image(f.read(size), self.image_size)

    def draw(
        self, keys: Sequence[str], rng: np.random.Generator
    ) -> tuple[list[int], list[np.ndarray], list[str]]:
        """For each batch row whose sample has partners, one partner drawn uniformly:
        ``(rows, images uint8 [S,S,3] each, shared entities)``; rows whose drawn partner's
        image is missing are left out."""
        rows, images, shared = [], [], []
        for i, key in enumerate(keys):
            options = self.pairs.get(key)
            if not options:
                continue
            partner, entity = options[int(rng.integers(len(options)))]
            img = self.image(partner)
            if img is not None:
                rows.append(i)
                images.append(img)
                shared.append(entity)
        return rows, images, shared
