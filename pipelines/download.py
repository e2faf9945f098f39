"""Stage ``download``: img2dataset into the stage directory (webdataset shards, unchanged).

python pipelines/download.py [--config conf/default.yaml] [--force] [download.image_size=96 ...]

Empty ``download.url_list`` (the embedded default) downloads the synthetic world's train URL
list (``file://`` URLs, which img2dataset fetches like http) and keeps its ``id`` column. A
headerless csv/tsv list (``download.header: false``, ``download.columns: [url, caption]``, as
CC12M's ``cc12m.tsv``) is converted to parquet first (``ovs.data.download``). A rerun
after a kill resumes (img2dataset incremental mode: finished shards are kept, the rest redone).
At cluster scale set ``download.distributor=ray`` (one Ray task per shard; the workdir must be
on a shared filesystem).
"""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path

from ovs.data.download import DownloadConfig, download
from ovs.stage import Stage, StageContext


def _config(ctx: StageContext) -> DownloadConfig:
    cfg: DownloadConfig = ctx.section
    if cfg.url_list:
        return cfg
    urls = ctx.inputs["world"] / "train" / "urls.parquet"
    return replace(
        cfg, url_list=[str(urls)], save_additional_columns=["id"], header=True, columns=[]
    )


def _sample_grid(out_dir: Path, n: int = 16):
    """Up to ``n`` downloaded images of the first shard as one uint8 grid (4 per row)."""
    import numpy as np

    from ovs.codecs import decode_rgb
    from ovs.data.shards import iter_shard, list_shards

    shards = list_shards(out_dir)
    if not shards:
        return None
    imgs = []
    for s in iter_shard(shards[0], ("jpg",)):
        image = decode_rgb(s.get("jpg"))
        if image is not None:
            imgs.append(image)
        if len(imgs) == n:
            break
    rows = len(imgs) // 4
    if rows == 0 or len({i.shape for i in imgs}) != 1:
        return None
    return np.concatenate([np.concatenate(imgs[r * 4 : r * 4 + 4], 1) for r in range(rows)], 0)


def run(ctx: StageContext) -> dict:
    cfg = _config(ctx)
    result = download(cfg, ctx.out_dir)
    errors = result.pop("top_errors")
    ctx.tracker.log_table(
        {"error_message": list(errors), "count": list(errors.values())}, "download_errors.json"
    )
    grid = _sample_grid(ctx.out_dir)
    if grid is not None:
        ctx.tracker.log_image(grid, "download_samples.png")
    total = max(result["count"], 1)
    metrics = {
        "success_rate": result["success"] / total,
        "failed_to_download_rate": result["failed_to_download"] / total,
        "failed_to_resize_rate": result["failed_to_resize"] / total,
    }
    return {"counts": result, "metrics": metrics}


def _inputs(cfg) -> tuple[str, ...]:
    # With the world stage in the pipeline its URL list (or the list it exports to
    # world.export_dir, read through download.url_list) is this stage's input.
    return ("world",) if "world" in cfg.pipeline.stages or not cfg.download.url_list else ()


STAGE = Stage(
    "download", run=run, section=DownloadConfig, inputs=_inputs, description="img2dataset download"
)

if __name__ == "__main__":
    from pipelines.common import main

    sys.exit(main("download"))
