"""Stage ``self_train``: S-Seg+ — pseudo-label the target's training images with S-Seg, train a
closed-vocabulary segmenter on them with Ray Train, evaluate it with the evaluation harness.

    python pipelines/self_train.py [--config conf/default.yaml] [self_train.steps=2000 ...]

1. **Pseudo-labels.** A Ray Data actor pool (``map_batches`` with a callable class,
   ``compute=ActorPoolStrategy``, ``label.num_gpus`` per actor) loads the trained S-Seg once
   per actor and labels whole shards of ``label.shard_size`` target images with the dataset's
   class names under the evaluation protocol; each shard becomes
   ``<out>/labels/<shard>.parquet`` (``key, image_path, label_png, conf_png, gt_png, status``),
   written atomically, so a rerun labels only the missing shards. The driver then derives the
   per-class confidence thresholds (:mod:`ovs.selftrain.pseudo_labels`) into
   ``thresholds.json`` and, where the target split has ground truth, the pseudo-labels' mIoU.
2. **Segmenter.** The training loop (``pipelines/loop.py``: Ray Train ``TorchTrainer``, DDP on
   gloo / nccl) runs :class:`SegmenterTask`: checkpoints through ``ray.train.report``, worker
   restarts from the last checkpoint (``FailureConfig``), a whole-job rerun resumes from the
   newest checkpoint stored under the stage output.
3. **Evaluation** on the held-out split with the same protocol as S-Seg: logs ``miou`` (S-Seg+)
   and ``sseg_miou`` (S-Seg on the same images, same protocol) side by side, ``miou_gain``,
   pseudo-label diagnostics, overlays and a per-class IoU chart.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ovs.config import Config
from ovs.selftrain.training import SelfTrainConfig
from ovs.stage import Stage, StageContext
from pipelines.loop import LoopJob, run_loop
from pipelines.ray_train import RunRef, check_complete

if TYPE_CHECKING:
    from ovs.selftrain.training import BatchStream

LABEL_COLUMNS = ("key", "image_path", "label_png", "conf_png", "gt_png", "status")


def _protocol_name(ctx_cfg: Config) -> str:
    return ctx_cfg.self_train.protocol or ctx_cfg.train.eval_protocol


def _world_dir(ctx: StageContext) -> Path | None:
    return ctx.inputs.get("world")


# ----------------------------------------------------------------------------- step 1


class PseudoLabeler:
    """Ray Data actor: ``{"shard": [name], "refs": [json]}`` -> writes that shard's parquet."""

    def __init__(
        self,
        checkpoint: str,
        dataset,
        class_names: list[list[str]],
        has_background: bool,
        dataset_key: str,
        protocol: str,
        out_dir: str,
        num_threads: int,
    ) -> None:
        from ovs.eval.method import load_trained
        from ovs.eval.protocol import build_classifier, get_protocol

        torch.set_num_threads(max(1, num_threads))
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.method = load_trained(checkpoint, device)
        self.protocol = get_protocol(protocol)
        self.classifier = build_classifier(
            self.method, class_names, has_background, self.protocol, dataset_key
        )
        self.dataset, self.out_dir = dataset, Path(out_dir)

    def _one(self, ref: dict) -> dict:
        from ovs.codecs import png_bytes, read_image
        from ovs.selftrain.pseudo_labels import pseudo_label

        row = {"key": ref["id"], "image_path": ref["path"], "status": "ok"}
        row.update(label_png=b"", conf_png=b"", gt_png=b"")
        try:
            if ref["index"] is not None:
                sample = self.dataset[ref["index"]]
                image, gt = sample["image"], sample["label"]
            else:
                image, gt = read_image(ref["path"]), None
        except (OSError, ValueError):
            row["status"] = "bad_image"
            return row
        label, conf = pseudo_label(self.method, image, self.classifier, self.protocol)
        row.update(label_png=png_bytes(label), conf_png=png_bytes(conf))
        if gt is not None:
            row["gt_png"] = png_bytes(gt)
        return row

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import pyarrow as pa

        from ovs.io import atomic_write_parquet

        ok, bad = [], []
        for shard, refs in zip(batch["shard"].tolist(), batch["refs"].tolist()):
            rows = [self._one(r) for r in json.loads(refs)]
            table = pa.table(
                {
                    c: pa.array(
                        [r[c] for r in rows], pa.binary() if c.endswith("_png") else pa.string()
                    )
                    for c in LABEL_COLUMNS
                }
            )
            atomic_write_parquet(self.out_dir / f"{shard}.parquet", table)
            ok.append(sum(r["status"] == "ok" for r in rows))
            bad.append(len(rows) - ok[-1])
        return {"shard": batch["shard"], "ok": np.array(ok), "bad": np.array(bad)}


