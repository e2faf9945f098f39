"""Stage ``train``: S-Seg (or any caption-trained method) with Ray Train (DDP), then zero-shot
evaluation on the world eval split.

    python pipelines/train.py [--config conf/default.yaml] [--force] [train.steps=300 ...]
        [train.methods=[clip] ...]

Several methods: ``train.method`` is the main one (its model is the stage output's
``model/latest.pt``, what ``evaluate``, ``self_train`` and ``pairs`` read); every other method
of ``train.trained_methods()`` (``train.methods`` and the requirements, in dependency order)
trains first on the same shards with the same loop settings into the output directory a
``train`` run of that method alone would have (:func:`method_outputs`: content-addressed,
resumable, reused by any config that trains it), with its own nested MLflow run and manifest;
a method whose spec needs another's checkpoint gets it bound into its section
(``MethodSpec.bind``). Methods loaded pretrained (``MethodSpec.trainable`` false) run no step.

The training loop (``pipelines/loop.py``) runs :class:`SSegTask` on Ray Train workers: each reads
its share of the download shards joined with their pseudo-masks and entity texts, trains with
AdamW + warm-up/cosine, and reports metrics (and, from rank 0, checkpoints) through
``ray.train.report``. A worker failure restarts the worker group from the
last checkpoint (``FailureConfig``); a whole-job rerun of the stage resumes from the last
checkpoint stored under the stage's output directory. Rank 0 logs losses, learning rate and
throughput to the stage's MLflow run. The driver then evaluates the initial and the final model
zero-shot with only class names and logs ``miou``, ``miou_at_init`` and ``oracle_miou``.
"""

from __future__ import annotations

import dataclasses
import math
import sys
import time
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ovs.methods import METHODS
from ovs.methods.sseg.config import SSegLossConfig
from ovs.stage import Stage, StageContext
from ovs.training import TrainConfig
from pipelines.loop import LoopJob, run_loop
from pipelines.ray_train import RunRef, check_complete

if TYPE_CHECKING:
    from ovs.training import SampleSource
    from pipelines.graph import ExperimentConfig  # the root type; graph imports this module
    from pipelines.ingest import RankIngest


def ingest_executor(cfg: TrainConfig, cluster_cpus: float) -> str:
    """Where the streaming ingest's decode tasks run (``TrainConfig`` docstring): ``local``
    in-memory mode or no spare CPU under ``auto``; ``ray`` when one is free; ``ray`` asked for
    with none free fails here, before Ray Train starts, naming the counts."""
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


@dataclass(frozen=True)
class SSegData:
    """Where a rank's training batches come from: the download shards joined by key with
    their masks (pseudo-masks, or world ground truth under ``supervision: gt``) and entity
    texts."""

    shards: str  # download shards directory
    masks_dir: str
    texts_dir: str
    decode_size: int  # in-memory mode: images decoded once at this size
    samples_per_shard: int  # streaming mode: sets the shuffle window in shards
    ingest_executor: str  # streaming mode: "ray" or "local" (:func:`ingest_executor`)


@dataclass(frozen=True)
class SSegTaskFactory:
    """The ``train`` stage's :class:`pipelines.loop.TaskFactory`: ``cfg.method`` on ``data``
    (``loss``: S-Seg's loss weights; None for the other caption methods)."""

    cfg: TrainConfig
    loss: Any  # the selected method's loss section (SSegLossConfig, GroupViT's, ...) or None
    data: SSegData
    class_texts: list[str] | None  # supervision gt: the texts matched masks are classified as

    def __call__(self, seed: int, device: torch.device, rank: int, world: int) -> SSegTask:
        if self.cfg.method == "ovsegmentor":  # caption batches + masked captions + partners
            from pipelines.ovsegmentor_task import OVSegmentorTask

            return OVSegmentorTask(self, seed, device, rank, world)
        return SSegTask(self, seed, device, rank, world)


