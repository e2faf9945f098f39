"""Multi-node on one machine: a Ray head and a second Ray node process on loopback (one CPU
each, separate custom resources and temp dirs), ``ray job submit`` of ``pipelines/full.py``,
then Ray's state API shows on which node every stage actor lived and its work tasks ran.

``make cluster-test`` runs this file. Only this cluster's processes are stopped (found by its
own temp dirs, see ``tests/ray_nodes.py``): ``ray stop`` would kill every Ray on the machine.
"""

from __future__ import annotations

import json
import time

import pytest

from tests.ray_nodes import ray_cli, ray_cluster, submit_pipeline

pytestmark = pytest.mark.slow
STAGES = "[world,download,entities,pseudo_masks]"


@pytest.fixture
def two_node_cluster():
    """Yield ``(dashboard_url, env)`` of a head (``head_node``) + worker (``worker_node``)."""
    nodes = [{"head_node": 1}, {"worker_node": 1}]
    with ray_cluster(nodes, num_cpus=1, extra=[f"--object-store-memory={150 * 2**20}"]) as c:
        yield c


def ray_list(kind: str, address: str, env: dict) -> list[dict]:
    r = ray_cli(
        ["list", kind, "--address", address, "--detail", "--format", "json", "--limit", "10000"],
        env,
    )
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    return json.loads(r.stdout)


def test_pipeline_job_runs_on_both_nodes(two_node_cluster, tmp_path):
    address, env = two_node_cluster
    nodes = {n["node_id"]: n for n in ray_list("nodes", address, env) if n["state"] == "ALIVE"}
    by_role = {
        role: [i for i, n in nodes.items() if role in n["resources_total"]]
        for role in ("head_node", "worker_node")
    }
    assert len(nodes) == 2 and all(len(v) == 1 for v in by_role.values()), nodes
    head_id, worker_id = by_role["head_node"][0], by_role["worker_node"][0]

    workdir = tmp_path / "work"
    t0 = time.time()
    r = submit_pipeline(
        address,
        env,
        tmp_path,
        [
            f"workdir={workdir}",
            f"pipeline.stages={STAGES}",
            "world.num_train=16",
            "world.num_eval=4",
            "download.number_sample_per_shard=4",
            "entities.pairs_per_sample=2",
            "pseudo_masks.num_actors=2",  # 1 CPU each on 1-CPU nodes: one actor per node
            "pseudo_masks.image_size=32",
            "pseudo_masks.oracle_images=4",
            "pseudo_masks.figure_images=2",
        ],
        env_vars={
            "OMP_NUM_THREADS": "1",
            # Ray Data starts dispatching once its whole actor pool is up, so both entities
            # actors get shards (otherwise the first one up may take them all on a tiny input).
            "RAY_DATA_DEFAULT_WAIT_FOR_MIN_ACTORS_S": "600",
        },
    )
    out = r.stdout + r.stderr
    print(f"ray job submit on 2 nodes: {time.time() - t0:.1f}s")
    assert r.returncode == 0, out[-4000:]
    assert "succeeded" in out.lower(), out[-4000:]
    assert "joining Ray cluster" in out  # the driver joined the cluster instead of starting Ray
    jobs = ray_list("jobs", address, env)
    assert [j["status"] for j in jobs] == ["SUCCEEDED"], jobs
    for stage in ("world", "download", "entities", "pseudo_masks"):
        assert list(workdir.glob(f"{stage}/*/_SUCCESS.json")), f"{stage} manifest written"
    m = json.loads(next(workdir.glob("pseudo_masks/*/_SUCCESS.json")).read_text())
    assert m["counts"]["shards"] == 4 and m["counts"]["images_ok"] == 16

    # Ray's state API after the job: where each stage actor lived and each work task ran.
    names = {head_id: "head", worker_id: "worker"}
    where: dict[str, list[str]] = {}
    for a in ray_list("actors", address, env):
        where.setdefault(a["class_name"], []).append(names.get(a["node_id"], str(a["node_id"])))
    ran: dict[str, list[str]] = {}
    for t in ray_list("tasks", address, env):
        if t["state"] == "FINISHED" and t["type"] == "ACTOR_TASK":
            ran.setdefault(t["name"], []).append(names.get(t["node_id"], str(t["node_id"])))
    print("actors:", {k: sorted(v) for k, v in where.items()})
    print("tasks:", {k: sorted(v) for k, v in ran.items()})
    # pseudo_masks: the shards on a pool of two 1-CPU ShardMasker actors, one per node, then
    # the 4 oracle images (one batch, one item) on one ImageMasker actor
    pm = "MapWorker(MapBatches(ShardMasker))"
    assert sorted(where[pm]) == ["head", "worker"], where
    # which actor gets the few blocks of this tiny input is Ray Data's choice: work ran on at
    # least one of them (entities below shows work split across both nodes)
    assert ran.get(pm + ".submit"), ran
    assert len(where["MapWorker(MapBatches(ImageMasker))"]) == 1, where
    # entities: Ray Data's two ShardEntities actors, one per node, each processed blocks
    ent = "MapWorker(MapBatches(ShardEntities))"
    assert sorted(where[ent]) == ["head", "worker"], where
    assert sorted(set(ran[ent + ".submit"])) == ["head", "worker"], ran