def _label_shards(ctx: StageContext, label_dir: Path) -> tuple[list[Path], dict[str, int], float]:
    """Run the actor pool over the shards not labelled yet; returns (all shard files, counts,
    seconds)."""
    import ray

    from ovs.selftrain.pseudo_labels import target_dataset, target_images

    cfg: SelfTrainConfig = ctx.section
    refs, dataset = target_images(cfg.target, _world_dir(ctx))
    names_ds = dataset or target_dataset(cfg.target, _world_dir(ctx), cfg.target.eval_split)
    size = max(1, cfg.label.shard_size)
    shards = {
        f"{i // size:05d}": [
            {"id": r.id, "path": r.path, "index": r.index} for r in refs[i : i + size]
        ]
        for i in range(0, len(refs), size)
    }
    todo = [s for s in shards if not (label_dir / f"{s}.parquet").exists()]
    counts = {
        "target_images": len(refs),
        "shards": len(shards),
        "shards_resumed": len(shards) - len(todo),
    }
    start = time.perf_counter()
    if todo:
        items = [{"shard": s, "refs": json.dumps(shards[s])} for s in todo]
        ds = ray.data.from_items(items, override_num_blocks=len(todo)).map_batches(
            PseudoLabeler,
            fn_constructor_args=(
                str(ctx.inputs["train"] / "model" / "latest.pt"),
                dataset,
                names_ds.class_names,
                names_ds.has_background,
                names_ds.name,
                _protocol_name(ctx.cfg),
                str(label_dir),
                int(cfg.label.num_cpus),
            ),
            batch_size=1,
            batch_format="numpy",
            compute=ray.data.ActorPoolStrategy(size=max(1, min(cfg.label.num_actors, len(todo)))),
            num_cpus=cfg.label.num_cpus,
            num_gpus=cfg.label.num_gpus,
        )
        for done, _ in enumerate(ds.iter_rows(), 1):
            ctx.progress(done, len(todo), "label shards")
    return [label_dir / f"{s}.parquet" for s in shards], counts, time.perf_counter() - start


def _label_statistics(files: list[Path], num_classes: int) -> dict:
    """One pass over the shards: per-class confidence histograms and, where the target has
    ground truth, the (pseudo-label, ground truth, confidence) histogram."""
    import pyarrow.parquet as pq

    from ovs.codecs import decode_label_png
    from ovs.selftrain.pseudo_labels import confidence_histogram, label_gt_histogram

    stats: dict = {"hist": np.zeros((num_classes, 256), dtype=np.int64), "joint": None}
    stats.update(ok=0, bad=0)
    for f in files:
        for r in pq.read_table(f, columns=list(LABEL_COLUMNS[2:])).to_pylist():
            if r["status"] != "ok":
                stats["bad"] += 1
                continue
            stats["ok"] += 1
            label, conf = decode_label_png(r["label_png"]), decode_label_png(r["conf_png"])
            stats["hist"] += confidence_histogram(label, conf, num_classes)
            if r["gt_png"]:
                joint = label_gt_histogram(label, conf, decode_label_png(r["gt_png"]), num_classes)
                stats["joint"] = joint if stats["joint"] is None else stats["joint"] + joint
    return stats


