"""Stage ``pseudo_masks``: features + batched K-means per image with Ray Data (S-Seg §3.3.1).

python pipelines/pseudo_masks.py [--config conf/default.yaml] [pseudo_masks.extractor=dino_vits8 ...]

Input: the ``download`` stage's img2dataset shards. A Ray Data pipeline streams the shards that
have no output yet: a read task per shard emits ``(shard, idx, total, key, jpg bytes)`` rows,
CPU tasks decode + resize them into a uint8 ``image`` tensor column (numpy only, never PIL
objects) — or, with ``decode: device``, the actors decode the bytes themselves on their device
(nvJPEG on GPUs, ``ovs.pseudo_masks.device_decode``) — and an actor pool (``num_actors`` actors with
``num_gpus`` / ``num_cpus`` each, ``batch_size`` images per call) runs
:class:`~ovs.pseudo_masks.masker.PseudoMasker` once loaded per actor. The driver collects the small
label-PNG rows and writes ``<out>/masks/<stem>.parquet`` (columns ``key, label_png, grid_h,
grid_w, k, status``, in tar order) atomically as soon as a shard is complete, so a rerun resumes
by skipping the shards already written. When the ``world`` stage is an input (``oracle_images >
0``), the labelled eval split goes through the same actor pool and the stage reports
``oracle_miou`` and logs an image / pseudo-mask / GT grid.
"""

from __future__ import annotations

import sys
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from ovs.codecs import decode_label_png
from ovs.config import Config
from ovs.pseudo_masks.device_decode import decode_resize
from ovs.pseudo_masks.masker import (
    STATUS_BAD_IMAGE,
    STATUS_DECODE_ERROR,
    STATUS_OK,
    PseudoMaskConfig,
    PseudoMasker,
)
from ovs.pseudo_masks.oracle import oracle_miou, pseudo_mask_figure
from ovs.stage import Stage, StageContext

COLUMNS = ("key", "label_png", "grid_h", "grid_w", "k", "status")


