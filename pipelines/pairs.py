"""Stage ``pairs``: OVSeg mask-category pairs, each caption noun with its best pseudo-mask.

    python pipelines/pairs.py [--config conf/default.yaml] [--force] [pairs.scorer=clip ...]

Inputs: the ``download`` shards (images), ``entities`` (caption nouns), ``pseudo_masks``
(the candidate masks) and, for the default S-Seg scorer, ``train`` (its ``model/latest.pt``).
The shard mapper (:mod:`pipelines.shard_map`) runs ``num_actors``
:class:`~ovs.pairs.maker.ShardPairer` actors (``num_gpus`` / ``num_cpus`` each; the scorer
loaded once per actor) over whole shards; each shard's table becomes
``<out>/pairs/<stem>.parquet`` (``PAIRS_SCHEMA``: ``key, noun, mask_id, score, mask_area``;
the shard's counts in the parquet metadata), written atomically, so a rerun skips the shards
already written. Logged: counts of pairs and unique nouns, top nouns, a gallery of
pairs; with the ``world`` stage as input also ``pair_precision`` (chosen mask's majority GT
class == the noun's class, on the world's train labels) next to the largest-mask,
random-mask and oracle baselines on the same pairs, and a precision-vs-threshold table.
See :mod:`ovs.pairs.maker` and :mod:`ovs.pairs.precision`.
"""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING

from ovs.pairs.maker import PairsConfig, shard_counts
from ovs.stage import Stage, StageContext
from pipelines.shard_map import ActorResources, WorkItem, map_items

if TYPE_CHECKING:
    from pipelines.graph import ExperimentConfig  # the root type; graph imports this module


def _inputs(cfg: ExperimentConfig) -> tuple[str, ...]:
    section = getattr(cfg, "pairs", None)
    names = ["download", "entities", "pseudo_masks"]
    if section is None or (section.scorer == "sseg" and not section.checkpoint):
        names.append("train")
    if "world" in cfg.pipeline.stages:
        names.insert(0, "world")
    return tuple(names)


def _make_pairs(ctx: StageContext, shards: list[Path], out_dir: Path) -> tuple[int, int, float]:
    """Run the actors over the shards without an output yet; returns (shards run, samples
    they held, seconds)."""
    from ovs.pairs.maker import ShardPairer

    cfg: PairsConfig = ctx.section
    checkpoint = None
    if cfg.scorer == "sseg":
        checkpoint = cfg.checkpoint or str(ctx.inputs["train"] / "model" / "latest.pt")
    masks, ents = ctx.inputs["pseudo_masks"] / "masks", ctx.inputs["entities"] / "entities"
    items = [
        WorkItem(
            s.stem,
            {
                "tar": str(s),
                "masks": str(masks / f"{s.stem}.parquet"),
                "entities": str(ents / f"{s.stem}.parquet"),
            },
            out_dir / f"{s.stem}.parquet",
        )
        for s in shards
    ]
    resources = ActorResources(cfg.num_actors, num_cpus=cfg.num_cpus, num_gpus=cfg.num_gpus)
    init = {"cfg": cfg, "checkpoint": checkpoint}
    done = map_items(items, ShardPairer, init, resources, ctx.progress)
    samples = sum(shard_counts(out_dir / f"{k}.parquet").get("samples", 0) for k in done.results)
    return len(done.results), samples, done.seconds


