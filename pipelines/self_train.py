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
2. **Segmenter.** Ray Train ``TorchTrainer`` (DDP on gloo / nccl), structured like
   ``pipelines/train.py``: checkpoints through ``ray.train.report``, worker restarts from the last
   checkpoint (``FailureConfig``), a whole-job rerun resumes from the newest checkpoint stored
   under the stage output.
3. **Evaluation** on the held-out split with the same protocol as S-Seg: logs ``miou`` (S-Seg+)
   and ``sseg_miou`` (S-Seg on the same images, same protocol) side by side, ``miou_gain``,
   pseudo-label diagnostics, overlays and a per-class IoU chart.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import torch

from ovs.config import Config
from ovs.selftrain.training import SelfTrainConfig
from ovs.stage import Stage, StageContext
from pipelines.ray_train import (
    Window,
    any_rank,
    check_complete,
    fit_and_export,
    prepare,
    rank0_tracker,
    rank_state,
    report,
    resume_state,
    rng_state,
    set_rng_state,
)
from pipelines.shard_map import ActorResources, WorkItem, map_items


def _protocol_name(ctx_cfg: Config) -> str:
    return ctx_cfg.self_train.protocol or ctx_cfg.train.eval_protocol


def _world_dir(ctx: StageContext) -> Path | None:
    return ctx.inputs.get("world")


# ----------------------------------------------------------------------------- step 1


def _label_shards(ctx: StageContext, label_dir: Path) -> tuple[list[Path], dict[str, int], float]:
    """Run the labelling actors over the shards not labelled yet; returns (all shard files,
    counts, seconds)."""
    from ovs.selftrain.labeler import PseudoLabeler
    from ovs.selftrain.pseudo_labels import target_dataset, target_images

    cfg: SelfTrainConfig = ctx.section
    refs, dataset = target_images(cfg.target, _world_dir(ctx))
    names_ds = dataset or target_dataset(cfg.target, _world_dir(ctx), cfg.target.eval_split)
    size = max(1, cfg.label.shard_size)
    files = [label_dir / f"{i // size:05d}.parquet" for i in range(0, len(refs), size)]
    items = [
        WorkItem(
            f.stem,
            {"refs": [{"id": r.id, "path": r.path, "index": r.index} for r in refs[i : i + size]]},
            f,
        )
        for f, i in zip(files, range(0, len(refs), size), strict=True)
    ]
    init = {
        "checkpoint": str(ctx.inputs["train"] / "model" / "latest.pt"),
        "dataset": dataset,
        "class_names": names_ds.class_names,
        "has_background": names_ds.has_background,
        "dataset_key": names_ds.name,
        "protocol": _protocol_name(ctx.cfg),
        "num_threads": int(cfg.label.num_cpus),
    }
    resources = ActorResources(
        cfg.label.num_actors, num_cpus=cfg.label.num_cpus, num_gpus=cfg.label.num_gpus
    )
    start = time.perf_counter()
    done = map_items(items, PseudoLabeler, init, resources, ctx.progress, "label shards")
    counts = {"target_images": len(refs), "shards": len(items), "shards_resumed": len(done.resumed)}
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


def _build(config: dict):
    """The segmenter with its initial weights (identical on every rank)."""
    from ovs.models.upernet import build_segmenter
    from ovs.selftrain.training import init_backbone_from_sseg

    cfg: SelfTrainConfig = config["cfg"]
    model = build_segmenter(cfg.model, config["num_classes"], config["seed"])
    if cfg.init_from_sseg:
        state = torch.load(config["sseg_checkpoint"], map_location="cpu", weights_only=True)
        init_backbone_from_sseg(model, state["model"])
    return model


def setup(config: dict, device: torch.device, state: dict | None):
    """Segmenter → device → optimiser and schedule → resume ``state`` (the order that keeps
    the optimiser state on the parameters' device). Returns ``(model, opt, sched, start)``."""
    from ovs.selftrain.training import build_optimizer, lr_factor

    cfg: SelfTrainConfig = config["cfg"]
    # build_segmenter leaves the global RNG alone: seed it, or dropout draws from whatever
    # state the worker process has (two runs of one config differed). A resume then restores
    # the checkpointed RNG state over this one.
    torch.manual_seed(config["seed"])
    model = _build(config)
    opt, sched, start = prepare(
        model,
        device,
        lambda m: build_optimizer(m, cfg),
        lambda o: torch.optim.lr_scheduler.LambdaLR(o, lambda s: lr_factor(s, cfg)),
        state,
    )
    return model, opt, sched, start


