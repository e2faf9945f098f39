"""Benchmark training ingest: img/s delivered to a loop that does nothing, 512-px JPEG shards to
224-px crops, the Ray Data plan (``pipelines/ingest.py``) against today's loader.

    python -m tools.bench ingest [--shards 8] [--per-shard 128] [--batch 32] [--draft image]

Shards are generated in a temp dir in the real format (img2dataset webdataset ``.tar`` +
``.parquet`` + ``_stats.json``, pseudo-mask parquet with 28x28 label PNGs, entity-text
parquet): smooth random colour fields with texture, JPEG quality 90, about as costly to decode
as photos. Measured, all in this run:

- ``current``: the old streaming loader (``old_stream``) + ``make_batch`` (decode to 224,
  float crop), one process, one torch thread: img/s = img/s per core.
- ``local``: the new per-batch functions in this process, one core (no Ray).
- ``ray_1``/``ray_2``: the Ray Data plan on a local Ray with 1 and 2 CPUs (one task per CPU);
  the consuming loop is this process.

Each new-path rate is ``RankIngest.batches`` (what the train stage iterates) over one whole
Ray dataset as training plans it (``IngestConfig.dataset_rows`` rows of consecutive epochs:
8 epochs of the default 1,024 samples; ``--epochs`` overrides), after a warm-up epoch (Ray
started, worker processes up), timed from the first request so that prefetching cannot run
ahead of the clock and the dataset's start-up is inside it; ``--dataset-rows 1`` gives the
layout before (one dataset per epoch). The current loader's is ``--current-batches`` batches
from its start. The last stdout line is
JSON with ``img_per_s_per_core`` (the Ray plan at 2 CPUs, images per CPU-second of every process that
ran: driver, Ray's GCS/raylet/workers, tasks; ``_1``: at 1 CPU), ``ratio`` (that over the
current loader's images per CPU-second) and ``scaling_1_to_2`` (ray_2 / ray_1 wall img/s).
Per-CPU-second figures measure the work, not the neighbours, on a shared machine; wall
figures and the scaling need an otherwise idle one (``load_avg_1m`` is in the JSON).
"""

from __future__ import annotations

import argparse
import io
import itertools
import json
import os
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from ovs.codecs import encode_label_png
from ovs.data.augment import AugmentConfig
from ovs.data.ingest import IngestConfig

_WORDS = "dog cat car tree boat person bus horse chair bottle sky grass water sand".split()