def _label_quality(stats: dict, thresholds: np.ndarray) -> dict[str, float]:
    """Pseudo-label mIoU / accuracy against the target split's ground truth, before and after
    the confidence rule (kept pixels only), and the kept fraction."""
    from ovs.eval.metrics import mean_iou, pixel_accuracy
    from ovs.selftrain.pseudo_labels import kept_confusion

    total = int(stats["hist"].sum())
    kept = sum(int(stats["hist"][c, t:].sum()) for c, t in enumerate(thresholds.tolist()))
    out = {"label_kept_fraction": kept / total if total else 0.0}
    if stats["joint"] is None:
        return out
    all_conf = kept_confusion(stats["joint"])
    kept_conf = kept_confusion(stats["joint"], thresholds)
    out.update(
        label_miou=mean_iou(all_conf),
        label_acc=pixel_accuracy(all_conf),
        label_kept_miou=mean_iou(kept_conf),
        label_kept_acc=pixel_accuracy(kept_conf),
    )
    return out


def pseudo_labels(ctx: StageContext, num_classes: int) -> tuple[list[Path], np.ndarray, dict, dict]:
    """Step 1: label, threshold, diagnose. Returns (shard files, thresholds, counts, metrics)."""
    from ovs.io import atomic_write_json
    from ovs.selftrain.pseudo_labels import class_thresholds

    cfg: SelfTrainConfig = ctx.section
    label_dir = ctx.out_dir / "labels"
    files, counts, seconds = _label_shards(ctx, label_dir)
    stats = _label_statistics(files, num_classes)
    thresholds = class_thresholds(
        stats["hist"], cfg.label.ignore_quantile, cfg.label.min_confidence
    )
    atomic_write_json(
        ctx.out_dir / "thresholds.json",
        {
            "thresholds_uint8": thresholds.tolist(),
            "ignore_quantile": cfg.label.ignore_quantile,
            "min_confidence": cfg.label.min_confidence,
            "pixels_per_class": stats["hist"].sum(axis=1).tolist(),
        },
    )
    counts.update(labelled_images=stats["ok"], bad_images=stats["bad"])
    metrics = _label_quality(stats, thresholds)
    if counts["shards_resumed"] < counts["shards"]:
        metrics["label_seconds"] = seconds
    return files, thresholds, counts, metrics


# ----------------------------------------------------------------------------- step 2


@dataclass(frozen=True)
class SegmenterTaskFactory:
    """The ``self_train`` stage's :class:`pipelines.loop.TaskFactory`: the closed-vocabulary
    segmenter on the pseudo-label shards."""

    cfg: SelfTrainConfig
    num_classes: int
    shards: list[str]  # pseudo-label shard files; rank r reads shards[r::world]
    thresholds: list[int]  # per-class confidence thresholds (uint8) of the confidence rule
    sseg_checkpoint: str  # the trained S-Seg, for ``init_from_sseg``

    def __call__(self, seed: int, device: torch.device, rank: int, world: int) -> SegmenterTask:
        return SegmenterTask(self, seed, device, rank, world)