def train_loop(config: dict) -> None:
    """One Ray Train worker. ``config``: cfg, seed, num_classes, shards, thresholds,
    sseg_checkpoint, out_dir, mlflow."""
    import ray.train
    import ray.train.torch
    from torch.nn.parallel import DistributedDataParallel

    from ovs.models.upernet import save_segmenter
    from ovs.precision import training_dtype
    from ovs.selftrain.loss import pixel_cross_entropy
    from ovs.selftrain.training import batches, load_rows

    cfg: SelfTrainConfig = config["cfg"]
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    torch.set_num_threads(max(1, cfg.cpus_per_worker))
    device = ray.train.torch.get_device()
    if device.type == "cpu":
        from ovs.cpu import keep_freed_memory

        keep_freed_memory()  # no page faults per step (ovs/cpu.py)
    state = resume_state()
    model, opt, sched, start = setup(config, device, state)
    model.train()
    net = DistributedDataParallel(model) if world > 1 else model
    shards = [Path(p) for p in config["shards"]][rank::world]
    rows, counts = load_rows(shards, np.array(config["thresholds"]), cfg.cache_in_memory)
    stream = batches(
        rows, cfg.batch_size, cfg.augment, np.random.default_rng([config["seed"], rank])
    )
    own = rank_state(state, rank, world)
    if own is not None:  # continue the batch stream and the RNGs where the checkpoint left them
        stream.load_state_dict(own["stream"])
        set_rng_state(own["torch"], device)
    tracker = rank0_tracker(config, rank)
    amp_dtype = training_dtype(cfg.amp_dtype, device)
    marker = Path(config["out_dir"]) / ".injected_failure"
    t_start = time.monotonic()
    window, window_t = Window(), time.monotonic()
    wait_fractions: list[float] = []
    step = start
    while step < cfg.steps:
        t_data = time.monotonic()
        images, labels = next(stream)
        window.data_wait_s += time.monotonic() - t_data
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            logits = net(images.to(device))
        loss = pixel_cross_entropy(logits, labels.to(device))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        sched.step()
        step += 1
        if step == cfg.inject_failure_at_step and rank == world - 1 and not marker.exists():
            marker.touch()
            raise RuntimeError(f"injected worker failure at step {step} (failure drill)")
        window.add({"loss": loss}, len(images))
        log_step = step % cfg.log_every == 0 or step >= cfg.steps
        out_of_time = log_step and any_rank(
            cfg.time_limit_s is not None and time.monotonic() - t_start > cfg.time_limit_s,
            device,
            world,
        )
        last = step >= cfg.steps or out_of_time
        metrics: dict | None = None
        if log_step:
            dt = max(time.monotonic() - window_t, 1e-9)
            metrics = {
                "self_train/loss": window.means()["loss"],
                "self_train/lr": sched.get_last_lr()[-1],
                "self_train/img_per_s": window.images * world / dt,
                "self_train/data_wait_fraction": window.data_wait_s / dt,
                "step": step,
            }
            wait_fractions.append(metrics["self_train/data_wait_fraction"])
            if tracker is not None:
                tracker.log_metrics(metrics, step=step)
            window, window_t = Window(), time.monotonic()
        if step % cfg.checkpoint_every == 0 or last:
            metrics = dict(metrics or {"step": step})
            metrics["rows_used"] = counts["used"]
            metrics["data_wait_fraction"] = float(np.mean(wait_fractions or [0.0]))
            own_state = {"stream": stream.state_dict(), "torch": rng_state(device)}
            report(metrics, rank, world, model, opt, sched, step, save_segmenter, own_state)
        if out_of_time:
            break


def fit(
    ctx: StageContext, shards: list[Path], thresholds: np.ndarray, num_classes: int
) -> tuple[Path, dict]:
    """Step 2: Ray Train; returns the final segmenter checkpoint under the stage output and
    rank 0's last reported metrics (``step``: the steps done)."""
    from ovs.precision import resolve_dtype

    cfg: SelfTrainConfig = ctx.section
    resolve_dtype(cfg.amp_dtype, torch.device("cpu"))  # an unknown name fails before Ray Train
    tracker: Any = ctx.tracker  # an MlflowTracker: workers reopen its run by id
    loop_config = {
        "cfg": cfg,
        "seed": ctx.cfg.seed,
        "num_classes": num_classes,
        "shards": [str(s) for s in shards],
        "thresholds": thresholds.tolist(),
        "sseg_checkpoint": str(ctx.inputs["train"] / "model" / "latest.pt"),
        "out_dir": str(ctx.out_dir),
        "mlflow": {"uri": tracker.client.tracking_uri, "run_id": tracker.run_id},
    }
    return fit_and_export(train_loop, loop_config, cfg, "sseg_plus", ctx.out_dir)


# ----------------------------------------------------------------------------- step 3


def _eval_device(cfg: SelfTrainConfig) -> torch.device:
    return torch.device("cuda" if cfg.use_gpu and torch.cuda.is_available() else "cpu")


def evaluate_both(ctx: StageContext, checkpoint: Path) -> tuple[dict, dict, list]:
    """S-Seg+ and S-Seg on the held-out split, same images, same protocol; plus a few
    (image, S-Seg, S-Seg+, GT) rows for the overlay picture."""
    from ovs.eval.protocol import get_protocol
    from ovs.models.sseg import load_checkpoint
    from ovs.models.upernet import load_segmenter
    from ovs.selftrain.pseudo_labels import DeviceMethod, target_dataset

    cfg: SelfTrainConfig = ctx.section
    device = _eval_device(cfg)
    dataset = target_dataset(cfg.target, _world_dir(ctx), cfg.target.eval_split)
    protocol = get_protocol(_protocol_name(ctx.cfg))
    n = len(dataset) if cfg.eval_limit is None else min(cfg.eval_limit, len(dataset))
    seg = load_segmenter(checkpoint).to(device).eval()
    sseg_model = load_checkpoint(ctx.inputs["train"] / "model" / "latest.pt").to(device).eval()
    sseg = DeviceMethod(sseg_model, device)
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
    inputs=_inputs,
    description="S-Seg+: pseudo-label the target's train images, train a UperNet segmenter",
)

if __name__ == "__main__":
    from pipelines.common import main

    sys.exit(main("self_train"))
