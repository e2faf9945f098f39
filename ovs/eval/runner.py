"""Sharded evaluation, the library side of an eval stage: the per-item function and its rows.

One method is evaluated on several *tasks* (a benchmark under a protocol) by one pool of
workers, so each worker loads the method once (:class:`ShardEvaluator`); a stage's several
methods share one pool (:class:`MethodsEvaluator`: items name their method, each worker keeps
the method it loaded last). The tasks' images are numbered globally:
task 0 owns ids ``0..n_0-1``, task 1 the next ``n_1`` and so on. A pipeline hands batches of
ids to :class:`ShardEvaluator` workers (``pipelines/shard_map.py``), sums the returned rows
per task with :func:`combine_rows` and calls :func:`~ovs.eval.protocol.shard_metrics`.
Predictions of a few chosen images come back with the rows (for overlay pictures), so the
driver never has to load the model itself.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ovs.eval.config import EvalDatasetConfig
from ovs.eval.datasets import SegDataset, build_dataset
from ovs.eval.method import MethodRef, SegMethod, load_method
from ovs.eval.metrics import merge_confusions
from ovs.eval.protocol import (
    EvalShard,
    ProtocolConfig,
    classifier_for,
    evaluate_shard,
    predict_label,
)


@dataclass
class EvalTask:
    """One benchmark under one protocol: its first ``num_images`` images (None = all), of
    which ``num_examples`` (the first ones) also return their predictions."""

    dataset: EvalDatasetConfig
    protocol: ProtocolConfig
    num_images: int | None = None
    num_examples: int = 0


class ShardEvaluator:
    """Callable: ``ids`` (global ids, any order) → one row per task among them:
    ``{"task": int64[k], "num_classes": int64[k], "confusion": int64[k, C, C],
    "num_images": int64[k], "skipped": str[k], "examples": object[k]}``.

    ``C`` is the largest class count over all tasks (confusions are zero-padded; see
    :func:`combine_rows`). ``skipped``: newline-joined ids (with reasons) of unreadable samples.
    ``examples``: ``.npz`` bytes mapping the local index → ``uint8[H, W]`` predicted labels
    (:func:`decode_examples`). ``seed`` seeds torch before the method is built, so every worker
    builds the same random-init baseline.
    """

    def __init__(
        self,
        spec: MethodRef,
        tasks: list[EvalTask] | EvalTask,
        method: SegMethod | None = None,
        seed: int = 0,
    ) -> None:
        torch.manual_seed(seed)
        self.method = method if method is not None else load_method(spec)
        self.tasks = [tasks] if isinstance(tasks, EvalTask) else list(tasks)
        self.datasets: list[SegDataset] = []
        self.classifiers = []
        for t in self.tasks:
            d = t.dataset
            ds = build_dataset(d.name, d.root, d.split or None)
            self.datasets.append(ds)
            self.classifiers.append(classifier_for(self.method, ds, t.protocol))
        sizes = [
            len(ds) if t.num_images is None else min(t.num_images, len(ds))
            for t, ds in zip(self.tasks, self.datasets)
        ]
        self.offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        self.max_classes = max(ds.num_classes for ds in self.datasets)

    @property
    def total(self) -> int:
        """Number of global ids (images over all tasks)."""
        return int(self.offsets[-1])

    def __call__(self, ids: Sequence[int]) -> dict[str, np.ndarray]:
        gids = np.asarray(ids, dtype=np.int64).ravel()
        if gids.size and (gids.min() < 0 or gids.max() >= self.total):
            raise IndexError(f"ids outside 0..{self.total - 1}")
        task_of = np.searchsorted(self.offsets, gids, side="right") - 1
        out: dict[str, list] = {k: [] for k in ("task", "num_classes", "confusion")}
        out.update(num_images=[], skipped=[], examples=[])
        for t in np.unique(task_of):
            local = [int(i) for i in gids[task_of == t] - self.offsets[t]]
            ds, task, clf = self.datasets[t], self.tasks[t], self.classifiers[t]
            with torch.inference_mode():
                shard = evaluate_shard(self.method, ds, task.protocol, local, clf)
                wanted = [i for i in local if i < task.num_examples]
                examples = self._examples(int(t), wanted)
            c = ds.num_classes
            conf = np.zeros((self.max_classes, self.max_classes), dtype=np.int64)
            conf[:c, :c] = shard.confusion
            out["task"].append(int(t))
            out["num_classes"].append(c)
            out["confusion"].append(conf)
            out["num_images"].append(shard.num_images)
            out["skipped"].append("\n".join(shard.skipped))
            out["examples"].append(examples)
        return {
            "task": np.array(out["task"], dtype=np.int64),
            "num_classes": np.array(out["num_classes"], dtype=np.int64),
            "confusion": np.stack(out["confusion"]),
            "num_images": np.array(out["num_images"], dtype=np.int64),
            "skipped": np.array(out["skipped"], dtype=object),
            "examples": np.array(out["examples"], dtype=object),
        }

    def _examples(self, task: int, indices: list[int]) -> bytes:
        ds, protocol = self.datasets[task], self.tasks[task].protocol
        preds: dict[str, Any] = {}
        for i in indices:
            try:
                image = ds[i]["image"]
            except (OSError, ValueError):
                continue  # already counted as skipped by evaluate_shard
            preds[str(i)] = predict_label(self.method, image, self.classifiers[task], protocol)
        buf = io.BytesIO()
        np.savez_compressed(buf, **preds)
        return buf.getvalue()


class MethodsEvaluator:
    """Callable: ``(method, ids)`` → :class:`ShardEvaluator`'s rows for ``ids`` of method
    number ``method`` of ``methods`` (each a reference and its tasks).

    One pool of these evaluates every method of a stage: a method's :class:`ShardEvaluator`
    is built (``seed`` reseeding torch first, as in a fresh worker) on its first item and kept
    until an item of another method arrives, so items ordered by method load each method
    about once per worker, and only one method is in memory at a time.
    """

    def __init__(self, methods: list[tuple[MethodRef, list[EvalTask]]], seed: int = 0) -> None:
        self.methods = methods
        self.seed = seed
        self.current: tuple[int, ShardEvaluator] | None = None

    def __call__(self, method: int, ids: Sequence[int]) -> dict[str, np.ndarray]:
        if self.current is None or self.current[0] != method:
            self.current = None  # free the previous method before building the next
            spec, tasks = self.methods[method]
            self.current = (method, ShardEvaluator(spec, tasks, seed=self.seed))
        return self.current[1](ids)


def _column(row: dict, key: str) -> list:
    """A row's (scalar) or a batch's (array) values of ``key`` as a list."""
    value = row[key]
    # Plain bytes / str are one value (np.ravel would turn bytes into an "S" array, which
    # drops trailing NUL bytes).
    if isinstance(value, (bytes, bytearray, str)):
        return [value]
    arr = np.asarray(value, dtype=object if key in ("skipped", "examples") else None)
    return list(arr.reshape(-1, *arr.shape[-2:])) if key == "confusion" else list(arr.ravel())


def combine_rows(rows: list[dict], task: int | None = None) -> EvalShard:
    """Sum the rows (or batches of rows) :class:`ShardEvaluator` returned, for one task
    (``None``: every row, which must then all belong to the same task)."""
    conf: list[np.ndarray] = []
    skipped: list[str] = []
    n, seen = 0, set()
    for r in rows:
        for t, c, mat, k, s in zip(
            _column(r, "task"),
            _column(r, "num_classes"),
            _column(r, "confusion"),
            _column(r, "num_images"),
            _column(r, "skipped"),
        ):
            if task is not None and int(t) != task:
                continue
            seen.add(int(t))
            conf.append(np.asarray(mat, dtype=np.int64)[: int(c), : int(c)])
            n += int(k)
            skipped.extend(x for x in str(s).split("\n") if x)
    if not conf:
        raise ValueError(f"no rows to combine (task {task})")
    if len(seen) > 1:
        raise ValueError(f"rows of several tasks {sorted(seen)}: pass task=")
    return EvalShard(merge_confusions(conf), n, skipped)


def decode_examples(rows: list[dict], task: int | None = None) -> dict[int, np.ndarray]:
    """Local index → ``uint8[H, W]`` predicted labels carried by the rows (of one task)."""
    out: dict[int, np.ndarray] = {}
    for r in rows:
        for t, blob in zip(_column(r, "task"), _column(r, "examples")):
            if (task is not None and int(t) != task) or blob is None or len(blob) == 0:
                continue
            with np.load(io.BytesIO(bytes(blob))) as z:
                out.update({int(k): z[k] for k in z.files})
    return out
