"""Upstream stage outputs shared by the stage tests of one session.

A stage's output directory is named by the hash of its config section and inputs, not of the
workdir (``ovs.stage.resolve``), so two tests whose configs resolve a stage to the same hash
would compute the same files. :func:`run_upstream` runs each named stage through the real runner
once per session and hash, keeps a copy, and copies it into the next such test's workdir, where
the runner reuses it as a rerun of ``pipelines/full.py`` does (a ``(skipped)`` MLflow run).
Tests that exercise a stage itself (its resume, drills, counts) still run it in their own
workdir; only the stages a test merely needs as input come from here.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from ovs.stage import read_manifest, resolve
from pipelines.common import run_stage
from pipelines.graph import STAGES

_CACHE: list[Path] = []  # the session's cache root, made on first use


def _root() -> Path:
    if not _CACHE:
        _CACHE.append(Path(tempfile.mkdtemp(prefix="ovs-upstream-")))
    return _CACHE[0]


def run_upstream(names, cfg, client, exp_id: str, parent: str) -> dict[str, dict]:
    """Run (or reuse) ``names`` in order for ``cfg``; returns each stage's manifest."""
    manifests = {}
    for name in names:
        res = resolve(STAGES, name, cfg)
        cached = _root() / name / res.hash
        if read_manifest(cached) is not None and read_manifest(res.out_dir) is None:
            shutil.rmtree(res.out_dir, ignore_errors=True)
            shutil.copytree(cached, res.out_dir)
        manifests[name] = run_stage(STAGES, name, cfg, False, client, exp_id, parent, "")
        if read_manifest(cached) is None:
            tmp = cached.with_name(cached.name + ".tmp")
            shutil.rmtree(tmp, ignore_errors=True)
            shutil.copytree(res.out_dir, tmp)
            tmp.rename(cached)  # whole or absent, like a stage output
    return manifests


def cleanup() -> None:
    for root in _CACHE:
        shutil.rmtree(root, ignore_errors=True)