def stream_ingest(cfg: TrainConfig, data: SSegData, seed: int, rank: int, world: int) -> RankIngest:
    """The streaming mode's batch source for one rank: a :class:`pipelines.ingest.RankIngest`
    over the rank's shards (``shards_for_rank``), seeded by the run seed and the rank.
    ``.batches(start_step=step)`` resumes at the step counter."""
    from ovs.data.ingest import IngestConfig
    from ovs.data.train_data import shards_for_rank
    from pipelines.ingest import RankIngest

    window = max(1, math.ceil(cfg.shuffle_buffer / max(1, data.samples_per_shard)))
    return RankIngest(
        shards_for_rank(data.shards, rank, world),
        data.masks_dir,
        data.texts_dir,
        IngestConfig(
            augment=cfg.augment,
            batch_size=cfg.batch_size,
            require_keep=cfg.require_cc4m,
            window_shards=window,
        ),
        seed=seed,
        rank=rank,
        executor=data.ingest_executor,
    )


class SSegTask:
    """The training pieces of a caption-trained method (S-Seg, CLIP, ...: its spec has a
    ``context_length``) in one worker (:class:`pipelines.loop.Task`). Every such objective takes
    the same positional inputs (:meth:`inputs`) and uses what it needs.

    Batches come from the rank's :class:`ovs.training.SampleSource` (in memory, resumed from its
    state) or its streaming :class:`pipelines.ingest.RankIngest` (resumed from the step). One
    numpy generator per rank draws, each step, the in-memory augmentation and then the caption
    nouns of the noun loss.
    """

    metric_prefix = "train/"
    log_grad_norm = True

    def __init__(
        self, factory: SSegTaskFactory, seed: int, device: torch.device, rank: int, world: int
    ) -> None:
        from ovs.models.text import tokenize

        self.cfg, self.loss, self.data = factory.cfg, factory.loss, factory.data
        self.seed, self.device, self.rank, self.world = seed, device, rank, world
        self.spec = METHODS[self.cfg.method]
        method_cfg = self.cfg.method_config
        if self.loss is not None:
            method_cfg = replace(method_cfg, loss=self.loss)
        if self.spec.context_length is None:
            raise ValueError(f"method {self.cfg.method} is not trained on caption batches")
        self.context = self.spec.context_length(method_cfg)
        self.model = self.spec.build_model(method_cfg, seed, None)
        self._objective = self.spec.objective(self.model, method_cfg)
        self._objective.to(device)  # the model and the objective's own parameters, if any
        self.class_tokens = None
        if factory.class_texts:
            self.class_tokens = tokenize(factory.class_texts, self.context).to(device)
        self.rng = np.random.default_rng([seed, rank])  # augmentation and noun draws
        self.source: SampleSource | None = None
        self.ingest: RankIngest | None = None

    def optimizer(self) -> torch.optim.Optimizer:
        return self.spec.optimizer(self.model, self.cfg)

    def schedule(self, opt: torch.optim.Optimizer) -> torch.optim.lr_scheduler.LRScheduler:
        from ovs.train.schedules import cosine_schedule

        return cosine_schedule(opt, self.cfg)

    def objective(self) -> torch.nn.Module:
        return self.spec.wrap_ddp(self._objective)

    def batches(self, start_step: int, own: dict | None) -> Iterator[Any]:
        from ovs.data.train_data import shards_for_rank
        from ovs.training import SampleSource

        if not self.cfg.cache_in_memory:  # Ray Data ingest: resumes from the step counter
            self.ingest = stream_ingest(self.cfg, self.data, self.seed, self.rank, self.world)
        else:
            self.source = SampleSource(
                shards_for_rank(self.data.shards, self.rank, self.world),
                Path(self.data.masks_dir),
                Path(self.data.texts_dir),
                self.data.decode_size,
                self.cfg,
                seed=self.seed * 1000 + self.rank * 7,
            )
        if own is not None:  # continue the data stream and its RNG where the checkpoint left them
            if self.source is not None:
                self.source.load_state_dict(own["source"])
            self.rng.bit_generator.state = own["rng"]
        if self.ingest is not None:
            return self.ingest.batches(start_step=start_step)
        assert self.source is not None
        return self.source.batches(self.cfg.batch_size)

    def inputs(self, batch: Any) -> tuple[tuple[Any, ...], int]:
        """``(images, labels, tokens, class tokens, noun tokens, noun targets)`` for
        the S-Seg objective (:mod:`ovs.methods.sseg.objective`)."""
        from ovs.data.ingest import as_float
        from ovs.models.text import tokenize
        from ovs.training import make_batch, prompts_for_nouns

        device, context = self.device, self.context
        if self.ingest is not None:  # decoded and augmented in the ingest's tasks
            images = as_float(batch.images.to(device, non_blocking=True))
            labels, texts, noun_lists = batch.labels.to(device), batch.texts, batch.nouns
        else:
            images, labels, texts = make_batch(batch, self.cfg.augment, self.rng)
            noun_lists = [s.nouns for s in batch]
        tokens = tokenize(texts, context).to(device)
        nouns: tuple[Any, Any] = (None, None)
        if self.loss is not None and self.loss.noun_weight > 0:
            prompts, targets = prompts_for_nouns(
                noun_lists, self.loss.nouns_per_image, self.loss.noun_template, self.rng
            )
            nouns = (
                tokenize(prompts, context).to(device),
                torch.from_numpy(targets).to(device),
            )
        inputs = (images.to(device), labels.to(device), tokens, self.class_tokens, *nouns)
        return inputs, images.shape[0]

    def data_state(self, step: int) -> dict:
        if self.source is not None:
            return {"rng": self.rng.bit_generator.state, "source": self.source.state_dict()}
        return {"rng": self.rng.bit_generator.state, "ingest_step": step}

    def counts(self) -> dict[str, float]:
        """The join's used samples (in memory) or the ingest's counts since this start."""
        if self.source is not None:
            return {"train/join_used": self.source.stats.counts.get("used", 0)}
        assert self.ingest is not None
        return {f"train/join_{k}": v for k, v in self.ingest.counts.items()}

    def save_model(self, path: Path, extra: dict) -> Any:
        return self.spec.save_checkpoint(self.model, path, extra)


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
    """Run the training loop of ``ctx.section.method``; returns the final inference checkpoint
    path under ``ctx.out_dir`` and rank 0's last reported metrics (``step``: the steps done)."""
    import ray

    cfg: TrainConfig = ctx.section
    root: ExperimentConfig = ctx.cfg  # the assembled root: its sections are runtime fields
    tracker: Any = ctx.tracker  # an MlflowTracker: workers reopen its run by id
    spec = METHODS[cfg.method]
    masks_dir = ctx.inputs["pseudo_masks"] / "masks"
    # S-Seg's loss weights, or the selected method's own loss section when it has one (None: CLIP)
    loss: Any = cfg.sseg.loss if cfg.method == "sseg" else getattr(cfg.method_config, "loss", None)
    class_texts = None
    if cfg.supervision == "gt":
        if cfg.method != "sseg":
            raise ValueError(f"train.supervision=gt trains S-Seg only, not {cfg.method}")
        masks_dir, loss, class_texts = _gt_supervision(ctx)
    if spec.input_size is None:
        raise ValueError(f"method {cfg.method} is not trained on caption batches")
    data = SSegData(
        shards=str(ctx.inputs["download"]),
        masks_dir=str(masks_dir),
        texts_dir=str(ctx.inputs["entities"] / "entities"),
        decode_size=root.world.image_size
        if "world" in root.pipeline.stages
        else spec.input_size(cfg.method_config),
        samples_per_shard=root.download.number_sample_per_shard,
        ingest_executor=ingest_executor(cfg, float(ray.cluster_resources().get("CPU", 0.0))),
    )
    job = LoopJob(
        loop=cfg,
        task=SSegTaskFactory(cfg, loss, data, class_texts),
        seed=ctx.cfg.seed,
        out_dir=str(ctx.out_dir),
        run=RunRef(tracker.client.tracking_uri, tracker.run_id),
    )
    return run_loop(job, cfg.method)


