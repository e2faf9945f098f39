"""Stage ``evaluate``: zero-shot mIoU of the trained S-Seg model (and baselines), sharded over
Ray Data actors, on the synthetic world and every configured benchmark whose data exists.

    python pipelines/evaluate.py [--config conf/default.yaml] [--force]
        [evaluate.protocols=[mask_free,training_free] evaluate.num_gpus=1 ...]

Inputs: ``train`` (its ``model/latest.pt`` and the checkpoints of ``train.methods``, found
by ``pipelines.train.trained_checkpoints``) and ``world`` (when ``world`` is in
``pipeline.stages``; its eval split is always evaluated). Methods: every evaluation row of
every trained method (``MethodSpec.evaluation_rows``: ``sseg``; ``clip``, ``maskclip``,
``pm_clip`` of a trained CLIP; the main method's first), then ``evaluate.baselines``. For each,
one Ray Data pass covers every method × protocol
(``evaluate.protocols``) × dataset task: the shard mapper (:mod:`pipelines.shard_map`) runs
one pool of ``num_actors`` :class:`~ovs.eval.runner.MethodsEvaluator` actors (each keeps the
method it loaded last; the items, batches of one method's global image ids, come ordered by
method, so each loads a method about once) → rows summed per task with ``combine_rows`` →
``shard_metrics``, each method's outputs written as soon as its batches are back. A
configured benchmark without data fails the pipeline before it starts
(``pipelines/common.py::preflight``) unless its entry says ``optional: true``: then it is
skipped with one warning and counted (``datasets_missing``), and once its data appears the
next run evaluates it in the same output directory (``stale``; the other benchmarks'
results are kept).

Outputs, per combination, in ``<out>/<method>/<protocol>/<dataset>/``: ``per_class_iou.json``
(table), ``per_class_iou.png`` (bar chart), ``overlays.png`` (image / prediction / GT rows) and
``result.json`` (metrics + confusion matrix, written last and atomically: a rerun skips the
combinations that have it). Each directory is logged to the stage's MLflow run under the same
path; ``protocols.json`` holds the resolved protocol settings (also logged as params).

Comparison: ``comparison.json`` (the method x benchmark x protocol table of
:mod:`ovs.eval.comparison`: mIoU, pixel accuracy), ``comparison.png`` (its bar chart) and
``comparison.md`` in ``<out>/``, logged to the stage's run (``python -m tools.runs table``
prints it).

Metrics: ``[<method>.][<protocol>.][<dataset>.]{miou,pixel_acc,macc}`` where the method part
is left out for the main method's own row (``sseg``), the protocol part for the first protocol and the dataset part for
the world: ``miou`` is S-Seg on the world under the first protocol, ``voc21.miou``,
``training_free.voc21.miou``, ``maskclip.voc21.miou``.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from ovs.config import flatten, to_dict
from ovs.eval.config import BenchmarkMissing, EvalConfig, EvalDatasetConfig
from ovs.eval.datasets import SegDataset, build_dataset
from ovs.eval.method import MethodRef
from ovs.eval.protocol import EvalShard, ProtocolConfig
from ovs.eval.runner import EvalTask
from ovs.io import atomic_write_bytes, atomic_write_json
from ovs.stage import Stage, StageContext
from pipelines.shard_map import ActorResources, WorkItem, map_items

if TYPE_CHECKING:
    from pipelines.graph import ExperimentConfig  # the root type; graph imports this module

log = logging.getLogger("ovs")
SSEG = "sseg"
RESULT = "result.json"


def _inputs(cfg: ExperimentConfig) -> tuple[str, ...]:
    return ("train", "world") if "world" in cfg.pipeline.stages else ("train",)


def dataset_root(d: EvalDatasetConfig, world_dir: Path | None) -> str:
    """Where entry ``d``'s data lives (``from_stage: world`` roots are under the world output)."""
    if d.from_stage == "world":
        if world_dir is None:
            raise BenchmarkMissing(f"benchmark {d.name}: from_stage world, but no world input")
        return str(world_dir / d.root)
    return d.root