def shard_rows(row: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Ray Data ``flat_map``: one shard path -> one row per sample (image bytes, not decoded).

    ``total`` (the shard's sample count, from a header-only pass over the tar) lets the driver
    write the shard as soon as its last row arrives; ``idx`` restores tar order.
    """
    from ovs.data.shards import iter_shard

    path = Path(row["shard"])
    total = sum(1 for _ in iter_shard(path, members=()))
    for idx, sample in enumerate(iter_shard(path, members=("jpg",))):
        yield {
            "shard": path.stem,
            "idx": idx,
            "total": total,
            "key": sample["key"],
            "jpg": sample.get("jpg") or b"",
        }


def decode_batch(batch: dict[str, np.ndarray], size: int) -> dict[str, np.ndarray]:
    """Ray Data CPU task: ``jpg`` bytes -> ``image`` uint8 [B, size, size, 3] + ``decoded``."""
    n = len(batch["key"])
    images = np.zeros((n, size, size, 3), dtype=np.uint8)
    decoded = np.zeros(n, dtype=bool)
    for i, data in enumerate(batch["jpg"]):
        arr = decode_resize(bytes(data) if data is not None else None, size)
        if arr is not None:
            images[i], decoded[i] = arr, True
    out = {k: v for k, v in batch.items() if k != "jpg"}
    return {**out, "image": images, "decoded": decoded}


class MaskActor:
    """Ray Data actor: one :class:`PseudoMasker` per actor (weights loaded once)."""

    def __init__(self, cfg: PseudoMaskConfig) -> None:
        import torch

        torch.set_num_threads(max(1, int(cfg.num_cpus)))
        self.masker = PseudoMasker(cfg)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        passthrough = {
            k: v for k, v in batch.items() if k not in ("image", "decoded", "jpg", "key")
        }
        if "jpg" in batch:  # decode: device, the masker decodes and counts decode errors
            return {**passthrough, **self.masker({"key": batch["key"], "jpg": batch["jpg"]})}
        decoded = batch.get("decoded")
        images = [
            img if decoded is None or decoded[i] else None for i, img in enumerate(batch["image"])
        ]
        out = self.masker({"key": batch["key"], "image": images})
        if decoded is not None:  # undecodable bytes are decode errors, not bad images
            out["status"] = np.where(decoded, out["status"], STATUS_DECODE_ERROR).astype(object)
        return {**passthrough, **out}


def mask_dataset(ds, cfg: PseudoMaskConfig):
    """Append the actor-pool stage to a dataset with ``key`` + ``image`` (+ ``decoded``), or
    ``key`` + ``jpg`` bytes when the actors decode (``decode: device``)."""
    import ray.data

    return ds.map_batches(
        MaskActor,
        fn_constructor_kwargs={"cfg": cfg},
        compute=ray.data.ActorPoolStrategy(size=max(1, cfg.num_actors)),
        num_gpus=cfg.num_gpus,
        num_cpus=cfg.num_cpus,
        batch_size=cfg.batch_size,
        batch_format="numpy",
    )


def shard_table(rows: list[dict[str, Any]]):
    """Rows of one shard -> the stored parquet table, in tar order."""
    import pyarrow as pa

    rows = sorted(rows, key=lambda r: int(r["idx"]))
    return pa.table(
        {
            "key": pa.array([str(r["key"]) for r in rows], pa.string()),
            "label_png": pa.array([bytes(r["label_png"]) for r in rows], pa.binary()),
            "grid_h": pa.array([int(r["grid_h"]) for r in rows], pa.int32()),
            "grid_w": pa.array([int(r["grid_w"]) for r in rows], pa.int32()),
            "k": pa.array([int(r["k"]) for r in rows], pa.int32()),
            "status": pa.array([str(r["status"]) for r in rows], pa.string()),
        }
    )


def _rows(batch: dict[str, np.ndarray]) -> Iterator[dict[str, Any]]:
    names = list(batch)
    for values in zip(*(batch[n] for n in names), strict=True):
        yield dict(zip(names, values, strict=True))


def mask_shards(ctx: StageContext, todo: list[Path], out_dir: Path) -> int:
    """Run the Ray Data pipeline over ``todo`` shards; write each shard as soon as it is
    complete. Returns the number of images processed."""
    import ray.data

    from ovs.io import atomic_write_parquet

    cfg: PseudoMaskConfig = ctx.section
    if not todo:
        return 0
    ds = ray.data.from_items([{"shard": str(p)} for p in todo], override_num_blocks=len(todo))
    ds = ds.flat_map(shard_rows, num_cpus=cfg.decode_cpus)
    if cfg.decode == "cpu":
        ds = ds.map_batches(
            decode_batch,
            fn_kwargs={"size": cfg.image_size},
            batch_size=cfg.batch_size,
            batch_format="numpy",
            num_cpus=cfg.decode_cpus,
        )
    pending: dict[str, list[dict]] = defaultdict(list)
    done = processed = 0
    for batch in mask_dataset(ds, cfg).iter_batches(batch_size=None, batch_format="numpy"):
        for row in _rows(batch):
            shard = str(row["shard"])
            pending[shard].append(row)
            if len(pending[shard]) == int(row["total"]):
                rows = pending.pop(shard)
                atomic_write_parquet(out_dir / f"{shard}.parquet", shard_table(rows))
                processed += len(rows)
                done += 1
                ctx.progress(done, len(todo), "shards")
    if pending:
        raise RuntimeError(f"incomplete shards after the pipeline drained: {sorted(pending)}")
    return processed


def _inputs(cfg: Config) -> tuple[str, ...]:
    section = getattr(cfg, "pseudo_masks", None)
    return ("download", "world") if section is None or section.oracle_images > 0 else ("download",)


def _oracle(ctx: StageContext, cfg: PseudoMaskConfig) -> dict[str, float]:
    import ray.data

    from ovs.data import world

    samples = world.load_split(ctx.inputs["world"], "eval", limit=cfg.oracle_images)
    num_classes = len(world.class_names(ctx.inputs["world"]))
    ds = ray.data.from_items(
        [{"idx": i, "key": s["id"], "image": s["image"]} for i, s in enumerate(samples)]
    )
    rows = [r for b in mask_dataset(ds, cfg).iter_batches(batch_format="numpy") for r in _rows(b)]
    rows.sort(key=lambda r: int(r["idx"]))
    maps = [decode_label_png(bytes(r["label_png"])) if r["label_png"] else None for r in rows]
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
    todo = [s for s in shards if not (out_dir / f"{s.stem}.parquet").exists()]
    counts = {"shards": len(shards), "shards_resumed": len(shards) - len(todo)}
    start = time.perf_counter()
    processed = mask_shards(ctx, todo, out_dir)
    seconds = time.perf_counter() - start
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
