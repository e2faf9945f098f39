"""Stage ``self_train``: S-Seg+ — pseudo-label the target's training images with S-Seg, train a
closed-vocabulary segmenter on them with Ray Train, evaluate it with the evaluation harness.

    python pipelines/self_train.py [--config conf/default.yaml] [self_train.steps=2000 ...]

1. **Pseudo-labels.** The shard mapper (:mod:`pipelines.shard_map`) runs ``label.num_actors``
   :class:`~ovs.selftrain.labeler.PseudoLabeler` actors (``label.num_gpus`` each; the trained
   S-Seg loaded once per actor) over shards of ``label.shard_size`` target images, labelled
   with the dataset's class names under the evaluation protocol; each shard's table becomes
   ``<out>/labels/<shard>.parquet`` (``LABEL_SCHEMA``: ``key, image_path, label_png,
   conf_png, gt_png, status``), written atomically, so a rerun labels only the missing shards.
   The driver then derives the per-class confidence thresholds
   (:mod:`ovs.selftrain.pseudo_labels`) into ``thresholds.json`` and, where the target split
   has ground truth, the pseudo-labels' mIoU (:mod:`ovs.selftrain.labeler`).
2. **Segmenter.** The training loop (``pipelines/loop.py``: Ray Train ``TorchTrainer``, DDP on
   gloo / nccl) runs :class:`SegmenterTask`: checkpoints through ``ray.train.report``, worker
   restarts from the last checkpoint (``FailureConfig``), a whole-job rerun resumes from the
   newest checkpoint stored under the stage output.
3. **Evaluation** on the held-out split with the same protocol as S-Seg: logs ``miou`` (S-Seg+)
   and ``sseg_miou`` (S-Seg on the same images, same protocol) side by side, ``miou_gain``,
   pseudo-label diagnostics, overlays and a per-class IoU chart.
"""

from __future__ import annotations

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
from pipelines.shard_map import ActorResources, WorkItem, map_items

if TYPE_CHECKING:
    from ovs.selftrain.training import BatchStream
    from pipelines.graph import ExperimentConfig  # the root type; graph imports this module


def _protocol_name(ctx_cfg: ExperimentConfig) -> str:
    return ctx_cfg.self_train.protocol or ctx_cfg.train.eval_protocol


def _world_dir(ctx: StageContext) -> Path | None:
    return ctx.inputs.get("world")


# ----------------------------------------------------------------------------- step 1


def _label_shards(ctx: StageContext, label_dir: Path) -> tuple[list[Path], dict[str, int], float]:
    """Run the labelling actors over the shards not labelled yet; returns (all shard files,
    counts, seconds)."""
    import ray

    from ovs.selftrain.labeler import PseudoLabeler
    from ovs.selftrain.pseudo_labels import write_target_list

    cfg: SelfTrainConfig = ctx.section
    size = max(1, cfg.label.shard_size)
    world = _world_dir(ctx)
    targets = ctx.out_dir / "targets.parquet"
    # the listing (one row per target image: 118k for COCO) is made in a task, not here
    try:
        listed = ray.get(
            ray.remote(write_target_list).remote(
                cfg.target, str(world) if world else None, str(targets), size
            )
        )
    except ray.exceptions.RayTaskError as e:  # a missing target folder: its own error, no trace
        raise (e.cause if isinstance(e.cause, Exception) else e) from None
    n = int(listed.pop("count"))
    files = [label_dir / f"{k:05d}.parquet" for k in range(-(-n // size))]
    items = [WorkItem(f.stem, {"group": k}, f) for k, f in enumerate(files)]
    init = {
        "checkpoint": str(ctx.inputs["train"] / "model" / "latest.pt"),
        "target": cfg.target,
        "world_dir": str(world) if world else None,
        "targets": str(targets),
        **listed,
        "protocol": _protocol_name(ctx.cfg),
        "num_threads": int(cfg.label.num_cpus),
    }
    resources = ActorResources(
        cfg.label.num_actors, num_cpus=cfg.label.num_cpus, num_gpus=cfg.label.num_gpus
    )
    start = time.perf_counter()
    done = map_items(items, PseudoLabeler, init, resources, ctx.progress, "label shards")
    counts = {"target_images": n, "shards": len(items), "shards_resumed": len(done.resumed)}
    return files, counts, time.perf_counter() - start


def pseudo_labels(ctx: StageContext, num_classes: int) -> tuple[list[Path], np.ndarray, dict, dict]:
    """Step 1: label, threshold, diagnose. Returns (shard files, thresholds, counts, metrics)."""
    from ovs.io import atomic_write_json
    from ovs.selftrain.labeler import label_quality, label_statistics
    from ovs.selftrain.pseudo_labels import class_thresholds

    cfg: SelfTrainConfig = ctx.section
    label_dir = ctx.out_dir / "labels"
    files, counts, seconds = _label_shards(ctx, label_dir)
    stats = label_statistics(files, num_classes)
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
    metrics = label_quality(stats, thresholds)
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


def log_pictures(ctx: StageContext, plus: dict, base: dict, rows: list, names: list[str]) -> None:
    """Log the held-out overlays, S-Seg+'s per-class IoU bars and confusion matrix, and the
    per-class IoU table of S-Seg+ next to S-Seg."""
    from ovs.eval.visualize import confusion_chart, iou_bar_chart
    from ovs.selftrain.figures import overlay_grid

    ctx.tracker.log_image(overlay_grid(rows, names), "overlays.png")
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
    from ovs.selftrain.figures import label_examples
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
    examples = label_examples(files, thresholds)
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