def find_datasets(
    ctx: StageContext,
) -> tuple[list[tuple[EvalDatasetConfig, int]], list[tuple[str, str]]]:
    """``([(dataset config, images to evaluate)], [(benchmark, why it is missing)])``.

    The world (from the ``world`` input) comes first; a configured benchmark is missing when
    its root is empty, its layout is not found, or it holds no samples. Only ``optional``
    entries may be missing (the pipeline checks the others before it starts); a required one
    whose data has gone since raises :class:`BenchmarkMissing`.
    """
    from ovs.eval.datasets import missing_reason

    cfg: EvalConfig = ctx.section
    world_dir = ctx.inputs.get("world")
    wanted = [replace(d, root=dataset_root(d, world_dir)) for d in cfg.datasets]
    if world_dir is not None:
        if any(d.name == "world" for d in wanted):
            raise ValueError("evaluate.datasets lists 'world', which comes from the world stage")
        world = EvalDatasetConfig(  # split "": the world's report_split (eval, or val to tune)
            "world", str(world_dir), "", cfg.world_max_images, optional=True
        )
        wanted.insert(0, world)
    found, missing = [], []
    for d in wanted:
        why = missing_reason(d.name, d.root, d.split or None)
        if why is not None and not d.optional:
            raise BenchmarkMissing(f"evaluate benchmark {d.name} (root {d.root!r}): {why}")
        if why is not None:
            missing.append((d.name, why))
            continue
        n = len(build_dataset(d.name, d.root, d.split or None))
        found.append((d, n if d.max_images is None else min(n, d.max_images)))
    return found, missing


def stale(cfg: ExperimentConfig, manifest: dict) -> str | None:
    """Why a completed ``evaluate`` output must run again: an optional benchmark that was
    missing then (it has no ``<name>.images`` count) has data now. The rerun resumes in the
    same directory, so only the new benchmark's combinations are computed."""
    from ovs.eval.datasets import missing_reason

    counts = manifest.get("counts", {})
    world_hash = manifest.get("inputs", {}).get("world")
    world_dir = cfg.workdir_path / "world" / world_hash if world_hash else None
    for d in cfg.evaluate.datasets:
        if f"{d.name}.images" in counts or (d.from_stage and world_dir is None):
            continue
        root = dataset_root(d, world_dir)
        if missing_reason(d.name, root, d.split or None) is None:
            return f"benchmark {d.name} was missing when this output was made and now has data at {root}"
    return None


def methods(ctx: StageContext, device: str) -> list[tuple[str, MethodRef]]:
    """``(row name, reference)`` of every evaluation row of every trained method (the main
    method's first), then every configured baseline."""
    from ovs.methods import get_method
    from pipelines.train import trained_checkpoints

    cfg: EvalConfig = ctx.section
    root: ExperimentConfig = ctx.cfg
    trained = trained_checkpoints(root, ctx.inputs["train"])
    main = root.train.method
    out: list[tuple[str, MethodRef]] = []
    for m in sorted(trained, key=lambda m: m != main):  # stable: training order after main
        if not trained[m].is_file():
            raise FileNotFoundError(f"the train stage output has no {m} checkpoint {trained[m]}")
        for row in get_method(m).evaluation_rows():
            ref = MethodRef(
                checkpoint=str(trained[m]),
                device=device,
                row=row,
                pseudo_masks=getattr(root, "pseudo_masks", None),
            )
            out.append((row, ref))
    names = [n for n, _ in out]
    clash = sorted({b.name for b in cfg.baselines} & set(names))
    if clash or len(set(names)) != len(names):
        raise ValueError(
            f"evaluate: evaluation rows {names} and evaluate.baselines share names {clash}; "
            "rename the baselines"
        )
    for b in cfg.baselines:
        spec = MethodRef(b.method, None, b.model, b.pretrained, device, b.logit_scale)
        out.append((b.name, spec))
    return out