class SegmenterTask:
    """The S-Seg+ segmenter's training pieces in one worker (:class:`pipelines.loop.Task`):
    pixel cross-entropy on augmented pseudo-labelled batches (:class:`ovs.selftrain.training.
    BatchStream`, one numpy generator per rank for permutations and augmentation)."""

    metric_prefix = "self_train/"
    log_grad_norm = False

    def __init__(
        self, factory: SegmenterTaskFactory, seed: int, device: torch.device, rank: int, world: int
    ) -> None:
        from ovs.methods import METHODS, load_checkpoint
        from ovs.methods.segmenter.recipe import init_backbone

        self.factory, self.cfg, self.seed = factory, factory.cfg, seed
        self.device, self.rank, self.world = device, rank, world
        self.spec = METHODS["segmenter"]
        # The builder leaves the global RNG alone: seed it, or dropout draws from whatever
        # state the worker process has (two runs of one config differed). A resume then restores
        # the checkpointed RNG state over this one.
        torch.manual_seed(seed)
        self.model = self.spec.build_model(self.cfg.model, seed, factory.num_classes)
        if self.cfg.init_from_sseg:
            trained, source = load_checkpoint(factory.sseg_checkpoint)
            if trained.image_backbone is None:
                raise ValueError(f"init_from_sseg: method {trained.name!r} has no image backbone")
            init_backbone(self.model, trained.image_backbone(source))
        self.stream: BatchStream | None = None
        self.rows_used = 0

    def optimizer(self) -> torch.optim.Optimizer:
        return self.spec.optimizer(self.model, self.cfg)

    def schedule(self, opt: torch.optim.Optimizer) -> torch.optim.lr_scheduler.LRScheduler:
        from ovs.train.schedules import poly_schedule

        return poly_schedule(opt, self.cfg, self.cfg.poly_power)

    def objective(self) -> torch.nn.Module:
        self.model.train()
        return self.spec.wrap_ddp(self.spec.objective(self.model, self.cfg.model))

    def batches(self, start_step: int, own: dict | None) -> Iterator[Any]:
        """The rank's :class:`~ovs.selftrain.training.BatchStream`; a resume restores its
        state (the stream's position is its state, not ``start_step``)."""
        from ovs.selftrain.training import batches, load_rows

        shards = [Path(p) for p in self.factory.shards][self.rank :: self.world]
        rows, counts = load_rows(
            shards, np.array(self.factory.thresholds), self.cfg.cache_in_memory
        )
        self.rows_used = counts["used"]
        rng = np.random.default_rng([self.seed, self.rank])
        self.stream = batches(rows, self.cfg.batch_size, self.cfg.augment, rng)
        if own is not None:  # continue the batch stream where the checkpoint left it
            self.stream.load_state_dict(own["stream"])
        return self.stream

    def inputs(self, batch: Any) -> tuple[tuple[Any, ...], int]:
        """``(images, labels)`` on the device for the segmenter's objective
        (:mod:`ovs.methods.segmenter.objective`)."""
        images, labels = batch
        return (images.to(self.device), labels.to(self.device)), len(images)

    def data_state(self, step: int) -> dict:
        assert self.stream is not None
        return {"stream": self.stream.state_dict()}

    def counts(self) -> dict[str, float]:
        """The rank's pseudo-labelled rows it trains on."""
        return {"rows_used": self.rows_used}

    def save_model(self, path: Path, extra: dict) -> Any:
        return self.spec.save_checkpoint(self.model, path, extra)


def fit(
    ctx: StageContext, shards: list[Path], thresholds: np.ndarray, num_classes: int
) -> tuple[Path, dict]:
    """Step 2: the training loop; returns the final segmenter checkpoint under the stage output
    and rank 0's last reported metrics (``step``: the steps done)."""
    cfg: SelfTrainConfig = ctx.section
    tracker: Any = ctx.tracker  # an MlflowTracker: workers reopen its run by id
    factory = SegmenterTaskFactory(
        cfg=cfg,
        num_classes=num_classes,
        shards=[str(s) for s in shards],
        thresholds=thresholds.tolist(),
        sseg_checkpoint=str(ctx.inputs["train"] / "model" / "latest.pt"),
    )
    job = LoopJob(
        loop=cfg,
        task=factory,
        seed=ctx.cfg.seed,
        out_dir=str(ctx.out_dir),
        run=RunRef(tracker.client.tracking_uri, tracker.run_id),
    )
    return run_loop(job, "sseg_plus")


# ----------------------------------------------------------------------------- step 3


