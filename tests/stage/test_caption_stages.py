"""The download and entities stages through the real stage runner, Ray and MLflow (sqlite):
world -> download (img2dataset on file:// URLs) -> entities (Ray Data actors), then a resume."""

from __future__ import annotations

import pyarrow.parquet as pq
import pytest

from ovs.data.shards import iter_shard, list_shards
from ovs.stage import resolve
from pipelines.common import connect_mlflow, run_stage
from pipelines.graph import STAGES, load_config
from tests.tiny_world import tiny_world


@pytest.mark.slow
def test_world_download_entities(tmp_path, mlflow_uri, ray_local):
    cfg = load_config(
        None,
        [
            *tiny_world(tmp_path, num_train=24, num_eval=4, per_shard=10),
            "entities.pairs_per_sample=3",
        ],
    )
    client, exp_id, _ = connect_mlflow("caption-stages")
    parent = client.create_run(exp_id, run_name="p").info.run_id
    for name in ("world", "download", "entities"):
        run_stage(STAGES, name, cfg, False, client, exp_id, parent, "")

    dl = resolve(STAGES, "download", cfg).out_dir
    shards = list_shards(dl)
    assert [s.name for s in shards] == ["00000.tar", "00001.tar", "00002.tar"]
    samples = [s for sh in shards for s in iter_shard(sh, ("txt", "json"))]
    assert len(samples) == 24 and len({s["key"] for s in samples}) == 24
    assert sorted(s["json"]["id"] for s in samples) == [f"{i:06d}" for i in range(24)]

    out = resolve(STAGES, "entities", cfg).out_dir
    ent = {}
    for sh in shards:
        t = pq.read_table(out / "entities" / f"{sh.stem}.parquet")
        ent.update({r["key"]: r for r in t.to_pylist()})
    assert set(ent) == {s["key"] for s in samples}
    for s in samples:
        assert ent[s["key"]]["caption"] == s["txt"] and ent[s["key"]]["status"] == "ok"
    subset = set(pq.read_table(out / "subset.parquet").column("key").to_pylist())
    assert subset == {k for k, r in ent.items() if r["keep"]}
    pairs = pq.read_table(out / "pairs.parquet").to_pylist()
    assert {p["key"] for p in pairs} == subset
    for p in pairs:
        for q, e in zip(p["partner_keys"], p["shared_entity"], strict=True):
            assert e in ent[p["key"]]["entities"] and e in ent[q]["entities"]
    freq = pq.read_table(out / "entity_freq.parquet").to_pylist()
    assert sum(f["count"] for f in freq) == sum(len(ent[k]["entities"]) for k in subset)

    run = client.search_runs([exp_id], filter_string="tags.`ovs.stage` = 'entities'")[0]
    assert run.data.metrics["count.rows"] == 24
    assert run.data.metrics["kept_fraction"] == pytest.approx(len(subset) / 24)
    arts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"top_entities.png", "top_entities.json"} <= arts
    dl_run = client.search_runs([exp_id], filter_string="tags.`ovs.stage` = 'download'")[0]
    assert dl_run.data.metrics["count.success"] == 24

    # resume: a lost per-shard output is recomputed, the others are kept as they are
    mtime = (out / "entities" / "00000.parquet").stat().st_mtime_ns
    (out / "entities" / "00002.parquet").unlink()
    (out / "_SUCCESS.json").unlink()
    m = run_stage(STAGES, "entities", cfg, False, client, exp_id, parent, "")
    assert m["counts"]["shards_run"] == 1 and m["counts"]["rows"] == 24
    assert (out / "entities" / "00000.parquet").stat().st_mtime_ns == mtime
    assert pq.read_table(out / "pairs.parquet").to_pylist() == pairs
