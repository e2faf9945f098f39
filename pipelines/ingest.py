"""Training ingest on Ray Data: one rank's batches, decoded and augmented in CPU tasks.

    ingest = RankIngest(shards_for_rank(shard_dir, rank, world), masks_dir, texts_dir,
                        IngestConfig(augment=cfg.augment, batch_size=cfg.batch_size), seed, rank)
    for batch in ingest.batches(start_step=step):       # endless, epoch after epoch
        images = as_float(batch.images.to(device))      # uint8 [B,3,S,S] -> float [0, 1]
        labels = batch.labels.to(device)                # int64 [B,S,S]
        ...; ingest.counts                              # used / undecodable / no_text / ...

Each group of consecutive epochs (at least ``IngestConfig.dataset_rows`` rows; one epoch when
epochs are larger) is one Ray dataset built in the rank's own process (inside a Ray Train
worker): ``from_items`` over the epochs' :class:`ovs.data.ingest.Chunk` plans, one block per
chunk, and
one ``map_batches`` of :func:`ovs.data.ingest.decode_chunk` in Ray tasks (``num_cpus`` each,
no node constraint: they run on any node with free CPUs, CPU-only nodes included), executed
with ``preserve_order`` so blocks reach the rank in plan order; ``iter_batches`` prefetches
``prefetch_blocks`` blocks in Ray's background threads. Memory is bounded by the blocks in
flight (Ray Data's streaming backpressure), not by the dataset: there is no materialize and no
global shuffle, and the per-epoch plan is a list of row indices.

Why one dataset per rank and not ``datasets=`` + ``get_dataset_shard``: Ray Train V2 splits a
trainer dataset across workers with ``streaming_split``, which hands blocks to whichever rank
asks first, so which rank sees which sample depends on timing (not deterministic), and a
resume cannot skip to a position. Building the dataset in the worker from the rank's own shard
list (``shards_for_rank``) keeps the rank/sample assignment and the order fixed, lets every
epoch reshuffle, and lets a resume start mid-epoch without reading what it skips. The tasks
need CPUs the train workers do not hold (``cpus_per_worker`` reserves the worker's own).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ovs.data.ingest import (
    BatchAssembler,
    Chunk,
    EpochPlan,
    IngestBatch,
    IngestConfig,
    cached_join,
    decode_chunk,
    epoch_position,
    iter_local_blocks,
    join_shard,
    plan_epoch,
)


def decode_chunk_batch(
    batch: dict[str, np.ndarray], masks_dir: str, texts_dir: str, cfg: IngestConfig, seed: int
) -> dict[str, np.ndarray]:
    """Ray Data task body: one plan row (a chunk) -> one block of decoded, augmented rows."""
    import cv2

    cv2.setNumThreads(1)  # one task per CPU: no OpenCV thread pool inside a task
    chunk = Chunk(
        epoch=int(batch["epoch"][0]),
        window=int(batch["window"][0]),
        start=int(batch["start"][0]),
        shards=tuple(str(p) for p in batch["shards"][0]),
        sel=tuple(int(i) for i in batch["sel"][0]),
    )
    tables = [cached_join(p, masks_dir, texts_dir, cfg.require_keep) for p in chunk.shards]
    return decode_chunk(chunk, tables, cfg, seed)


def epoch_dataset(
    chunks: Sequence[Chunk],
    masks_dir: str,
    texts_dir: str,
    cfg: IngestConfig,
    seed: int,
    num_cpus: float = 1.0,
) -> Any:
    """The Ray Data plan of one epoch's chunks (lazy; nothing runs until iterated)."""
    import ray.data

    items = [
        {"epoch": c.epoch, "window": c.window, "start": c.start, "shards": list(c.shards),
         "sel": list(c.sel)}
        for c in chunks
    ]  # fmt: skip
    ds: Any = ray.data.from_items(items, override_num_blocks=max(1, len(items)))
    ds = ds.map_batches(
        decode_chunk_batch,
        fn_kwargs={"masks_dir": masks_dir, "texts_dir": texts_dir, "cfg": cfg, "seed": seed},
        batch_size=1,
        batch_format="numpy",
        compute=ray.data.TaskPoolStrategy(),
        num_cpus=num_cpus,
    )
    ds.context.execution_options.preserve_order = True  # blocks arrive in plan order
    return ds