def evaluate_sharded(
    methods: list[tuple[str, MethodRef, list[EvalTask]]],
    cfg: EvalConfig,
    seed: int,
    progress,
    on_method: Callable[[int, list[tuple[EvalShard, dict]]], None],
) -> None:
    """Evaluate every ``(name, reference, tasks)`` of ``methods`` with one pool of
    ``cfg.num_actors`` actors, ``cfg.batch_size`` images of one method per call: the items
    are ordered by method, and each actor keeps the method it loaded last
    (:class:`~ovs.eval.runner.MethodsEvaluator`), so it loads each method about once and the
    pool starts once per stage, not once per method. Every ``task.num_images`` must be set.

    As soon as all items of method ``j`` are back, ``on_method(j, per_task)`` is called with,
    per task, the summed :class:`EvalShard` and ``{index: uint8[H, W] prediction}`` for its
    first ``task.num_examples`` images (so a killed run keeps the methods finished before).
    """
    from ovs.eval.runner import MethodsEvaluator

    step = max(1, cfg.batch_size)
    keys: list[list[str]] = []
    items: list[WorkItem] = []
    for j, (name, _, tasks) in enumerate(methods):
        total = sum(int(t.num_images or 0) for t in tasks)
        mine = [
            WorkItem(
                f"{name}/{i // step:05d}",
                {"method": j, "ids": list(range(i, min(i + step, total)))},
            )
            for i in range(0, total, step)
        ]
        keys.append([it.key for it in mine])
        items.extend(mine)
    owner = {key: j for j, ks in enumerate(keys) for key in ks}
    got: list[dict[str, dict]] = [{} for _ in methods]

    def arrived(key: str, row: dict) -> None:
        j = owner[key]
        got[j][key] = row
        if len(got[j]) == len(keys[j]):
            rows = [got[j][k] for k in keys[j]]  # id order: deterministic skip lists
            on_method(j, _per_task(methods[j][2], rows))

    resources = ActorResources(cfg.num_actors, num_cpus=cfg.num_cpus, num_gpus=cfg.num_gpus)
    init = {"methods": [(spec, tasks) for _, spec, tasks in methods], "seed": seed}
    map_items(items, MethodsEvaluator, init, resources, progress, "batches", arrived)


def _per_task(tasks: list[EvalTask], rows: list[dict]) -> list[tuple[EvalShard, dict]]:
    """One method's rows summed per task (and its example predictions), in task order."""
    from ovs.eval.runner import combine_rows, decode_examples

    shards: list[EvalShard | None] = [None] * len(tasks)
    examples: list[dict] = [{} for _ in tasks]
    for t in {int(t) for row in rows for t in row["task"]}:
        shards[t] = combine_rows(rows, task=t)
        examples[t] = decode_examples(rows, task=t)
    missing = [tasks[i].dataset.name for i, s in enumerate(shards) if s is None]
    if missing:
        raise RuntimeError(f"the evaluation returned no rows for {missing}")
    return [(s, e) for s, e in zip(shards, examples) if s is not None]  # all set (checked)


OVERLAY_PANEL_PX = 256  # per panel of overlays.png (world images are 32-64 px: upscaled, nearest)


