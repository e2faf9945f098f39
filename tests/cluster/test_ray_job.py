"""A real Ray head on loopback + ``ray job submit --working-dir .`` of the paper sibling: every
stage of the paper path as users submit it. (The smoke pipeline's stages run in-process in
``tests/stage/test_golden_pipeline.py`` against their golden figures, and ``ray job submit`` to
two nodes in ``test_cluster.py``: one pipeline run per path, not one per config.)"""

import json
import time

import pytest

from pipelines.graph import load_config
from tests.ray_nodes import REPO, ray_cluster, submit_pipeline

pytestmark = pytest.mark.slow


@pytest.fixture
def ray_head():
    with ray_cluster([{}], num_cpus=2) as head:
        yield head


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
