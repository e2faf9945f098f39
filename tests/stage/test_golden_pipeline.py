"""The smoke pipeline (``conf/smoke.yaml``, every stage) run as ``python pipelines/full.py`` runs it,
on the session's local Ray, reproduces the per-stage figures recorded before the layout refactor
(``tests/golden/smoke_pipeline.json``, see ``tests/golden/pipeline.py``); the same run's
``report.html`` renders in headless Chromium with its results rows and every image loaded."""

from __future__ import annotations

import re
from types import SimpleNamespace

import pytest

from pipelines.common import main
from tests import browser
from tests.golden import pipeline as golden
from tests.golden.machine import REPO

pytestmark = pytest.mark.slow


# As recorded: one torch thread per training worker. (Two threads reproduce too, given the same
# data order; the smoke train used to move from run to run because img2dataset writes a shard's
# members in download-completion order, until the training batches were put in key order.)
ONE_THREAD = ["train.cpus_per_worker=1", "self_train.cpus_per_worker=1"]


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory, ray_local):
    """The one smoke pipeline run of this module (its workdir and MLflow store)."""
    tmp = tmp_path_factory.mktemp("smoke")
    workdir = tmp / "work"
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    argv = ["--config", str(REPO / "conf" / "smoke.yaml"), f"workdir={workdir}", *ONE_THREAD]
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", uri)
        rc = main(None, argv)
    return SimpleNamespace(rc=rc, workdir=workdir, uri=uri, tmp=tmp)


def test_smoke_pipeline_reproduces_golden_figures(smoke_run):
    assert smoke_run.rc == 0
    golden.check(smoke_run.workdir)


def test_report_of_the_run_renders_in_a_browser(smoke_run):
    """The parent run's ``report.html`` artifact, opened in headless Chromium: one results row
    per method × benchmark × protocol evaluate wrote, and every image decoded (the page's own
    script records ``naturalWidth``; 0 = broken)."""
    from mlflow.tracking import MlflowClient

    assert smoke_run.rc == 0
    client = MlflowClient(smoke_run.uri)
    (exp,) = [e for e in client.search_experiments() if e.name == "smoke"]
    assert exp.tags.get("mlflow.experimentKind") == "custom_model_development"
    (parent,) = client.search_runs([exp.experiment_id], "tags.`ovs.kind` = 'pipeline'")
    names = {r.info.run_name for r in client.search_runs([exp.experiment_id], "")}
    assert "train (sseg)" in names and "evaluate" in names
    page = client.download_artifacts(parent.info.run_id, "report.html", str(smoke_run.tmp))
    results = sorted(smoke_run.workdir.glob("evaluate/*/*/*/*/result.json"))
    assert results
    dom = browser.render(f"file://{page}", smoke_run.tmp / "report.png")
    assert (smoke_run.tmp / "report.png").stat().st_size > 10_000
    assert len(re.findall(r'<tr class="result">', dom)) == len(results)
    widths = re.findall(r'data-natural-width="(\d+)"', dom)
    n_img = len(re.findall(r"<img ", dom))
    assert n_img >= len(results) + 2  # overlays per combination, pseudo-masks, curves
    assert len(widths) == n_img and all(int(w) > 0 for w in widths), widths
    assert f'data-images-checked="{n_img}"' in dom
