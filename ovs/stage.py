"""Stages: functions from declared inputs to declared outputs, content-addressed on disk.

A stage writes under ``<workdir>/<stage>/<hash>/`` where ``hash`` covers the stage's own config
section (plus any extra sections it declares and the global seed) and the hashes of its inputs,
so changing an upstream setting changes every downstream directory and never reuses stale
outputs. ``_SUCCESS.json`` (counts, metrics, timings, config, MLflow run id) is written last
and atomically: a directory without it is a partial output of a killed attempt. Downstream
stages only ever read directories that have it; a rerun of the stage itself resumes inside the
same directory (stages skip the per-shard outputs they already wrote atomically).

This module is pure bookkeeping (no Ray, no MLflow); ``pipelines/common.py`` drives it.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from ovs.config import Config, digest, hash_view
from ovs.io import atomic_write_json

MANIFEST = "_SUCCESS.json"
log = logging.getLogger("ovs")


class StageIncomplete(RuntimeError):
    """A stage stopped on purpose before its work was done (e.g. ``train.time_limit_s`` was hit).

    The runner writes no manifest: the output directory stays a resumable partial output, and a
    rerun continues it. ``metrics`` (e.g. ``steps_done``) are logged on the stage's MLflow run,
    which is marked incomplete; the message says how far the stage got and how to continue.
    """

    def __init__(self, message: str, metrics: dict[str, float] | None = None) -> None:
        super().__init__(message)
        self.metrics = dict(metrics or {})


class Tracker(Protocol):
    """What a stage may log (implemented over MLflow in :mod:`pipelines.tracking`)."""

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None: ...
    def log_params(self, params: dict[str, Any]) -> None: ...
    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None: ...
    def log_figure(self, figure: Any, name: str) -> None: ...
    def log_image(self, image: Any, name: str) -> None: ...
    def log_text(self, text: str, name: str) -> None: ...
    def log_table(self, table: dict[str, list], name: str) -> None: ...


def progress_text(stage: str, what: str, done: int, total: int | None, rate: float) -> str:
    """``[stage] what: done/total (pct%, rate/s, eta Ns)`` (``done (rate/s)`` without a total):
    the one format of every progress line, the stages' and the training loop's."""
    msg = f"[{stage}] {what}: {done}"
    if total:
        eta = (total - done) / rate if rate > 0 else float("inf")
        return msg + f"/{total} ({100.0 * done / total:.0f}%, {rate:.1f}/s, eta {eta:.0f}s)"
    return msg + f" ({rate:.1f}/s)"


class Progress:
    """Rate-limited progress lines: ``[stage] what: done/total (rate/s, eta)``."""

    def __init__(self, stage: str, every_s: float = 5.0):
        self.stage, self.every_s = stage, every_s
        self._start = time.monotonic()
        self._last = 0.0

    def __call__(self, done: int, total: int | None = None, what: str = "items") -> None:
        now = time.monotonic()
        final = total is not None and done >= total
        if now - self._last < self.every_s and not final:
            return
        self._last = now
        log.info(progress_text(self.stage, what, done, total, done / max(now - self._start, 1e-9)))


@dataclass
class StageContext:
    """Everything a stage's ``run`` may use."""

    name: str
    cfg: Config
    out_dir: Path
    inputs: dict[str, Path]
    manifests: dict[str, dict]
    tracker: Tracker
    progress: Callable[..., None]

    @property
    def section(self) -> Any:
        return getattr(self.cfg, self.name)


@dataclass(frozen=True)
class Stage:
    """A pipeline stage.

    ``section`` is the dataclass of the stage's config section (the root config has one field
    of it, named like the stage; ``pipelines/graph.py`` assembles the root from the table);
    None for a stage without settings of its own. ``inputs`` names upstream stages (or is a
    function of the config returning them, for stages whose inputs depend on settings).
    ``sections`` names extra top-level config sections that change the stage's output besides
    its own. ``run`` returns ``{"counts": {...}, "metrics": {...}}`` (both optional), or raises
    :class:`StageIncomplete` to stop early and resumably.

    ``stale(cfg, manifest)``, when given, is asked before a completed output is reused: a
    non-empty reason (e.g. "benchmark voc21 now has data") makes the runner run the stage
    again in the same directory, which resumes from what is there instead of starting over.
    It is for outputs that depend on something outside the config (optional data that may
    appear later), which the hash cannot cover.
    """

    name: str
    run: Callable[[StageContext], dict]
    section: type | None = None
    inputs: tuple[str, ...] | Callable[[Config], tuple[str, ...]] = ()
    sections: tuple[str, ...] = ()
    description: str = ""
    stale: Callable[[Config, dict], str | None] | None = None

    def input_names(self, cfg: Config) -> tuple[str, ...]:
        return self.inputs(cfg) if callable(self.inputs) else tuple(self.inputs)


@dataclass
class Resolved:
    """Where a stage's output lives for a given config."""

    stage: Stage
    hash: str
    out_dir: Path
    inputs: dict[str, str] = field(default_factory=dict)  # upstream name -> hash


def _section_dict(cfg: Config, name: str) -> Any:
    return hash_view(getattr(cfg, name, None))


def resolve(
    stages: dict[str, Stage], name: str, cfg: Config, _memo: dict | None = None
) -> Resolved:
    """Compute a stage's hash and output directory (recursively through its inputs)."""
    memo = {} if _memo is None else _memo
    if name in memo:
        return memo[name]
    if name not in stages:
        raise KeyError(f"unknown stage {name!r} (known: {', '.join(stages)})")
    stage = stages[name]
    upstream = {inp: resolve(stages, inp, cfg, memo).hash for inp in stage.input_names(cfg)}
    key = {
        "stage": name,
        "config": _section_dict(cfg, name),
        "sections": {s: _section_dict(cfg, s) for s in stage.sections},
        "seed": cfg.seed,
        "inputs": upstream,
    }
    h = digest(key)
    memo[name] = Resolved(stage, h, cfg.workdir_path / name / h, upstream)
    return memo[name]


def read_manifest(out_dir: Path) -> dict | None:
    path = Path(out_dir) / MANIFEST
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, OSError):
        return None  # unreadable manifest == not done


def write_manifest(out_dir: Path, manifest: dict) -> None:
    atomic_write_json(Path(out_dir) / MANIFEST, manifest)


def retract_manifest(out_dir: Path) -> None:
    """Turn a completed output back into a partial one (before rerunning it in place), so
    that a rerun killed half-way never leaves a manifest that claims the new work."""
    (Path(out_dir) / MANIFEST).unlink(missing_ok=True)


def order(stages: dict[str, Stage], wanted: list[str], cfg: Config) -> list[str]:
    """Topologically order ``wanted`` (keeping the given order where the graph allows)."""
    seen: list[str] = []

    def visit(n: str, stack: tuple[str, ...]) -> None:
        if n in stack:
            raise ValueError(f"stage cycle: {' -> '.join(stack + (n,))}")
        if n in seen:
            return
        for inp in stages[n].input_names(cfg):
            if inp in wanted:
                visit(inp, stack + (n,))
        seen.append(n)

    for n in wanted:
        if n not in stages:
            raise KeyError(f"unknown stage {n!r} in pipeline.stages (known: {', '.join(stages)})")
        visit(n, ())
    return seen