def write_outputs(out: Path, ds: SegDataset, result: dict, examples: dict, title: str) -> None:
    """Table, bar chart, confusion matrix and overlay grid into ``out``, then ``result.json``
    (last)."""
    from ovs.codecs import png_bytes
    from ovs.eval.visualize import (
        comparison_grid,
        confusion_chart,
        figure_to_png,
        iou_bar_chart,
        legend,
        with_legend,
    )

    iou = result["per_class_iou"]
    atomic_write_json(out / "per_class_iou.json", {"class": list(iou), "iou": list(iou.values())})
    atomic_write_bytes(out / "per_class_iou.png", figure_to_png(iou_bar_chart(iou, title)))
    chart = confusion_chart(result["confusion"], list(iou), title)
    atomic_write_bytes(out / "confusion.png", figure_to_png(chart))
    rows = []
    for i in sorted(examples):
        try:
            sample = ds[i]
        except (OSError, ValueError):
            continue
        rows.append((sample["image"], examples[i], sample["label"]))
    if rows:
        grid = comparison_grid(rows, panel_width=OVERLAY_PANEL_PX)
        atomic_write_bytes(out / "overlays.png", png_bytes(with_legend(grid, legend(list(iou)))))
    atomic_write_json(out / RESULT, result)


def metric_prefix(
    method: str, protocol: str, dataset: str, first_protocol: str, main: str = SSEG
) -> str:
    parts = [
        method if method != main else "",
        protocol if protocol != first_protocol else "",
        dataset if dataset != "world" else "",
    ]
    return "".join(f"{p}." for p in parts if p)


def finished_and_todo(
    ctx: StageContext,
    method: str,
    protocols: list[ProtocolConfig],
    found: list[tuple[EvalDatasetConfig, int]],
) -> tuple[dict[tuple[str, str], dict], list[EvalTask]]:
    """One method's results read back, keyed by ``(protocol, dataset)``, from the
    combinations whose ``result.json`` exists (resume), and the tasks of the rest."""
    cfg: EvalConfig = ctx.section
    results, todo = {}, []
    for protocol in protocols:
        for dataset, n in found:
            out = ctx.out_dir / method / protocol.name / dataset.name
            if (out / RESULT).is_file():
                results[protocol.name, dataset.name] = json.loads((out / RESULT).read_text())
            else:
                todo.append(EvalTask(dataset, protocol, n, min(cfg.num_examples, n)))
    return results, todo


def write_method(
    ctx: StageContext,
    method: str,
    todo: list[EvalTask],
    per_task: list[tuple[EvalShard, dict]],
) -> tuple[dict[tuple[str, str], dict], int]:
    """Metrics and outputs (pictures first, ``result.json`` last) of one method's evaluated
    tasks: its results keyed by ``(protocol, dataset)``, and the images evaluated."""
    from ovs.eval.protocol import shard_metrics

    results, images = {}, 0
    for task, (shard, examples) in zip(todo, per_task):
        d, p = task.dataset, task.protocol
        ds = build_dataset(d.name, d.root, d.split or None)
        result = shard_metrics(shard, ds)
        result.update(
            dataset=d.name,
            protocol=p.name,
            method=method,
            skipped=shard.skipped,
            missing_files=ds.missing,
        )
        out = ctx.out_dir / method / p.name / d.name
        write_outputs(out, ds, result, examples, f"{method} / {p.name} / {d.name}")
        results[p.name, d.name] = result
        images += shard.num_images
    return results, images


def evaluate_methods(
    ctx: StageContext,
    rows: list[tuple[str, MethodRef]],
    protocols: list[ProtocolConfig],
    found: list[tuple[EvalDatasetConfig, int]],
) -> tuple[dict[str, dict[tuple[str, str], dict]], int]:
    """Every method's results, keyed by method then ``(protocol, dataset)``, and the images
    evaluated now. Combinations whose ``result.json`` exists are read back (resume); the rest
    of every method are evaluated in one sharded pass, each method's outputs written as soon
    as its items are back."""
    results: dict[str, dict[tuple[str, str], dict]] = {}
    pending: list[tuple[str, MethodRef, list[EvalTask]]] = []
    for method, spec in rows:
        results[method], todo = finished_and_todo(ctx, method, protocols, found)
        if todo:
            log.info(
                "[evaluate] %s: %s",
                method,
                ", ".join(
                    f"{t.protocol.name}/{t.dataset.name} ({t.num_images} images)" for t in todo
                ),
            )
            pending.append((method, spec, todo))
    images = 0

    def written(j: int, per_task: list[tuple[EvalShard, dict]]) -> None:
        nonlocal images
        method, _, todo = pending[j]
        done, n = write_method(ctx, method, todo, per_task)
        results[method].update(done)
        images += n

    if pending:
        evaluate_sharded(pending, ctx.section, ctx.cfg.seed, ctx.progress, written)
    return results, images