def zero_shot(ctx: StageContext, checkpoint: Path) -> dict:
    """Evaluate a checkpoint on the world eval split with only class names."""
    from ovs.eval.datasets import synthetic_world
    from ovs.eval.method import load_trained
    from ovs.eval.protocol import evaluate, get_protocol

    cfg: TrainConfig = ctx.section
    model = load_trained(checkpoint)
    dataset = synthetic_world(ctx.inputs["world"])  # world.report_split
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
    dataset = synthetic_world(ctx.inputs["world"])  # world.report_split
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
    title = {"sseg": "S-Seg"}.get(ctx.section.method, ctx.section.method)
    ctx.tracker.log_figure(
        iou_bar_chart(result["per_class_iou"], f"{title} zero-shot IoU (world)"),
        "per_class_iou.png",
    )
    ctx.tracker.log_figure(
        confusion_chart(result["confusion"], list(result["per_class_iou"]), f"{title} (world)"),
        "confusion.png",
    )
    ctx.tracker.log_table(
        {"class": list(result["per_class_iou"]), "iou": list(result["per_class_iou"].values())},
        "per_class_iou.json",
    )


def method_section(cfg: TrainConfig, method: str, checkpoints: Mapping[str, Path]) -> TrainConfig:
    """The ``train`` section of a run of ``method`` alone (``methods`` empty), the checkpoints
    of its requirements bound into its own section (``MethodSpec.bind``)."""
    sub = replace(cfg, method=method, methods=[])
    spec = METHODS[method]
    if spec.bind is not None:
        bound = spec.bind(getattr(sub, method), {r: checkpoints[r] for r in spec.requires})
        sub = replace(sub, **{method: bound})
    return sub


