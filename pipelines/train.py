"""Stage ``train``: S-Seg with Ray Train (DDP), then zero-shot evaluation on the world eval split.

    python pipelines/train.py [--config conf/default.yaml] [--force] [train.steps=300 ...]

Each Ray Train worker reads its share of the download shards joined with their pseudo-masks and
entity texts, trains with AdamW + warm-up/cosine, and reports metrics (and, from rank 0,
checkpoints) through ``ray.train.report``. A worker failure restarts the worker group from the
last checkpoint (``FailureConfig``); a whole-job rerun of the stage resumes from the last
checkpoint stored under the stage's output directory. Rank 0 logs losses, learning rate and
throughput to the stage's MLflow run. The driver then evaluates the initial and the final model
zero-shot with only class names and logs ``miou``, ``miou_at_init`` and ``oracle_miou``.
"""

from __future__ import annotations

import sys
import time
import warnings
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ovs.methods import METHODS
from ovs.methods.sseg.config import SSegLossConfig
from ovs.stage import Stage, StageContext
from ovs.training import TrainConfig
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


def setup(config: dict, device: torch.device, state: dict | None):
    """Model → device → optimiser and schedule → resume ``state`` (the order that keeps the
    optimiser state on the parameters' device). Returns ``(model, objective, opt, sched,
    start step)``; the model is identical on every rank (same seed)."""
    from ovs.training import lr_factor

    cfg: TrainConfig = config["cfg"]
    spec = METHODS[cfg.method]
    model = spec.build_model(cfg.method_config, config["seed"], None)
    objective = spec.objective(model, replace(cfg.method_config, loss=config["loss"]))
    objective.to(device)  # the model and the objective's own parameters, if any
    opt, sched, start = prepare(
        model,
        device,
        lambda m: spec.optimizer(m, cfg),
        lambda o: torch.optim.lr_scheduler.LambdaLR(o, lambda s: lr_factor(s, cfg)),
        state,
    )
    return model, objective, opt, sched, start


def ingest_executor(cfg: TrainConfig, cluster_cpus: float) -> str:
    """Where the streaming ingest's decode tasks run (``TrainConfig`` docstring): ``local``
    in-memory mode or no spare CPU under ``auto``; ``ray`` when one is free; ``ray`` asked for
    with none free fails here, before Ray Train starts, naming the counts."""
    if cfg.ingest_executor not in ("auto", "ray", "local"):
        raise ValueError(
            f"train.ingest_executor must be 'auto', 'ray' or 'local', got {cfg.ingest_executor!r}"
        )
    reserved = cfg.num_workers * cfg.cpus_per_worker
    free = cluster_cpus - reserved
    if cfg.ingest_executor == "local" or cfg.cache_in_memory:
        return "local"
    if free >= 1:
        return "ray"
    msg = (
        f"the cluster has {cluster_cpus:g} CPUs and the Train workers reserve {reserved} "
        f"(train.num_workers={cfg.num_workers} x train.cpus_per_worker={cfg.cpus_per_worker}): "
        "no CPU is left for the ingest's decode tasks"
    )
    if cfg.ingest_executor == "ray":
        raise ValueError(
            f"{msg}; lower train.cpus_per_worker, add CPU nodes or set train.ingest_executor=local"
        )
    warnings.warn(f"{msg}: decoding in the training process (ingest_executor local)", stacklevel=2)
    return "local"


def stream_ingest(config: dict, rank: int, world: int) -> Any:
    """The streaming mode's batch source for one rank: a :class:`pipelines.ingest.RankIngest`
    over the rank's shards (``shards_for_rank``), seeded by the run seed and the rank.
    ``.batches(start_step=step)`` resumes at the step counter."""
    import math

    from ovs.data.ingest import IngestConfig
    from ovs.data.train_data import shards_for_rank
    from pipelines.ingest import RankIngest

    cfg: TrainConfig = config["cfg"]
    window = max(1, math.ceil(cfg.shuffle_buffer / max(1, config["samples_per_shard"])))
    return RankIngest(
        shards_for_rank(config["shards"], rank, world),
        config["masks_dir"],
        config["texts_dir"],
        IngestConfig(
            augment=cfg.augment,
            batch_size=cfg.batch_size,
            require_keep=cfg.require_cc4m,
            window_shards=window,
        ),
        seed=config["seed"],
        rank=rank,
        executor=config.get("ingest_executor", "ray"),
    )