def _world_metrics(ctx: StageContext, shards: list[Path], out_dir: Path) -> dict[str, float]:
    import numpy as np
    import ray

    from ovs.data import world
    from ovs.pairs.precision import (
        SCORE_BINS,
        ShardPrecision,
        noun_classes,
        precision_curve_binned,
        precision_metrics,
    )

    cfg: PairsConfig = ctx.section
    root = ctx.inputs["world"]
    masks = ctx.inputs["pseudo_masks"] / "masks"
    items = [
        WorkItem(
            s.stem,
            {
                "pairs": str(out_dir / f"{s.stem}.parquet"),
                "masks": str(masks / f"{s.stem}.parquet"),
                "tar": str(s),
            },
        )
        for s in shards
    ]
    init = {
        "gt_dir": str(root / "train" / "labels"),
        "noun_to_class": noun_classes(world.class_names(root)),
        "min_area": cfg.min_mask_area,
    }
    cpus = int(ray.available_resources().get("CPU", 1)) or 1
    done = map_items(
        items, ShardPrecision, init, ActorResources(cpus), ctx.progress, "precision shards"
    )
    total: Counter = Counter()
    score_hist = np.zeros(SCORE_BINS, np.int64)  # a fixed size per stage, not a score per pair
    hit_hist = np.zeros(SCORE_BINS, np.int64)
    for r in done.results.values():
        score_hist += r.pop("score_hist")
        hit_hist += r.pop("hit_hist")
        total.update(r)
    metrics = precision_metrics(total)
    metrics["eval_class_pairs"] = float(total.get("class_pairs", 0))
    metrics["eval_no_gt_pairs"] = float(total.get("no_gt", 0))
    curve = precision_curve_binned(score_hist, hit_hist)
    ctx.tracker.log_table(curve, "precision_vs_threshold.json")
    return metrics


def _gallery(ctx: StageContext, shards: list[Path], out_dir: Path) -> None:
    from ovs.pairs.precision import gallery_items, noun_classes, pairs_gallery

    cfg: PairsConfig = ctx.section
    if cfg.gallery_pairs <= 0:
        return
    gt_dir, noun_to_class = None, None
    if "world" in ctx.inputs:
        from ovs.data import world

        gt_dir = ctx.inputs["world"] / "train" / "labels"
        noun_to_class = noun_classes(world.class_names(ctx.inputs["world"]))
    for s in shards:
        items = gallery_items(
            out_dir / f"{s.stem}.parquet",
            ctx.inputs["pseudo_masks"] / "masks" / f"{s.stem}.parquet",
            s,
            cfg.gallery_pairs,
            gt_dir,
            noun_to_class,
        )
        if items:
            ctx.tracker.log_figure(pairs_gallery(items), "pairs_gallery.png")
            return


def run(ctx: StageContext) -> dict:
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from ovs.data.shards import list_shards

    shards = list_shards(ctx.inputs["download"])
    out_dir = ctx.out_dir / "pairs"
    ran, processed, seconds = _make_pairs(ctx, shards, out_dir)
    counts: Counter = Counter({"shards": len(shards), "shards_resumed": len(shards) - ran})
    for s in shards:  # totals over every shard, resumed ones included
        counts.update(shard_counts(out_dir / f"{s.stem}.parquet"))
    # Noun counts shard by shard (one shard's column in memory at a time, one counter entry
    # per distinct noun), not every pair's noun concatenated on the driver.
    noun_counts: Counter = Counter()
    for s in shards:
        column = pq.read_table(out_dir / f"{s.stem}.parquet", columns=["noun"]).column("noun")
        if len(column):
            noun_counts.update(
                {
                    r["values"]: r["counts"]
                    for r in pc.value_counts(column.combine_chunks()).to_pylist()
                }
            )
    freq = [{"values": k, "counts": v} for k, v in noun_counts.items()]
    freq.sort(key=lambda r: (-r["counts"], r["values"]))
    counts["unique_nouns"] = len(freq)
    samples = max(counts.get("samples", 0), 1)
    metrics: dict[str, float] = {
        "pairs_per_sample": counts.get("pairs", 0) / samples,
        "paired_fraction": counts.get("paired_samples", 0) / samples,
        "kept_noun_fraction": counts.get("pairs", 0) / max(counts.get("nouns_scored", 0), 1),
    }
    if ran and seconds > 0:
        metrics["img_per_s"] = processed / seconds
    if "world" in ctx.inputs:
        metrics.update(_world_metrics(ctx, shards, out_dir))
    ctx.tracker.log_table(
        {"noun": [r["values"] for r in freq[:50]], "pairs": [r["counts"] for r in freq[:50]]},
        "top_nouns.json",
    )
    _gallery(ctx, shards, out_dir)
    return {"counts": dict(counts), "metrics": metrics}


STAGE = Stage(
    "pairs",
    run=run,
    section=PairsConfig,
    inputs=_inputs,
    description="OVSeg mask-category pairs: best pseudo-mask per caption noun",
)

if __name__ == "__main__":
    from pipelines.common import main

    sys.exit(main("pairs"))