def method_outputs(root: ExperimentConfig, out_dir: Path) -> dict[str, tuple[TrainConfig, Path]]:
    """``{method: (its train section, its output directory)}`` for every trained method, in
    training order: the main one (``train.method``) in the stage's ``out_dir``, each other in
    the directory of a ``train`` run of it alone (its own content address), so its checkpoint
    is ``<dir>/model/latest.pt``."""
    from ovs.stage import resolve
    from pipelines.graph import STAGES

    cfg: TrainConfig = root.train
    outs: dict[str, tuple[TrainConfig, Path]] = {}
    checkpoints: dict[str, Path] = {}
    for m in cfg.trained_methods():
        sub = method_section(cfg, m, checkpoints)
        if m == cfg.method:
            sub, d = replace(sub, methods=list(cfg.methods)), out_dir
        else:  # addressed by the unbound section: the directory of `train.method=<m>` alone
            alone = replace(cfg, method=m, methods=[])
            d = resolve(STAGES, "train", replace(root, train=alone)).out_dir
        outs[m] = (sub, d)
        checkpoints[m] = d / "model" / "latest.pt"
    return outs


def trained_checkpoints(root: ExperimentConfig, out_dir: Path) -> dict[str, Path]:
    """``{method: model/latest.pt}`` of every method a ``train`` output at ``out_dir`` trained
    (what ``evaluate`` evaluates)."""
    return {m: d / "model" / "latest.pt" for m, (_, d) in method_outputs(root, out_dir).items()}


def _child_tracker(ctx: StageContext, method: str, out_dir: Path) -> Any:
    """A nested MLflow run of the stage's run for one more method's training."""
    from pipelines.tracking import TAG_OUTPUT, MlflowTracker

    parent: Any = ctx.tracker
    exp_id = parent.client.get_run(parent.run_id).info.experiment_id
    run = parent.client.create_run(
        exp_id,
        run_name=f"train.{method}",
        tags={"mlflow.parentRunId": parent.run_id, TAG_OUTPUT: str(out_dir)},
    )
    return MlflowTracker(parent.client, run.info.run_id)


