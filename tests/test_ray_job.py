"""A real Ray head on loopback + ``ray job submit --working-dir .`` of the smoke pipeline."""

import time

import pytest

from ovs.config import load_config
from tests.ray_nodes import REPO, ray_cluster, submit_pipeline

pytestmark = pytest.mark.slow


@pytest.fixture
def ray_head():
    with ray_cluster([{}], num_cpus=2) as head:
        yield head


def test_ray_job_submit_full_pipeline(ray_head, tmp_path):
    address, env = ray_head
    workdir = tmp_path / "work"
    t0 = time.time()
    r = submit_pipeline(address, env, tmp_path, [f"workdir={workdir}"])
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-4000:]
    assert "succeeded" in out.lower(), out[-4000:]
    assert "joining Ray cluster" in out  # the driver joined the cluster instead of starting Ray
    stages = load_config(REPO / "conf/smoke.yaml", []).pipeline.stages
    assert len(stages) == 8, stages  # the smoke config runs every stage of the default
    for stage in stages:
        assert list(workdir.glob(f"{stage}/*/_SUCCESS.json")), f"{stage} manifest written"
    print(f"ray job submit round trip: {time.time() - t0:.1f}s")