def train_loop(config: dict) -> None:
    """One Ray Train worker. ``config``: cfg, seed, shards, masks_dir, texts_dir, loss,
    class_texts, decode_size, out_dir, mlflow."""
    import ray.train
    import ray.train.torch

    from ovs.cpu import keep_freed_memory
    from ovs.data.ingest import as_float
    from ovs.data.train_data import shards_for_rank
    from ovs.models.text import tokenize
    from ovs.precision import training_dtype
    from ovs.training import SampleSource, make_batch, prompts_for_nouns

    cfg: TrainConfig = config["cfg"]
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    torch.set_num_threads(max(1, cfg.cpus_per_worker))
    device = ray.train.torch.get_device()
    if device.type == "cpu":
        keep_freed_memory()  # no page faults per step (ovs/cpu.py)
    state = resume_state()
    model, objective, opt, sched, start = setup(config, device, state)
    loss_cfg = config["loss"]
    context = cfg.sseg.model.text.context_length
    class_tokens = None
    if config.get("class_texts"):
        class_tokens = tokenize(config["class_texts"], context).to(device)
    net = METHODS[cfg.method].wrap_ddp(objective)  # every rank: it creates a process group
    streaming = not cfg.cache_in_memory
    source: SampleSource | None = None
    ingest: Any = None
    if streaming:  # Ray Data ingest (pipelines/ingest.py): resumes from the step counter
        ingest = stream_ingest(config, rank, world)
    else:
        source = SampleSource(
            shards_for_rank(config["shards"], rank, world),
            Path(config["masks_dir"]),
            Path(config["texts_dir"]),
            config["decode_size"],
            cfg,
            seed=config["seed"] * 1000 + rank * 7,
        )
    rng = np.random.default_rng([config["seed"], rank])  # augmentation and noun draws
    own = rank_state(state, rank, world)
    if own is not None:  # continue the data stream and every RNG where the checkpoint left them
        if source is not None:
            source.load_state_dict(own["source"])
        rng.bit_generator.state = own["rng"]
        set_rng_state(own["torch"], device)
    if ingest is not None:
        stream = ingest.batches(start_step=start)
    else:
        assert source is not None
        batches = source.batches(cfg.batch_size)
    tracker = rank0_tracker(config, rank)
    amp_dtype = training_dtype(cfg.amp_dtype, device)
    marker = Path(config["out_dir"]) / ".injected_failure"
    t_start = time.monotonic()
    window, window_t = Window(), time.monotonic()
    wait_fractions: list[float] = []
    step = start
    while step < cfg.steps:
        t_data = time.monotonic()
        if ingest is not None:  # decoded and augmented in the ingest's tasks
            b = next(stream)
            images = as_float(b.images.to(device, non_blocking=True))
            labels, texts, noun_lists = b.labels.to(device), b.texts, b.nouns
        else:
            samples = next(batches)
            images, labels, texts = make_batch(samples, cfg, rng)
            noun_lists = [s.nouns for s in samples]
        tokens = tokenize(texts, context)
        nouns = None
        if loss_cfg.noun_weight > 0:
            prompts, targets = prompts_for_nouns(
                noun_lists, loss_cfg.nouns_per_image, loss_cfg.noun_template, rng
            )
            nouns = (
                tokenize(prompts, context).to(device),
                torch.from_numpy(targets).to(device),
            )
        window.data_wait_s += time.monotonic() - t_data
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            out = net(
                images.to(device),
                labels.to(device),
                tokens.to(device),
                class_tokens,
                *(nouns or (None, None)),
            )
        opt.zero_grad(set_to_none=True)
        out["loss"].backward()
        grad_norm = (
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            if cfg.grad_clip > 0
            else torch.zeros((), device=device)
        )
        opt.step()
        sched.step()
        step += 1
        if step == cfg.inject_failure_at_step and rank == world - 1 and not marker.exists():
            marker.touch()
            raise RuntimeError(f"injected worker failure at step {step} (failure drill)")
        window.add({**out, "grad_norm": grad_norm}, images.shape[0])
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
            metrics = {f"train/{k}": v for k, v in window.means().items()}
            metrics.update(
                {
                    "train/lr": sched.get_last_lr()[0],
                    "step": step,
                    "train/img_per_s": window.images * world / dt,
                    "train/data_wait_fraction": window.data_wait_s / dt,
                }
            )
            wait_fractions.append(metrics["train/data_wait_fraction"])
            if tracker is not None:
                tracker.log_metrics(metrics, step=step)
            window, window_t = Window(), time.monotonic()
        if step % cfg.checkpoint_every == 0 or last:
            metrics = dict(metrics or {"step": step})
            metrics["data_wait_fraction"] = float(np.mean(wait_fractions or [0.0]))
            own_state = {"rng": rng.bit_generator.state, "torch": rng_state(device)}
            if source is not None:
                metrics["train/join_" + "used"] = source.stats.counts.get("used", 0)
                own_state["source"] = source.state_dict()
            else:  # the ingest resumes from the step; its skip counts since this start
                metrics.update({f"train/join_{k}": v for k, v in ingest.counts.items()})
                own_state["ingest_step"] = step
            save = METHODS[cfg.method].save_checkpoint
            report(metrics, rank, world, model, opt, sched, step, save, own_state)
        if out_of_time:
            break