def train_other(ctx: StageContext, method: str, section: TrainConfig, out_dir: Path) -> dict:
    """Train one more method into its own output ``out_dir`` (skipped when its manifest
    exists: trained by this or another config), with its own nested MLflow run and manifest
    (the one a ``train`` run of it alone writes). Returns the manifest."""
    from ovs import provenance
    from ovs.config import to_dict
    from ovs.stage import read_manifest, resolve, write_manifest
    from pipelines.graph import STAGES

    done = read_manifest(out_dir)
    if done is not None:
        return done
    parent: Any = ctx.cfg  # the assembled root (ExperimentConfig)
    root = replace(parent, train=section)
    out_dir.mkdir(parents=True, exist_ok=True)
    tracker = _child_tracker(ctx, method, out_dir)
    started = time.time()
    result = run_method(dataclasses.replace(ctx, cfg=root, out_dir=out_dir, tracker=tracker))
    finished = time.time()
    manifest = {
        "stage": "train",
        "hash": out_dir.name,
        "inputs": resolve(STAGES, "train", root).inputs,
        "counts": result["counts"],
        "metrics": result["metrics"],
        "timings": {"started": started, "finished": finished, "seconds": finished - started},
        "config": to_dict(section),
        "code": dict(provenance.current()),
        "mlflow_run_id": tracker.run_id,
        "mlflow_experiment_id": tracker.client.get_run(tracker.run_id).info.experiment_id,
    }
    write_manifest(out_dir, manifest)
    tracker.client.set_terminated(tracker.run_id, "FINISHED")
    return manifest


def run(ctx: StageContext) -> dict:
    """Every other trained method first (:func:`train_other`), then the main one here; the
    others' metrics are added as ``<method>.<metric>``."""
    outs = method_outputs(ctx.cfg, ctx.out_dir)
    main: TrainConfig = ctx.section
    extra: dict[str, float] = {}
    for m, (section, out_dir) in outs.items():
        if m != main.method:
            got = train_other(ctx, m, section, out_dir)
            extra.update({f"{m}.{k}": float(v) for k, v in got["metrics"].items()})
    section = outs[main.method][0]
    root: Any = ctx.cfg
    result = run_method(dataclasses.replace(ctx, cfg=replace(root, train=section)))
    if extra:
        ctx.tracker.log_metrics(extra)
        result["metrics"].update(extra)
    return result


def run_method(ctx: StageContext) -> dict:
    """Train ``ctx.section.method`` into ``ctx.out_dir`` (none of its steps when it is loaded
    pretrained), evaluate it zero-shot on the world and log it to ``ctx.tracker``."""
    cfg: TrainConfig = ctx.section
    spec = METHODS[cfg.method]
    init = ctx.out_dir / "model" / "init.pt"
    if not init.exists():
        model = spec.build_model(cfg.method_config, ctx.cfg.seed, None)
        spec.save_checkpoint(model, init, {"step": 0})
    t0 = time.time()
    if spec.is_trainable(cfg.method_config):
        final, reported = fit(ctx)
        check_complete(int(reported.get("step", 0)), cfg.steps, "train", cfg.time_limit_s)
    else:  # pretrained: the initial model is the final one
        from ovs.io import atomic_write_bytes

        final, reported = ctx.out_dir / "model" / "latest.pt", {"step": 0}
        atomic_write_bytes(final, init.read_bytes())
    train_seconds = time.time() - t0
    metrics: dict[str, float] = {
        "train_seconds": train_seconds,
        "steps_done": float(reported["step"]),
        "steps": float(cfg.steps if spec.is_trainable(cfg.method_config) else 0),
        "data_wait_fraction": float(reported.get("data_wait_fraction", 0.0)),
    }
    counts: dict[str, int] = {  # rank 0's join/ingest skip counts (train/join_used, ...)
        k.removeprefix("train/"): int(v) for k, v in reported.items() if k.startswith("train/join_")
    }
    if "world" in ctx.inputs:
        at_init = zero_shot(ctx, init)
        result = zero_shot(ctx, final)
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
    "train",
    run=run,
    section=TrainConfig,
    inputs=_inputs,
    description="train S-Seg with Ray Train",
)

if __name__ == "__main__":
    from pipelines.common import main

    sys.exit(main("train"))