def log_comparison(ctx: StageContext, results: list[dict]) -> None:
    """The comparison table (JSON, Markdown) and its bar chart into the stage output, logged."""
    from ovs.eval.comparison import comparison_chart, comparison_table, markdown
    from ovs.eval.visualize import figure_to_png

    table = comparison_table(results)
    atomic_write_json(ctx.out_dir / "comparison.json", table)
    atomic_write_bytes(ctx.out_dir / "comparison.md", markdown(table).encode())
    atomic_write_bytes(ctx.out_dir / "comparison.png", figure_to_png(comparison_chart(table)))
    for name in ("comparison.json", "comparison.md", "comparison.png"):
        ctx.tracker.log_artifact(ctx.out_dir / name)


def run(ctx: StageContext) -> dict:
    cfg: EvalConfig = ctx.section
    protocols = cfg.resolved_protocols()
    ckpt = ctx.inputs["train"] / "model" / "latest.pt"
    if not ckpt.is_file():
        raise FileNotFoundError(f"the train stage output has no checkpoint {ckpt}")
    atomic_write_json(ctx.out_dir / "protocols.json", [to_dict(p) for p in protocols])
    ctx.tracker.log_artifact(ctx.out_dir / "protocols.json")
    for p in protocols:
        ctx.tracker.log_params(flatten(to_dict(p), f"protocol.{p.name}."))
    found, missing = find_datasets(ctx)
    for name, why in missing:
        log.warning("[evaluate] benchmark %s skipped: %s", name, why)
    if missing:
        ctx.tracker.log_text("".join(f"{n}: {w}\n" for n, w in missing), "missing_benchmarks.txt")
    if not found:
        log.warning("[evaluate] nothing to evaluate: no world stage and no benchmark data")
    metrics: dict[str, float] = {}
    counts: dict[str, int] = {"datasets_evaluated": len(found), "datasets_missing": len(missing)}
    start = time.perf_counter()
    root: ExperimentConfig = ctx.cfg
    main = root.train.method
    compared: list[dict] = []
    rows = methods(ctx, "cuda" if cfg.num_gpus > 0 else "cpu")
    every, images = evaluate_methods(ctx, rows, protocols, found)
    for method, _ in rows:
        results = every[method]
        for protocol in protocols:
            for dataset, _ in found:
                result = results[protocol.name, dataset.name]
                path = f"{method}/{protocol.name}/{dataset.name}"
                ctx.tracker.log_artifact(ctx.out_dir / path, path)
                compared.append(result)
                prefix = metric_prefix(method, protocol.name, dataset.name, protocols[0].name, main)
                metrics[prefix + "miou"] = result["miou"]
                metrics[prefix + "pixel_acc"] = result["acc"]
                metrics[prefix + "macc"] = result["macc"]
                if method == main and protocol is protocols[0]:
                    counts[f"{dataset.name}.images"] = int(result["num_images"])
                    counts[f"{dataset.name}.skipped"] = int(result["num_skipped"])
    if compared:
        log_comparison(ctx, compared)
    if images:
        metrics["img_per_s"] = images / (time.perf_counter() - start)
    return {"counts": counts, "metrics": metrics}


STAGE = Stage(
    "evaluate",
    run=run,
    section=EvalConfig,
    inputs=_inputs,
    description="zero-shot mIoU of the trained model and baselines on the world and benchmarks",
    stale=stale,
)

if __name__ == "__main__":
    from pipelines.common import main

    sys.exit(main("evaluate"))