def _gt_supervision(ctx: StageContext) -> tuple[Path, SSegLossConfig, list[str]]:
    """Supervised upper bound: world GT label maps in the pseudo-mask format, one target per
    class id, and the class names the matched mask features are classified against (the
    prompt the zero-shot evaluation uses)."""
    from ovs.data import world
    from ovs.data.train_data import write_gt_masks
    from ovs.eval.protocol import get_protocol
    from ovs.eval.templates import apply_templates, get_templates

    if "world" not in ctx.inputs:
        raise ValueError("train.supervision=gt needs the world stage (ground-truth masks)")
    out = ctx.out_dir / "gt_masks"
    counts = write_gt_masks(ctx.inputs["download"], ctx.inputs["world"] / "train" / "labels", out)
    ctx.tracker.log_metrics({f"gt_masks.{k}": float(v) for k, v in counts.items()})
    names = [c[0] for c in world.class_names(ctx.inputs["world"])]
    template = get_templates(get_protocol(ctx.section.eval_protocol).templates)[0]
    loss = replace(
        ctx.section.sseg.loss,
        num_pseudo_masks=len(names),
        class_weight=ctx.section.sseg.loss.class_weight or 1.0,
    )
    return out, loss, apply_templates(names, (template,))


def fit(ctx: StageContext) -> tuple[Path, dict]:
    """Run Ray Train; returns the final inference checkpoint path under the stage output and
    rank 0's last reported metrics (``step``: the steps done)."""
    from ovs.precision import resolve_dtype

    cfg: TrainConfig = ctx.section
    resolve_dtype(cfg.amp_dtype, torch.device("cpu"))  # an unknown name fails before Ray Train
    tracker: Any = ctx.tracker  # an MlflowTracker: workers reopen its run by id
    masks_dir, loss, class_texts = ctx.inputs["pseudo_masks"] / "masks", cfg.sseg.loss, None
    if cfg.supervision == "gt":
        masks_dir, loss, class_texts = _gt_supervision(ctx)
    elif cfg.supervision != "pseudo":
        raise ValueError(f"train.supervision must be 'pseudo' or 'gt', got {cfg.supervision!r}")
    import ray

    executor = ingest_executor(cfg, float(ray.cluster_resources().get("CPU", 0.0)))
    loop_config = {
        "cfg": cfg,
        "ingest_executor": executor,
        "samples_per_shard": ctx.cfg.download.number_sample_per_shard,
        "seed": ctx.cfg.seed,
        "shards": str(ctx.inputs["download"]),
        "masks_dir": str(masks_dir),
        "loss": loss,
        "class_texts": class_texts,
        "texts_dir": str(ctx.inputs["entities"] / "entities"),
        "decode_size": ctx.cfg.world.image_size
        if "world" in ctx.cfg.pipeline.stages
        else cfg.sseg.model.input_size,
        "out_dir": str(ctx.out_dir),
        "mlflow": {"uri": tracker.client.tracking_uri, "run_id": tracker.run_id},
    }
    return fit_and_export(train_loop, loop_config, cfg, "sseg", ctx.out_dir)