class RankIngest:
    """Endless, deterministic, resumable batches for one rank (see the module docstring).

    ``executor="ray"`` runs the chunks in Ray Data tasks; ``"local"`` evaluates the same plan
    in this process (tests compare the two; single-process tools can use it).
    """

    def __init__(
        self,
        shards: Sequence[str | Path],
        masks_dir: str | Path,
        texts_dir: str | Path,
        cfg: IngestConfig,
        seed: int,
        rank: int = 0,
        num_cpus: float = 1.0,
        prefetch_blocks: int = 4,
        executor: str = "ray",
    ) -> None:
        if executor not in ("ray", "local"):
            raise ValueError(f"executor must be 'ray' or 'local', got {executor!r}")
        self.shards = [str(s) for s in shards]
        self.masks_dir, self.texts_dir = str(masks_dir), str(texts_dir)
        self.cfg, self.seed, self.rank = cfg, seed, rank
        self.num_cpus, self.prefetch_blocks, self.executor = num_cpus, prefetch_blocks, executor
        tables = [join_shard(s, masks_dir, texts_dir, cfg.require_keep) for s in self.shards]
        self.good = [t.good for t in tables]  # metadata only: pixels are read by the tasks
        self.bad = [t.counts() for t in tables]
        self.rows = int(sum(g.sum() for g in self.good))
        self.per_epoch = self.rows // cfg.batch_size
        if self.per_epoch < 1:
            bad = sum(self.bad, Counter())
            raise RuntimeError(
                f"fewer usable samples ({self.rows}) than one batch ({cfg.batch_size}) in "
                f"{len(self.shards)} shard(s): {dict(bad)}"
            )
        self.counts: Counter = Counter()

    def plan(self, epoch: int, skip_batches: int = 0) -> EpochPlan:
        return plan_epoch(
            self.shards,
            self.good,
            self.bad,
            self.cfg,
            self.seed,
            self.rank,
            epoch,
            skip_rows=skip_batches * self.cfg.batch_size,
        )

    def _blocks(self, chunks: list[Chunk]) -> Iterator[dict[str, np.ndarray]]:
        if self.executor == "local":
            yield from iter_local_blocks(
                chunks, self.masks_dir, self.texts_dir, self.cfg, self.seed
            )
            return
        ds = epoch_dataset(
            chunks, self.masks_dir, self.texts_dir, self.cfg, self.seed, self.num_cpus
        )
        yield from ds.iter_batches(
            batch_size=None, batch_format="numpy", prefetch_batches=self.prefetch_blocks
        )

    def epoch(self, epoch: int, skip_batches: int = 0) -> Iterator[IngestBatch]:
        """Batches ``skip_batches, skip_batches + 1, ...`` of ``epoch`` (one dataset)."""
        yield from self._group([(epoch, skip_batches)])

    def batches(self, start_step: int = 0) -> Iterator[IngestBatch]:
        """Endless batches from global batch ``start_step`` (= training steps done): epoch
        ``start_step // per_epoch``, then every later epoch reshuffled; consecutive epochs
        share one dataset until it holds ``cfg.dataset_rows`` rows."""
        epoch, skip = epoch_position(start_step, self.per_epoch)
        per_epoch_rows = self.per_epoch * self.cfg.batch_size
        while True:
            group: list[tuple[int, int]] = []
            rows = 0
            while not group or rows < self.cfg.dataset_rows:
                group.append((epoch, skip))
                rows += per_epoch_rows - skip * self.cfg.batch_size
                epoch, skip = epoch + 1, 0
            yield from self._group(group)

    def _group(self, group: list[tuple[int, int]]) -> Iterator[IngestBatch]:
        """The batches of ``(epoch, skip_batches)`` ... in order, all from one block stream.

        Each epoch keeps its own :class:`BatchAssembler` (its remainder is dropped, its
        positions checked) and adds its plan's metadata counts when its first batch is due;
        a block belongs to the epoch in its ``epoch`` column (a chunk never spans two)."""
        b = self.cfg.batch_size
        plans = [(e, skip, self.plan(e, skip)) for e, skip in group]
        blocks = self._blocks([c for _, _, plan in plans for c in plan.chunks])
        held: list[dict[str, np.ndarray]] = []  # the first block of the next epoch

        def blocks_of(epoch: int) -> Iterator[dict[str, np.ndarray]]:
            while True:
                block = held.pop() if held else next(blocks, None)
                if block is None:
                    return
                if len(block["pos"]) and int(block["epoch"][0]) != epoch:
                    held.append(block)
                    return
                yield block

        for epoch, skip, plan in plans:
            self.counts.update(plan.counts)
            assembler = BatchAssembler(b, self.counts)
            yield from assembler.batches(blocks_of(epoch), epoch, skip * b, skip)
