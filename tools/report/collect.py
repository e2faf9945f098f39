"""What a pipeline run's report shows, read back from MLflow: its stage runs (timeline), the
evaluation results and per-class IoU (``evaluate``'s ``result.json`` artifacts), the pictures the
stages logged, training curves (metric histories) and the resolved config.

A skipped stage's numbers and pictures come from the run that made its output
(``ovs.source_run_id``), so a report of a rerun that reused everything still shows them.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipelines.tracking import TAG_SOURCE_RUN, TAG_STAGE, TAG_STATUS

# Pictures by stage: (artifact path, caption). Evaluate's per-combination pictures are found
# by walking its artifacts (one directory per method/protocol/benchmark).
STAGE_PICTURES = {
    "world": [("world_samples.png", "world samples")],
    "download": [("download_samples.png", "downloaded samples")],
    "entities": [("top_entities.png", "top entities")],
    "pseudo_masks": [("pseudo_masks_grid.png", "image / pseudo-mask / oracle / GT")],
    "train": [("overlays.png", "image / prediction / GT after training")],
    "self_train": [("overlays.png", "image / S-Seg / S-Seg+ / GT"), ("pseudo_labels.png", "")],
    "pairs": [("pairs_gallery.png", "noun-mask pairs")],
}
CURVE_PREFIXES = ("train/", "self_train/")


@dataclass
class StageRow:
    name: str
    run_name: str
    status: str  # ran | skipped | failed | incomplete | running
    seconds: float | None
    counts: dict[str, float]
    commit: str
    run_id: str
    source_run_id: str  # the run whose output a skipped stage reused ("" if it ran)


@dataclass
class ResultRow:
    method: str
    benchmark: str
    protocol: str
    miou: float
    pixel_acc: float
    macc: float
    num_images: int
    per_class_iou: dict[str, float]


@dataclass
class Picture:
    section: str  # "evaluate", "pseudo_masks", ...
    title: str
    png: bytes


@dataclass
class ReportData:
    run_id: str
    run_name: str
    experiment: str
    status: str
    started_ms: int
    seconds: float | None
    commit: str
    dirty: str
    machine: str
    stages: list[StageRow]
    results: list[ResultRow]
    pictures: list[Picture]
    curves: dict[str, list[tuple[int, float]]]  # metric -> [(step, value)]
    metrics: dict[str, float]  # the parent run's <stage>.<metric> summaries
    config_yaml: str
    extra: dict[str, Any] = field(default_factory=dict)


def latest_pipeline_run(client: Any) -> str:
    """The id of the newest run tagged ``ovs.kind=pipeline`` in any experiment."""
    exps = [e.experiment_id for e in client.search_experiments()]
    runs = client.search_runs(
        exps,
        filter_string="tags.`ovs.kind` = 'pipeline'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    if not runs:
        raise LookupError("no pipeline run recorded in this MLflow store")
    return runs[0].info.run_id


def _artifact(client: Any, run_id: str, path: str, tmp: Path) -> bytes | None:
    try:
        local = client.download_artifacts(run_id, path, str(tmp))
    except Exception:  # noqa: BLE001 - a picture a stage did not log (e.g. no examples)
        return None
    p = Path(local)
    return p.read_bytes() if p.is_file() else None


def _walk(client: Any, run_id: str, path: str = "") -> list[str]:
    """Every artifact file path of a run under ``path``."""
    out: list[str] = []
    for f in client.list_artifacts(run_id, path or None):
        out += _walk(client, run_id, f.path) if f.is_dir else [f.path]
    return out


def _stage_row(run: Any) -> StageRow:
    tags, m = run.data.tags, run.data.metrics
    end = run.info.end_time
    seconds = m.get("stage_seconds")
    if seconds is None and end:
        seconds = (end - run.info.start_time) / 1000
    return StageRow(
        name=tags.get(TAG_STAGE, run.info.run_name),
        run_name=run.info.run_name,
        status=tags.get(TAG_STATUS, run.info.status.lower()),
        seconds=seconds,
        counts={k[len("count.") :]: v for k, v in m.items() if k.startswith("count.")},
        commit=tags.get("ovs.git_commit", "unknown"),
        run_id=run.info.run_id,
        source_run_id=tags.get(TAG_SOURCE_RUN, ""),
    )


def _results(client: Any, run_id: str, tmp: Path) -> tuple[list[ResultRow], list[Picture]]:
    rows, pictures = [], []
    for path in sorted(p for p in _walk(client, run_id) if p.endswith("/result.json")):
        raw = _artifact(client, run_id, path, tmp)
        if raw is None:
            continue
        r = json.loads(raw)
        rows.append(
            ResultRow(
                method=r.get("method", path.split("/")[0]),
                benchmark=r.get("dataset", path.split("/")[-2]),
                protocol=r.get("protocol", path.split("/")[1]),
                miou=float(r["miou"]),
                pixel_acc=float(r.get("acc", float("nan"))),
                macc=float(r.get("macc", float("nan"))),
                num_images=int(r.get("num_images", 0)),
                per_class_iou={  # None: the class is in neither GT nor prediction
                    k: float("nan") if v is None else float(v)
                    for k, v in r.get("per_class_iou", {}).items()
                },
            )
        )
        base = path[: -len("result.json")]
        for name, what in (("overlays.png", "overlays"), ("confusion.png", "confusion matrix")):
            png = _artifact(client, run_id, base + name, tmp)
            if png is not None:
                pictures.append(Picture("evaluate", f"{base.rstrip('/')}: {what}", png))
    return rows, pictures


def _curves(client: Any, run: Any) -> dict[str, list[tuple[int, float]]]:
    out = {}
    for key in sorted(run.data.metrics):
        if key.startswith(CURVE_PREFIXES):
            hist = client.get_metric_history(run.info.run_id, key)
            out[key] = sorted((h.step, h.value) for h in hist)
    return out


def collect(client: Any, run_id: str) -> ReportData:
    """Everything the report shows about pipeline run ``run_id`` (its stage runs are the runs
    whose ``mlflow.parentRunId`` is it)."""
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # a quiet console
    parent = client.get_run(run_id)
    exp = client.get_experiment(parent.info.experiment_id)
    children = client.search_runs(
        [parent.info.experiment_id],
        filter_string=f"tags.mlflow.parentRunId = '{run_id}'",
        order_by=["attributes.start_time ASC"],
        max_results=1000,
    )
    stages = [_stage_row(r) for r in children]
    results: list[ResultRow] = []
    pictures: list[Picture] = []
    curves: dict[str, list[tuple[int, float]]] = {}
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        config = _artifact(client, run_id, "config.yaml", tmp) or b""
        for row in stages:
            src = row.source_run_id or row.run_id  # a skipped stage: the run that made it
            try:
                src_run = client.get_run(src)
            except Exception:  # noqa: BLE001 - the source run was deleted
                continue
            if row.name == "evaluate":
                r, p = _results(client, src, tmp)
                results += r
                pictures += p
            for path, caption in STAGE_PICTURES.get(row.name, []):
                png = _artifact(client, src, path, tmp)
                if png is not None:
                    title = caption or path
                    if row.name == "pseudo_masks" and "oracle_miou" in src_run.data.metrics:
                        title += f" (oracle mIoU {src_run.data.metrics['oracle_miou']:.4f})"
                    pictures.append(Picture(row.name, title, png))
            curves.update(_curves(client, src_run))
    tags = parent.info
    end = tags.end_time
    return ReportData(
        run_id=run_id,
        run_name=parent.info.run_name,
        experiment=exp.name,
        status=parent.info.status,
        started_ms=parent.info.start_time,
        seconds=parent.data.metrics.get(
            "pipeline_seconds", (end - parent.info.start_time) / 1000 if end else None
        ),
        commit=parent.data.tags.get("ovs.git_commit", "unknown"),
        dirty=parent.data.tags.get("ovs.git_dirty", "unknown"),
        machine=parent.data.tags.get("ovs.machine", "unknown"),
        stages=stages,
        results=results,
        pictures=pictures,
        curves=curves,
        metrics=dict(parent.data.metrics),
        config_yaml=config.decode(),
    )