def zero_shot(ctx: StageContext, checkpoint: Path, tag: str) -> dict:
    """Evaluate a checkpoint on the world eval split with only class names."""
    from ovs.eval.datasets import synthetic_world
    from ovs.eval.method import load_trained
    from ovs.eval.protocol import evaluate, get_protocol

    cfg: TrainConfig = ctx.section
    model = load_trained(checkpoint)
    dataset = synthetic_world(ctx.inputs["world"], "eval")
    n = len(dataset) if cfg.eval_limit is None else min(cfg.eval_limit, len(dataset))
    with torch.inference_mode():
        res = evaluate(model, dataset, get_protocol(cfg.eval_protocol), range(n))
    return res


def log_pictures(ctx: StageContext, checkpoint: Path, result: dict) -> None:
    from ovs.eval.datasets import synthetic_world
    from ovs.eval.method import load_trained
    from ovs.eval.protocol import classifier_for, get_protocol, predict_label
    from ovs.eval.visualize import comparison_grid, confusion_chart, iou_bar_chart

    model = load_trained(checkpoint)
    dataset = synthetic_world(ctx.inputs["world"], "eval")
    protocol = get_protocol(ctx.section.eval_protocol)
    classifier = classifier_for(model, dataset, protocol)
    rows = []
    with torch.inference_mode():
        for i in range(min(8, len(dataset))):
            s = dataset[i]
            rows.append(
                (s["image"], predict_label(model, s["image"], classifier, protocol), s["label"])
            )
    grid = comparison_grid(rows)  # rows of (image, prediction, ground truth)
    ctx.tracker.log_image(grid, "overlays.png")
    ctx.tracker.log_figure(
        iou_bar_chart(result["per_class_iou"], "S-Seg zero-shot IoU (world)"), "per_class_iou.png"
    )
    ctx.tracker.log_figure(
        confusion_chart(result["confusion"], list(result["per_class_iou"]), "S-Seg (world)"),
        "confusion.png",
    )
    ctx.tracker.log_table(
        {"class": list(result["per_class_iou"]), "iou": list(result["per_class_iou"].values())},
        "per_class_iou.json",
    )


def run(ctx: StageContext) -> dict:
    cfg: TrainConfig = ctx.section
    spec = METHODS[cfg.method]
    init = ctx.out_dir / "model" / "init.pt"
    if not init.exists():
        model = spec.build_model(cfg.method_config, ctx.cfg.seed, None)
        spec.save_checkpoint(model, init, {"step": 0})
    t0 = time.time()
    final, reported = fit(ctx)
    train_seconds = time.time() - t0
    check_complete(int(reported.get("step", 0)), cfg.steps, "train", cfg.time_limit_s)
    metrics: dict[str, float] = {
        "train_seconds": train_seconds,
        "steps_done": float(reported["step"]),
        "steps": float(cfg.steps),
        "data_wait_fraction": float(reported.get("data_wait_fraction", 0.0)),
    }
    counts: dict[str, int] = {  # rank 0's join/ingest skip counts (train/join_used, ...)
        k.removeprefix("train/"): int(v) for k, v in reported.items() if k.startswith("train/join_")
    }
    if "world" in ctx.inputs:
        at_init = zero_shot(ctx, init, "init")
        result = zero_shot(ctx, final, "final")
        metrics.update(miou=result["miou"], miou_at_init=at_init["miou"], pixel_acc=result["acc"])
        oracle = ctx.manifests.get("pseudo_masks", {}).get("metrics", {}).get("oracle_miou")
        if oracle is not None:
            metrics["oracle_miou"] = float(oracle)
        counts["eval_images"] = int(result["num_images"])
        log_pictures(ctx, final, result)
    ctx.tracker.log_metrics(metrics)
    ctx.tracker.log_artifact(final, "model")
    return {"counts": counts, "metrics": metrics}


def _inputs(cfg) -> tuple[str, ...]:
    base = ("download", "entities", "pseudo_masks")
    return ("world", *base) if "world" in cfg.pipeline.stages else base


STAGE = Stage(
    "train", run=run, section=TrainConfig, inputs=_inputs, description="train S-Seg with Ray Train"
)

if __name__ == "__main__":
    from pipelines.common import main

    sys.exit(main("train"))
