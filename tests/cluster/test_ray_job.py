"""A real Ray head on loopback + ``ray job submit --working-dir .`` of the smoke pipeline (which
must reproduce the golden figures, ``tests/golden/pipeline.py``) and of the paper sibling."""

import json
import time

import pytest

from pipelines.graph import load_config
from tests.golden import pipeline as golden
from tests.ray_nodes import REPO, ray_cluster, submit_pipeline

pytestmark = pytest.mark.slow


@pytest.fixture
def ray_head():
    with ray_cluster([{}], num_cpus=2) as head:
        yield head


# As the golden figures were recorded: one torch thread per training worker. (Two threads
# reproduce too, given the same data order; the smoke train used to move from run to run because
# img2dataset writes a shard's members in download-completion order, until the training batches
# were put in key order.)
ONE_THREAD = ["train.cpus_per_worker=1", "self_train.cpus_per_worker=1"]


def test_ray_job_submit_full_pipeline(ray_head, tmp_path):
    """The smoke pipeline (every stage of the default) as users submit it, reproducing the
    per-stage counts and metrics recorded before the layout refactor (the golden figures): one
    pipeline run checks both the job path and the numerics."""
    address, env = ray_head
    workdir = tmp_path / "work"
    t0 = time.time()
    r = submit_pipeline(address, env, tmp_path, [f"workdir={workdir}", *ONE_THREAD])
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-4000:]
    assert "succeeded" in out.lower(), out[-4000:]
    assert "joining Ray cluster" in out  # the driver joined the cluster instead of starting Ray
    stages = load_config(REPO / "conf/smoke.yaml", []).pipeline.stages
    assert len(stages) == 8, stages  # the smoke config runs every stage of the default
    for stage in stages:
        assert list(workdir.glob(f"{stage}/*/_SUCCESS.json")), f"{stage} manifest written"
    print(f"ray job submit round trip: {time.time() - t0:.1f}s")
    golden.check(workdir)


def _manifest(workdir, stage: str) -> dict:
    found = list(workdir.glob(f"{stage}/*/_SUCCESS.json"))
    assert len(found) == 1, f"{stage}: manifests {found}"
    return json.loads(found[0].read_text())


def test_ray_job_submit_paper_sibling(ray_head, tmp_path):
    """conf/cc12m_local.yaml (cc12m.yaml at tiny sizes, tests/unit/test_sibling_config.py) through
    `ray job submit`: every stage of the paper path completes with sane counts."""
    address, env = ray_head
    workdir = tmp_path / "work"
    t0 = time.time()
    r = submit_pipeline(
        address, env, tmp_path, [f"workdir={workdir}"], config="conf/cc12m_local.yaml"
    )
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-4000:]
    assert "joining Ray cluster" in out
    cfg = load_config(REPO / "conf/cc12m_local.yaml", [f"workdir={workdir}"])
    paper = load_config(REPO / "conf/cc12m.yaml", []).pipeline.stages
    assert cfg.pipeline.stages == ["world", *paper]
    m = {stage: _manifest(workdir, stage) for stage in cfg.pipeline.stages}
    n = cfg.world.num_train
    assert m["world"]["counts"]["url_list_rows"] == n
    dl = m["download"]["counts"]
    assert dl["count"] == dl["success"] == n and dl["shards"] == 2  # the headerless TSV
    assert m["entities"]["counts"]["rows"] == n and m["entities"]["counts"]["status_ok"] == n
    assert m["pseudo_masks"]["counts"]["images_ok"] == n
    train = m["train"]
    steps_done = {**train["metrics"], **train["counts"]}["steps_done"]
    assert steps_done == cfg.train.steps, train
    assert 0.0 <= train["metrics"]["miou"] <= 1.0
    ev = m["evaluate"]
    assert ev["counts"]["datasets_evaluated"] == 4  # the world + VOC, Context, COCO-Object
    assert ev["counts"]["datasets_missing"] == 0
    for d in cfg.evaluate.datasets:  # each read from the exported layout, none skipped
        assert ev["counts"][f"{d.name}.images"] == d.max_images, ev["counts"]
        assert ev["counts"][f"{d.name}.skipped"] == 0
        for method in ("", "maskclip."):
            assert 0.0 <= ev["metrics"][f"{method}{d.name}.miou"] <= 1.0, ev["metrics"]
    st = m["self_train"]
    assert st["counts"]["target_images"] == cfg.self_train.target.limit
    assert 0.0 <= st["metrics"]["miou"] <= 1.0
    print(f"ray job submit of the sibling: {time.time() - t0:.1f}s")
