"""Stage ``entities``: spaCy over the downloaded captions, CC4M filter, cross-image pairs.

python pipelines/entities.py [--config conf/default.yaml] [--force] [entities.text_mode=nouns_verbs]

The shard mapper (:mod:`pipelines.shard_map`) runs one
:class:`~ovs.text.entities.ShardEntities` actor per core (spaCy loaded once per actor); each
call takes one shard, reads only its ``.txt`` members, and its table becomes
``<out>/entities/<stem>.parquet``, written atomically, so a rerun after a kill skips the shards
already written. The driver then builds,
over all shards, ``pairs.parquet`` (cross-image partners, :func:`ovs.text.cross_image.write_pairs`:
bucketed passes over scratch files, never the whole dataset's rows in memory),
``entity_freq.parquet`` and ``subset.parquet`` (keys passing the CC4M filter), reading one
shard at a time, and logs counts, the kept fraction and the top entities (table + bar chart)
to MLflow.
"""

from __future__ import annotations

import shutil
import sys
import time
from functools import partial
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ovs.data.shards import list_shards
from ovs.io import atomic_parquet_writer, atomic_write_parquet
from ovs.stage import Stage, StageContext
from ovs.text.cross_image import PAIRS_SCHEMA, entity_frequency, write_pairs
from ovs.text.entities import EntitiesConfig, ShardEntities, summarize
from pipelines.shard_map import ActorResources, WorkItem, map_items


def _extract_shards(ctx: StageContext, shards: list[Path], ent_dir: Path) -> int:
    """Run ``ShardEntities`` over the shards without an output yet; returns how many ran."""
    import ray

    cfg: EntitiesConfig = ctx.section
    items = [WorkItem(s.stem, {"tar": str(s)}, ent_dir / f"{s.stem}.parquet") for s in shards]
    cpus = int(ray.available_resources().get("CPU", 1)) or 1
    resources = ActorResources(actors=cfg.num_actors or cpus, num_cpus=1)
    return len(map_items(items, ShardEntities, {"cfg": cfg}, resources, ctx.progress).results)


def _bar_chart(freq: pa.Table, top: int = 20):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    head = freq.slice(0, top).to_pydict()
    fig, ax = plt.subplots(figsize=(8, 4))
    ax.bar(head["entity"], head["count"])
    ax.set_ylabel("kept samples")
    ax.set_title(f"top {len(head['entity'])} CC4M entities")
    ax.tick_params(axis="x", labelrotation=60)
    fig.tight_layout()
    return fig


def run(ctx: StageContext) -> dict:
    cfg: EntitiesConfig = ctx.section
    shards = list_shards(ctx.inputs["download"])
    ent_dir = ctx.out_dir / "entities"
    ent_dir.mkdir(parents=True, exist_ok=True)
    started = time.time()
    ran = _extract_shards(ctx, shards, ent_dir)
    seconds = time.time() - started

    counts: dict[str, int] = {"shards": len(shards), "shards_run": ran}
    paths = [ent_dir / f"{s.stem}.parquet" for s in shards]
    rows = 0
    with atomic_parquet_writer(
        ctx.out_dir / "subset.parquet", pa.schema([("key", pa.string())])
    ) as subset:
        for path in paths:  # one shard's table at a time
            t = pq.read_table(path, columns=["key", "caption", "status", "keep"])
            for k, v in summarize(t.select(["caption", "status", "keep"]), cfg.max_chars).items():
                counts[k] = counts.get(k, 0) + v
            subset.write_table(t.filter(pc.fill_null(t.column("keep"), False)).select(["key"]))
            rows += t.num_rows

    entity_tables = [
        (p.stem, partial(pq.read_table, p, columns=["key", "entities", "keep"])) for p in paths
    ]
    pair_rows, paired, partners = 0, 0, 0

    def write(part: pa.Table) -> None:
        nonlocal pair_rows, paired, partners
        lens = pc.list_value_length(part.column("partner_keys")).to_numpy(zero_copy_only=False)
        pair_rows += part.num_rows
        paired, partners = paired + int((lens > 0).sum()), partners + int(lens.sum())
        writer.write_table(part)

    scratch = ctx.out_dir / "_cross_image"  # bucket files; a killed run's are cleared here
    shutil.rmtree(scratch, ignore_errors=True)
    with atomic_parquet_writer(ctx.out_dir / "pairs.parquet", PAIRS_SCHEMA) as writer:
        entity_counts = write_pairs(
            entity_tables,
            write,
            scratch,
            cfg.pairs_per_sample,
            cfg.seed,
            rows,
            cfg.pairs_bucket_rows,
        )
    shutil.rmtree(scratch)
    freq = entity_frequency(entity_counts)
    atomic_write_parquet(ctx.out_dir / "entity_freq.parquet", freq)
    counts["entities_distinct"] = freq.num_rows
    counts["paired_samples"] = paired
    rows = max(counts.get("rows", 0), 1)
    metrics = {
        "kept_fraction": counts.get("kept", 0) / rows,
        "ok_fraction": counts.get("status_ok", 0) / rows,
        "mean_partners": partners / pair_rows if pair_rows else 0.0,
    }
    if ran:
        metrics["captions_per_s"] = counts["rows"] * ran / max(len(shards), 1) / max(seconds, 1e-9)
    ctx.tracker.log_table(freq.slice(0, 50).to_pydict(), "top_entities.json")
    if freq.num_rows:
        import matplotlib.pyplot as plt

        fig = _bar_chart(freq)
        ctx.tracker.log_figure(fig, "top_entities.png")
        plt.close(fig)
    return {"counts": counts, "metrics": metrics}


STAGE = Stage(
    "entities",
    run=run,
    section=EntitiesConfig,
    inputs=("download",),
    description="spaCy nouns/verbs/chunks, CC4M filter, cross-image pairs",
)

if __name__ == "__main__":
    from pipelines.common import main

    sys.exit(main("entities"))
