"""Stage ``pseudo_masks``: features + batched K-means per image on Ray actors (S-Seg §3.3.1).

python pipelines/pseudo_masks.py [--config conf/default.yaml] [pseudo_masks.extractor=dino_vits8 ...]

Input: the ``download`` stage's img2dataset shards. The shard mapper (:mod:`pipelines.shard_map`)
runs ``num_actors`` :class:`~ovs.pseudo_masks.masker.ShardMasker` actors (``num_gpus`` /
``num_cpus`` each; a :class:`~ovs.pseudo_masks.masker.PseudoMasker` loaded once per actor) over
the shards that have no output yet: each call reads one shard's JPEG bytes, decodes them (PIL,
or on the actor's device with ``decode: device``: nvJPEG on GPUs,
``ovs.pseudo_masks.device_decode``), masks them ``batch_size`` images at a time, and its table
becomes ``<out>/masks/<stem>.parquet`` (``MASK_SCHEMA``: ``key, label_png, grid_h, grid_w, k,
status``, in tar order), written atomically, so a rerun resumes by skipping the shards already
written. When the ``world`` stage is an input (``oracle_images > 0``), the labelled eval split
goes through an actor pool of :class:`~ovs.pseudo_masks.masker.ImageMasker` (same masker, same
per-image seeds) and the stage reports ``oracle_miou`` and logs an image / pseudo-mask / GT grid.
"""

from __future__ import annotations

import sys
import time
from collections import Counter
from pathlib import Path

from ovs.codecs import decode_label_png
from ovs.config import Config
from ovs.pseudo_masks.masker import (
    STATUS_BAD_IMAGE,
    STATUS_DECODE_ERROR,
    STATUS_OK,
    ImageMasker,
    PseudoMaskConfig,
    ShardMasker,
)
from ovs.pseudo_masks.oracle import oracle_miou, pseudo_mask_figure
from ovs.stage import Stage, StageContext
from pipelines.shard_map import ActorResources, MapResult, WorkItem, map_items


def _resources(cfg: PseudoMaskConfig) -> ActorResources:
    return ActorResources(cfg.num_actors, num_cpus=cfg.num_cpus, num_gpus=cfg.num_gpus)


def mask_shards(ctx: StageContext, shards: list[Path], out_dir: Path) -> MapResult:
    """Mask every shard without an output yet; the result's values are images per shard."""
    cfg: PseudoMaskConfig = ctx.section
    items = [WorkItem(s.stem, {"tar": str(s)}, out_dir / f"{s.stem}.parquet") for s in shards]
    return map_items(items, ShardMasker, {"cfg": cfg}, _resources(cfg), ctx.progress)


def _inputs(cfg: Config) -> tuple[str, ...]:
    section = getattr(cfg, "pseudo_masks", None)
    return ("download", "world") if section is None or section.oracle_images > 0 else ("download",)


def _oracle(ctx: StageContext, cfg: PseudoMaskConfig) -> dict[str, float]:
    from ovs.data import world

    root = ctx.inputs["world"]
    split = world.report_split(root)  # eval, or val in a tuning run
    samples = world.load_split(root, split, limit=cfg.oracle_images)
    num_classes = len(world.class_names(root))
    paths = [str(root / split / "images" / f"{s['id']}.png") for s in samples]
    step = max(1, cfg.batch_size)
    items = [
        WorkItem(f"{i // step:05d}", {"paths": paths[i : i + step]})
        for i in range(0, len(paths), step)
    ]
    done = map_items(items, ImageMasker, {"cfg": cfg}, _resources(cfg), ctx.progress, "oracle")
    pngs = [png for it in items for png in done.results[it.key]]
    # ImageMasker gives b"" for an unusable image; the oracle's images are the world
    # generator's own PNGs, so one is a bug to report, not a sample to skip.
    if not all(pngs):
        raise ValueError(f"{pngs.count(b'')} oracle images could not be masked")
    maps = [decode_label_png(png) for png in pngs]
    gts = [s["label"] for s in samples]
    miou = oracle_miou(maps, gts, num_classes)
    n = cfg.figure_images
    fig = pseudo_mask_figure([s["image"] for s in samples[:n]], maps[:n], gts[:n], num_classes, n)
    ctx.tracker.log_figure(fig, "pseudo_masks_grid.png")
    return {"oracle_miou": miou, "oracle_images": float(len(samples))}


def run(ctx: StageContext) -> dict:
    import pyarrow.parquet as pq

    from ovs.data.shards import list_shards

    cfg: PseudoMaskConfig = ctx.section
    shards = list_shards(ctx.inputs["download"])
    out_dir = ctx.out_dir / "masks"
    start = time.perf_counter()
    masked = mask_shards(ctx, shards, out_dir)
    seconds = time.perf_counter() - start
    counts = {"shards": len(shards), "shards_resumed": len(masked.resumed)}
    processed = sum(masked.results.values())
    metrics = {"img_per_s": processed / seconds if processed else 0.0}
    if "world" in ctx.inputs and cfg.oracle_images > 0:
        metrics.update(_oracle(ctx, cfg))
    # Counts cover every shard, also those a killed attempt wrote: a resumed run's manifest
    # says what an uninterrupted run's does.
    totals = Counter({STATUS_OK: 0, STATUS_DECODE_ERROR: 0, STATUS_BAD_IMAGE: 0})
    for s in shards:
        status = pq.read_table(out_dir / f"{s.stem}.parquet", columns=["status"]).column("status")
        totals.update(status.to_pylist())
    counts.update({"images_" + k: v for k, v in totals.items()})
    return {"counts": counts, "metrics": metrics}


STAGE = Stage(
    "pseudo_masks",
    run=run,
    section=PseudoMaskConfig,
    inputs=_inputs,
    description="DINO (or pixel) features + batched K-means pseudo-masks per image (Ray Data)",
)

if __name__ == "__main__":
    from pipelines.common import main

    sys.exit(main("pseudo_masks"))
