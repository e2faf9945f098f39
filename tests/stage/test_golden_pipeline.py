"""The smoke pipeline (``conf/smoke.yaml``, every stage) run as ``python pipelines/full.py`` runs it,
on the session's local Ray, reproduces the per-stage figures recorded before the layout refactor
(``tests/golden/smoke_pipeline.json``, see ``tests/golden/pipeline.py``)."""

from __future__ import annotations

import pytest

from pipelines.common import main
from tests.golden import pipeline as golden
from tests.golden.machine import REPO

pytestmark = pytest.mark.slow


# As recorded: one torch thread per training worker. (Two threads reproduce too, given the same
# data order; the smoke train used to move from run to run because img2dataset writes a shard's
# members in download-completion order, until the training batches were put in key order.)
ONE_THREAD = ["train.cpus_per_worker=1", "self_train.cpus_per_worker=1"]


def test_smoke_pipeline_reproduces_golden_figures(tmp_path, mlflow_uri, ray_local):
    workdir = tmp_path / "work"
    argv = ["--config", str(REPO / "conf" / "smoke.yaml"), f"workdir={workdir}", *ONE_THREAD]
    assert main(None, argv) == 0
    golden.check(workdir)
