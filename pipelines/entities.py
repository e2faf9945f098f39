"""Stage ``entities``: spaCy over the downloaded captions, CC4M filter, cross-image pairs.

python pipelines/entities.py [--config conf/default.yaml] [--force] [entities.text_mode=nouns_verbs]

The shard mapper (:mod:`pipelines.shard_map`) runs one
:class:`~ovs.text.entities.ShardEntities` actor per core (spaCy loaded once per actor); each
call takes one shard, reads only its ``.txt`` members, and its table becomes
``<out>/entities/<stem>.parquet``, written atomically, so a rerun after a kill skips the shards
already written. The driver then builds,
over all shards, ``pairs.parquet`` (cross-image partners), ``entity_freq.parquet`` and
``subset.parquet`` (keys passing the CC4M filter), and logs counts, the kept fraction and the
top entities (table + bar chart) to MLflow.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ovs.data.shards import list_shards
from ovs.io import atomic_write_parquet
from ovs.stage import Stage, StageContext
from ovs.text.cross_image import build_pairs, entity_frequency
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
    kept = []
    for s in shards:
        path = ent_dir / f"{s.stem}.parquet"
        for k, v in summarize(
            pq.read_table(path, columns=["caption", "status", "keep"]), cfg.max_chars
        ).items():
            counts[k] = counts.get(k, 0) + v
        t = pq.read_table(path, columns=["key", "entities", "keep"])
        kept.append(t.filter(t.column("keep")))
    table = (
        pa.concat_tables(kept)
        if kept
        else pa.table(
            {
                "key": pa.array([], pa.string()),
                "entities": pa.array([], pa.list_(pa.string())),
                "keep": pa.array([], pa.bool_()),
            }
        )
    )
    atomic_write_parquet(ctx.out_dir / "subset.parquet", table.select(["key"]))
    freq = entity_frequency(table)
    atomic_write_parquet(ctx.out_dir / "entity_freq.parquet", freq)
    pairs = build_pairs(table, n=cfg.pairs_per_sample, seed=cfg.seed)
    atomic_write_parquet(ctx.out_dir / "pairs.parquet", pairs)

    n_partners = pc.list_value_length(pairs.column("partner_keys")).to_numpy(zero_copy_only=False)
    counts["entities_distinct"] = freq.num_rows
    counts["paired_samples"] = int((n_partners > 0).sum())
    rows = max(counts.get("rows", 0), 1)
    metrics = {
        "kept_fraction": counts.get("kept", 0) / rows,
        "ok_fraction": counts.get("status_ok", 0) / rows,
        "mean_partners": float(n_partners.mean()) if len(n_partners) else 0.0,
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