def _eval_device(cfg: SelfTrainConfig) -> torch.device:
    return torch.device("cuda" if cfg.use_gpu and torch.cuda.is_available() else "cpu")


def evaluate_both(ctx: StageContext, checkpoint: Path) -> tuple[dict, dict, list]:
    """S-Seg+ and S-Seg on the held-out split, same images, same protocol; plus a few
    (image, S-Seg, S-Seg+, GT) rows for the overlay picture."""
    from ovs.eval.method import load_trained
    from ovs.eval.protocol import get_protocol
    from ovs.methods import load_checkpoint
    from ovs.selftrain.pseudo_labels import target_dataset

    cfg: SelfTrainConfig = ctx.section
    device = _eval_device(cfg)
    dataset = target_dataset(cfg.target, _world_dir(ctx), cfg.target.eval_split)
    protocol = get_protocol(_protocol_name(ctx.cfg))
    n = len(dataset) if cfg.eval_limit is None else min(cfg.eval_limit, len(dataset))
    seg = load_checkpoint(checkpoint)[1].to(device).eval()
    sseg = load_trained(ctx.inputs["train"] / "model" / "latest.pt", device)
    threads = torch.get_num_threads()
    torch.set_num_threads(max(1, cfg.cpus_per_worker))  # the driver evaluates like a worker
    try:
        return _evaluate_pair(seg, sseg, dataset, protocol, n)
    finally:
        torch.set_num_threads(threads)


@torch.inference_mode()
def _evaluate_pair(seg, sseg, dataset, protocol, n: int) -> tuple[dict, dict, list]:
    from ovs.eval.protocol import classifier_for, evaluate, predict_label
    from ovs.selftrain.evaluate import evaluate_closed, predict_closed

    plus = evaluate_closed(seg, dataset, protocol, range(n))
    base = evaluate(sseg, dataset, protocol, range(n))
    classifier = classifier_for(sseg, dataset, protocol)
    rows: list[tuple[np.ndarray, ...]] = []
    for i in range(min(8, n)):
        image, gt = dataset[i]["image"], dataset[i]["label"]
        sseg_pred = predict_label(sseg, image, classifier, protocol)
        rows.append((image, sseg_pred, predict_closed(seg, image, protocol), gt))
    return plus, base, rows


def _panel_grid(rows: list[list[np.ndarray]], gap: int = 4) -> np.ndarray:
    """Rows of equally sized ``uint8[H, W, 3]`` panels side by side, rows stacked, white gaps."""
    lines = []
    for panels in rows:
        sep = np.full((panels[0].shape[0], gap, 3), 255, np.uint8)
        parts = [x for p in panels for x in (p, sep)][:-1]
        lines.append(np.concatenate(parts, axis=1))
    width = max(line.shape[1] for line in lines)
    out = []
    for line in lines:
        out += [line, np.full((gap, width, 3), 255, np.uint8)]
    return np.concatenate(out[:-1], axis=0)


def _overlay_grid(rows: list, names: list[str]) -> np.ndarray:
    """Rows of image | S-Seg | S-Seg+ | ground truth, with a class legend."""
    from ovs.eval.visualize import colorize, legend, with_legend

    grid = _panel_grid(
        [[image, colorize(sseg), colorize(plus), colorize(gt)] for image, sseg, plus, gt in rows]
    )
    return with_legend(grid, legend(names))


