"""Stage ``pseudo_masks``: features + batched K-means per image, on Ray actors (S-Seg §3.3.1).

python pipelines/pseudo_masks.py [--config conf/default.yaml] [pseudo_masks.extractor=dino_vits8 ...]

Input: the ``download`` stage's img2dataset shards. Each of ``num_actors`` Ray actors
(``num_gpus`` / ``num_cpus`` each) loads the extractor once and turns whole shards into
``<out>/masks/<stem>.parquet`` (columns ``key, label_png, grid_h, grid_w, k, status``), written
atomically, so a rerun resumes by skipping the shards already written. When the ``world`` stage
is an input (``oracle_images > 0``), the same actors also mask the world's labelled eval split
and the stage reports ``oracle_miou`` and logs an image / pseudo-mask / GT grid.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ovs.config import Config
from ovs.pseudo_masks import (
    STATUS_BAD_IMAGE,
    STATUS_DECODE_ERROR,
    STATUS_OK,
    PseudoMaskConfig,
    PseudoMasker,
    decode_label_png,
    oracle_miou,
    pseudo_mask_figure,
)
from ovs.stage import Stage, StageContext


class MaskWorker:
    """Ray actor body: one ``PseudoMasker`` per actor, whole shards per call."""

    def __init__(self, cfg: PseudoMaskConfig) -> None:
        import torch

        torch.set_num_threads(max(1, int(cfg.num_cpus)))
        self.cfg = cfg
        self.masker = PseudoMasker(cfg)

    def shard(self, tar_path: str, out_path: str) -> dict:
        """Mask every image of one shard; write its parquet atomically; return counts."""
        import pyarrow as pa

        from ovs.data.shards import iter_shard
        from ovs.io import atomic_write_parquet

        start = time.perf_counter()
        columns: dict[str, list] = {c: [] for c in ("key", "label_png", "grid_h", "grid_w", "k")}
        columns["status"] = []
        batch: list[dict] = []

        def flush() -> None:
            out = self.masker(
                {"key": [s["key"] for s in batch], "jpg": [s.get("jpg") for s in batch]}
            )
            for c in columns:
                columns[c].extend(out[c].tolist())
            batch.clear()

        for sample in iter_shard(tar_path, members=("jpg",)):
            batch.append(sample)
            if len(batch) == self.cfg.batch_size:
                flush()
        if batch:
            flush()
        table = pa.table(
            {
                "key": pa.array(columns["key"], pa.string()),
                "label_png": pa.array(columns["label_png"], pa.binary()),
                "grid_h": pa.array(columns["grid_h"], pa.int32()),
                "grid_w": pa.array(columns["grid_w"], pa.int32()),
                "k": pa.array(columns["k"], pa.int32()),
                "status": pa.array(columns["status"], pa.string()),
            }
        )
        atomic_write_parquet(out_path, table)
        counts = {
            s: columns["status"].count(s)
            for s in (STATUS_OK, STATUS_DECODE_ERROR, STATUS_BAD_IMAGE)
        }
        return {**counts, "seconds": time.perf_counter() - start}

    def label_maps(self, keys: list[str], images: list) -> list:
        out = self.masker({"key": keys, "image": images})
        return [decode_label_png(b) if b else None for b in out["label_png"]]


def _inputs(cfg: Config) -> tuple[str, ...]:
    section = getattr(cfg, "pseudo_masks", None)
    return ("download", "world") if section is None or section.oracle_images > 0 else ("download",)


def _oracle(ctx: StageContext, pool, cfg: PseudoMaskConfig) -> dict[str, float]:
    from ovs.data import world

    samples = world.load_split(ctx.inputs["world"], "eval", limit=cfg.oracle_images)
    num_classes = len(world.class_names(ctx.inputs["world"]))
    chunks = [samples[i : i + cfg.batch_size] for i in range(0, len(samples), cfg.batch_size)]
    maps = []
    for chunk_maps in pool.map(
        lambda a, ch: a.label_maps.remote([s["id"] for s in ch], [s["image"] for s in ch]), chunks
    ):
        maps.extend(chunk_maps)
    gts = [s["label"] for s in samples]
    miou = oracle_miou(maps, gts, num_classes)
    n = cfg.figure_images
    fig = pseudo_mask_figure([s["image"] for s in samples[:n]], maps[:n], gts[:n], num_classes, n)
    ctx.tracker.log_figure(fig, "pseudo_masks_grid.png")
    return {"oracle_miou": miou, "oracle_images": float(len(samples))}


def run(ctx: StageContext) -> dict:
    import ray
    from ray.util import ActorPool

    from ovs.data.shards import list_shards

    cfg: PseudoMaskConfig = ctx.section
    shards = list_shards(ctx.inputs["download"])
    out_dir = ctx.out_dir / "masks"
    todo = [s for s in shards if not (out_dir / f"{s.stem}.parquet").exists()]
    worker = ray.remote(num_gpus=cfg.num_gpus, num_cpus=cfg.num_cpus)(MaskWorker)
    actors = [worker.remote(cfg) for _ in range(max(1, cfg.num_actors))]
    pool = ActorPool(actors)
    counts = {"shards": len(shards), "shards_resumed": len(shards) - len(todo)}
    totals = {STATUS_OK: 0, STATUS_DECODE_ERROR: 0, STATUS_BAD_IMAGE: 0}
    try:
        start = time.perf_counter()
        results = pool.map_unordered(
            lambda a, s: a.shard.remote(str(s), str(out_dir / f"{s.stem}.parquet")), todo
        )
        for done, result in enumerate(results, 1):
            for s in totals:
                totals[s] += result[s]
            ctx.progress(done, len(todo), "shards")
        seconds = time.perf_counter() - start
        processed = sum(totals.values())
        metrics = {"img_per_s": processed / seconds if processed else 0.0}
        if "world" in ctx.inputs and cfg.oracle_images > 0:
            metrics.update(_oracle(ctx, pool, cfg))
    finally:
        for a in actors:
            ray.kill(a)
    counts.update({"images_" + k: v for k, v in totals.items()})
    return {"counts": counts, "metrics": metrics}


STAGE = Stage(
    "pseudo_masks",
    run=run,
    inputs=_inputs,
    description="DINO (or pixel) features + batched K-means pseudo-masks per image",
)

if __name__ == "__main__":
    from pipelines.common import main

    sys.exit(main("pseudo_masks"))
