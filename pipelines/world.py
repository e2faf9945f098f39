"""Stage ``world``: generate the synthetic caption world (the embedded default dataset).

python pipelines/world.py [--config conf/default.yaml] [--force] [world.num_train=500 ...]

With ``world.export_dir`` set it also writes the world in the layouts of CC12M's URL list and
of VOC / Context / COCO-Object (``ovs.data.world_export``) there.
"""

from __future__ import annotations

import sys

from ovs.data import world
from ovs.data.world import WorldConfig
from ovs.stage import Stage, StageContext


def run(ctx: StageContext) -> dict:
    cfg = ctx.section
    counts = world.generate(cfg, ctx.out_dir, progress=ctx.progress)
    if cfg.export_dir:
        # Outside the stage directory by design: configs name these paths as they name the real
        # datasets' (conf/cc12m_local.yaml). Deterministic, every file atomic, so a rerun that
        # regenerates the world rewrites identical files.
        from ovs.data.world_export import export

        counts.update(export(ctx.out_dir, cfg.export_dir))
    # A look at the data: 16 images with their captions.
    import numpy as np

    samples = world.load_split(ctx.out_dir, "train", limit=16)
    grid = np.concatenate(
        [
            np.concatenate([s["image"] for s in samples[r * 4 : r * 4 + 4]], 1)
            for r in range(len(samples) // 4)
        ],
        0,
    )
    ctx.tracker.log_image(grid, "world_samples.png")
    import pyarrow.parquet as pq

    urls = pq.ParquetFile(ctx.out_dir / "train" / "urls.parquet")  # the first 16, not all
    first = next(urls.iter_batches(batch_size=16, columns=["caption"]), None)
    captions = first.column("caption").to_pylist() if first is not None else []
    ctx.tracker.log_table({"caption": captions}, "world_captions.json")
    return {"counts": counts}


STAGE = Stage(
    "world", run=run, section=WorldConfig, description="generate the synthetic caption world"
)

if __name__ == "__main__":
    from pipelines.common import main

    sys.exit(main("world"))