def synthetic_jpeg(rng: np.random.Generator, size: int, quality: int = 90) -> bytes:
    """A photo-like ``size x size`` JPEG: bilinear-upsampled colour field + grain."""
    coarse = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
    field = np.asarray(Image.fromarray(coarse).resize((size, size), Image.Resampling.BICUBIC))
    grain = rng.normal(0, 12, (size, size, 3))
    img = np.clip(field + grain, 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def write_shards(
    root: Path,
    shards: int,
    per_shard: int,
    size: int = 512,
    grid: int = 28,
    seed: int = 0,
    distinct: int = 64,
) -> tuple[Path, Path, Path]:
    """Shards + pseudo-masks + texts in the pipeline's formats under ``root``; returns
    ``(shard_dir, masks_dir, texts_dir)``. Images cycle through ``distinct`` generated JPEGs
    (decode cost does not depend on repeats; generating is slower than decoding)."""
    rng = np.random.default_rng(seed)
    pool = [synthetic_jpeg(rng, size) for _ in range(min(distinct, shards * per_shard))]
    dirs = tuple(root / d for d in ("shards", "masks", "texts"))
    for d in dirs:
        d.mkdir(parents=True, exist_ok=True)
    shard_dir, masks_dir, texts_dir = dirs
    for s in range(shards):
        stem = f"{s:05d}"
        keys = [f"{s:05d}{i:04d}" for i in range(per_shard)]
        texts = [" ".join(rng.choice(_WORDS, 4)) for _ in keys]
        with tarfile.open(shard_dir / f"{stem}.tar", "w") as tar:
            for i, (key, text) in enumerate(zip(keys, texts, strict=True)):
                members = {
                    "jpg": pool[(s * per_shard + i) % len(pool)],
                    "txt": text.encode(),
                    "json": json.dumps({"key": key}).encode(),
                }
                for ext, data in members.items():
                    info = tarfile.TarInfo(f"{key}.{ext}")
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
        pq.write_table(
            pa.table({"key": keys, "caption": texts, "status": ["success"] * per_shard}),
            shard_dir / f"{stem}.parquet",
        )
        (shard_dir / f"{stem}_stats.json").write_text(json.dumps({"successes": per_shard}))
        blocks = rng.integers(0, 8, (per_shard, grid // 4, grid // 4), dtype=np.uint8)
        pngs = [encode_label_png(np.kron(b, np.ones((4, 4), np.uint8))) for b in blocks]
        pq.write_table(
            pa.table({"key": keys, "label_png": pngs, "status": ["ok"] * per_shard}),
            masks_dir / f"{stem}.parquet",
        )
        pq.write_table(
            pa.table(
                {
                    "key": keys,
                    "text": texts,
                    "keep": [True] * per_shard,
                    "status": ["ok"] * per_shard,
                    "nouns": [t.split() for t in texts],
                }
            ),
            texts_dir / f"{stem}.parquet",
        )
    return shard_dir, masks_dir, texts_dir


def _tree_cpu_seconds() -> float:
    """CPU seconds (user + system) of this process and all its descendants (Ray's GCS,
    raylet and workers when this process started Ray), from ``/proc``; 0 where there is none."""
    stats: dict[int, tuple[int, float]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        stats[int(stat.parent.name)] = (int(fields[1]), int(fields[11]) + int(fields[12]))
    tree, frontier = {os.getpid()}, [os.getpid()]
    while frontier:
        parent = frontier.pop()
        kids = [pid for pid, (ppid, _) in stats.items() if ppid == parent and pid not in tree]
        tree.update(kids)
        frontier.extend(kids)
    ticks = os.sysconf("SC_CLK_TCK")
    return sum(stats[pid][1] for pid in tree if pid in stats) / ticks


def _time_batches(batches: Iterable, size_of: Callable[[Any], int]) -> tuple[float, float]:
    """``(img/s wall, img per CPU-second of the whole process tree)`` of iterating
    ``batches`` to the end, from the first request (pipeline fill included: a prefetching
    pipeline cannot run ahead of the clock)."""
    count, t0, c0 = 0, time.perf_counter(), _tree_cpu_seconds()
    for batch in batches:
        count += size_of(batch)
    wall, cpu = time.perf_counter() - t0, _tree_cpu_seconds() - c0
    return count / wall, count / max(cpu, 1e-9)


def old_stream(
    shards: list[Path],
    dirs: tuple[Path, Path],
    image_size: int,
    batch: int,
    buffer_size: int,
    rng: np.random.Generator,
) -> Iterator[list]:
    """The streaming loader the train loop used before the Ray Data ingest (one epoch): shards
    in a random order, each sample decoded whole in this thread (``iter_samples``), drawn
    without replacement from a shuffle buffer of ``buffer_size`` samples."""
    from ovs.data.train_data import JoinStats, iter_samples

    stats = JoinStats()
    buffer: list = []
    fill = max(batch, buffer_size)

    def draw() -> list:
        out = []
        for _ in range(batch):  # swap-remove
            j = int(rng.integers(len(buffer)))
            buffer[j], buffer[-1] = buffer[-1], buffer[j]
            out.append(buffer.pop())
        return out

    for i in rng.permutation(len(shards)):
        for s in iter_samples([shards[i]], dirs[0], dirs[1], image_size, stats):
            buffer.append(s)
            if len(buffer) >= fill:
                yield draw()
    while len(buffer) >= batch:
        yield draw()


def current_rate(
    dirs: tuple[Path, Path, Path], batch: int, n: int, seed: int
) -> tuple[float, float]:
    """The old streaming loader (:func:`old_stream` + ``make_batch``: decode to 224, float
    crop), one process, one thread; ``n`` batches with a one-batch shuffle buffer."""
    import torch

    from ovs.data.shards import list_shards
    from ovs.training import TrainConfig, make_batch

    torch.set_num_threads(1)
    cfg = TrainConfig(augment=AugmentConfig(size=224, scale=(0.08, 1.0)))
    shard_dir, masks_dir, texts_dir = dirs
    rng = np.random.default_rng(seed)  # augmentation (the stream draws from its own)
    stream = old_stream(
        list_shards(shard_dir), (masks_dir, texts_dir), 224, batch, batch,
        np.random.default_rng(seed),
    )  # fmt: skip
    batches = itertools.islice(stream, n)
    return _time_batches(
        (make_batch(samples, cfg.augment, rng) for samples in batches), lambda b: b[0].shape[0]
    )


def dataset_epochs(cfg: IngestConfig, epoch_rows: int) -> int:
    """Epochs of ``epoch_rows`` rows that ``RankIngest.batches`` plans into one dataset."""
    return max(1, -(-cfg.dataset_rows // epoch_rows))


def ingest_rate(
    dirs: tuple[Path, Path, Path], cfg: IngestConfig, seed: int, executor: str, epochs: int
) -> tuple[float, float]:
    """``epochs`` epochs of :class:`pipelines.ingest.RankIngest.batches` (what the train stage
    iterates) from a fresh iterator at the start of epoch 1, after a warm-up epoch (Ray's
    worker processes started, the per-process shard tables cached). The timed iterator's
    first dataset starts inside the clock; with ``epochs = dataset_epochs(...)`` exactly one
    whole dataset runs: its start-up once, as in training."""
    from ovs.data.shards import list_shards
    from pipelines.ingest import RankIngest

    shard_dir, masks_dir, texts_dir = dirs
    ingest = RankIngest(list_shards(shard_dir), masks_dir, texts_dir, cfg, seed, executor=executor)
    for _ in ingest.epoch(0):
        pass
    batches = itertools.islice(ingest.batches(ingest.per_epoch), epochs * ingest.per_epoch)
    return _time_batches(batches, lambda b: b.images.shape[0])


def ray_rate(
    dirs: tuple[Path, Path, Path], cfg: IngestConfig, seed: int, cpus: int, epochs: int
) -> tuple[float, float]:
    import ray

    ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=False)
    try:
        return ingest_rate(dirs, cfg, seed, "ray", epochs)
    finally:
        ray.shutdown()


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m tools.bench ingest")
    p.add_argument("--shards", type=int, default=8)
    p.add_argument("--per-shard", type=int, default=128)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--chunk", type=int, default=128)
    p.add_argument("--draft", default="image", choices=["image", "crop", "off"])
    p.add_argument("--current-batches", type=int, default=10)
    p.add_argument(
        "--dataset-rows", type=int, default=IngestConfig.dataset_rows,
        help="IngestConfig.dataset_rows (1: one dataset per epoch, the layout before)",
    )  # fmt: skip
    p.add_argument("--epochs", type=int, default=0, help="epochs timed (0: one whole dataset)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    import cv2

    cv2.setNumThreads(1)  # the in-process rates are single-core rates
    with tempfile.TemporaryDirectory() as d:
        t0 = time.perf_counter()
        dirs = write_shards(Path(d), args.shards, args.per_shard)
        print(f"wrote {args.shards} x {args.per_shard} 512-px samples in "
              f"{time.perf_counter() - t0:.1f}s", flush=True)  # fmt: skip
        cfg = IngestConfig(
            augment=AugmentConfig(size=224, scale=(0.08, 1.0)),
            batch_size=args.batch,
            window_shards=2,
            chunk_rows=args.chunk,
            draft=args.draft,
            dataset_rows=args.dataset_rows,
        )
        epochs = args.epochs or dataset_epochs(cfg, args.shards * args.per_shard)
        rates, cpu = {}, {}
        rates["current"], cpu["current"] = current_rate(
            dirs, args.batch, args.current_batches, args.seed
        )
        rates["local"], cpu["local"] = ingest_rate(dirs, cfg, args.seed, "local", epochs)
        for cpus in (1, 2):
            rates[f"ray_{cpus}"], cpu[f"ray_{cpus}"] = ray_rate(dirs, cfg, args.seed, cpus, epochs)
        for k in rates:
            print(f"{k:8s} {rates[k]:8.1f} img/s wall  {cpu[k]:8.1f} img per CPU-s", flush=True)
    result = {
        "benchmark": "ingest",
        "draft": args.draft,
        "batch": args.batch,
        "dataset_rows": args.dataset_rows,
        "epochs_timed": epochs,
        "cpus_visible": os.cpu_count(),
        "load_avg_1m": round(os.getloadavg()[0], 2),
        "img_per_s": {k: round(v, 1) for k, v in rates.items()},
        "img_per_cpu_s": {k: round(v, 1) for k, v in cpu.items()},
        # per core: images per CPU-second of everything that ran (driver, Ray, tasks), which
        # on a shared machine measures the work, not the neighbours
        "img_per_s_per_core": round(cpu["ray_2"], 1),
        "img_per_s_per_core_1": round(cpu["ray_1"], 1),
        "current_img_per_s_per_core": round(cpu["current"], 1),
        "ratio": round(cpu["ray_2"] / cpu["current"], 2),
        "ratio_wall_1_core": round(rates["ray_1"] / rates["current"], 2),
        "scaling_1_to_2": round(rates["ray_2"] / rates["ray_1"], 2),
    }
    print(json.dumps(result))
    return 0