def _label_examples(files: list[Path], thresholds: np.ndarray, n: int = 8) -> np.ndarray | None:
    """Target images | pseudo-label after the confidence rule (ignored pixels show the image)
    | ground truth (grey when the target has none)."""
    import pyarrow.parquet as pq

    from ovs.codecs import decode_label_png, read_image
    from ovs.eval.visualize import colorize, overlay
    from ovs.selftrain.pseudo_labels import apply_confidence_rule

    rows: list[list[np.ndarray]] = []
    for f in files[:1]:
        for r in pq.read_table(f).slice(0, 4 * n).to_pylist():
            if r["status"] != "ok" or len(rows) >= n:
                continue
            image = read_image(r["image_path"])
            ruled = apply_confidence_rule(
                decode_label_png(r["label_png"]), decode_label_png(r["conf_png"]), thresholds
            )
            gt = (
                colorize(decode_label_png(r["gt_png"])) if r["gt_png"] else np.full_like(image, 128)
            )
            rows.append([image, overlay(image, ruled, alpha=1.0), gt])
    return _panel_grid(rows) if rows else None


def log_pictures(ctx: StageContext, plus: dict, base: dict, rows: list, names: list[str]) -> None:
    from ovs.eval.visualize import confusion_chart, iou_bar_chart

    ctx.tracker.log_image(_overlay_grid(rows, names), "overlays.png")
    ctx.tracker.log_figure(
        iou_bar_chart(plus["per_class_iou"], "S-Seg+ IoU (held-out split)"), "per_class_iou.png"
    )
    ctx.tracker.log_figure(
        confusion_chart(plus["confusion"], list(plus["per_class_iou"]), "S-Seg+ (held-out split)"),
        "confusion.png",
    )
    ctx.tracker.log_table(
        {
            "class": list(plus["per_class_iou"]),
            "sseg_plus_iou": list(plus["per_class_iou"].values()),
            "sseg_iou": [base["per_class_iou"][k] for k in plus["per_class_iou"]],
        },
        "per_class_iou.json",
    )


# ----------------------------------------------------------------------------- stage


def run(ctx: StageContext) -> dict:
    from ovs.selftrain.pseudo_labels import target_dataset

    cfg: SelfTrainConfig = ctx.section
    eval_set = target_dataset(cfg.target, _world_dir(ctx), cfg.target.eval_split)
    num_classes = eval_set.num_classes
    files, thresholds, counts, metrics = pseudo_labels(ctx, num_classes)
    ctx.tracker.log_metrics(metrics)
    t0 = time.time()
    final, reported = fit(ctx, files, thresholds, num_classes)
    metrics["train_seconds"] = time.time() - t0
    check_complete(int(reported.get("step", 0)), cfg.steps, "self_train", cfg.time_limit_s)
    metrics.update(
        steps_done=float(reported["step"]),
        steps=float(cfg.steps),
        data_wait_fraction=float(reported.get("data_wait_fraction", 0.0)),
    )
    plus, base, rows = evaluate_both(ctx, final)
    metrics.update(
        miou=plus["miou"],
        pixel_acc=plus["acc"],
        sseg_miou=base["miou"],
        sseg_pixel_acc=base["acc"],
        miou_gain=plus["miou"] - base["miou"],
    )
    trained = ctx.manifests.get("train", {}).get("metrics", {}).get("miou")
    if trained is not None:  # what the train stage reported (its own eval_limit)
        metrics["sseg_miou_train_stage"] = float(trained)
    counts["eval_images"] = int(plus["num_images"])
    ctx.tracker.log_metrics(metrics)
    log_pictures(ctx, plus, base, rows, eval_set.canonical_names)
    examples = _label_examples(files, thresholds)
    if examples is not None:
        ctx.tracker.log_image(examples, "pseudo_labels.png")
    ctx.tracker.log_artifact(final, "model")
    return {"counts": counts, "metrics": metrics}


def _inputs(cfg: Config) -> tuple[str, ...]:
    section = getattr(cfg, "self_train", None)
    if section is not None and section.target.root:
        return ("train",)
    return ("train", "world")


STAGE = Stage(
    "self_train",
    run=run,
    section=SelfTrainConfig,
    inputs=_inputs,
    description="S-Seg+: pseudo-label the target's train images, train a UperNet segmenter",
)

if __name__ == "__main__":
    from pipelines.common import main

    sys.exit(main("self_train"))
