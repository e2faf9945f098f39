"""The pairs stage through the real runner on a tiny world: upstream stages (train for 2 steps),
pairs with the S-Seg scorer, MLflow artifacts, world pair precision, then a resume."""

from __future__ import annotations

import pyarrow.parquet as pq
import pytest
from mlflow.tracking import MlflowClient

from ovs.pairs.maker import PAIRS_SCHEMA
from ovs.stage import MANIFEST, resolve
from pipelines.common import connect_mlflow, run_stage
from pipelines.graph import STAGES, load_config
from pipelines.pairs import _inputs
from tests.tiny_world import tiny_trained
from tests.upstream import run_upstream

pytestmark = pytest.mark.slow

UPSTREAM = ("world", "download", "entities", "pseudo_masks", "train")


def _cfg(tmp_path, *extra):
    return load_config(
        None,
        [
            *tiny_trained(tmp_path),
            "pipeline.stages=[world,download,entities,pseudo_masks,train,pairs]",
            "pairs.image_size=32",
            "pairs.threshold=-1.0",
            "pairs.batch_size=8",
            "pairs.gallery_pairs=4",
            *extra,
        ],
    )


def test_inputs_follow_scorer_and_pipeline():
    cfg = load_config(None, ["pipeline.stages=[world,download,entities,pseudo_masks,train]"])
    assert _inputs(cfg) == ("world", "download", "entities", "pseudo_masks", "train")
    cfg = load_config(None, ["pairs.scorer=clip", "pipeline.stages=[download]"])
    assert _inputs(cfg) == ("download", "entities", "pseudo_masks")


def test_pairs_stage_end_to_end_and_resume(tmp_path, mlflow_uri, ray_local):
    cfg = _cfg(tmp_path)
    client, exp_id, _ = connect_mlflow("pairs-stage")
    parent = client.create_run(exp_id, run_name="p").info.run_id
    run_upstream(UPSTREAM, cfg, client, exp_id, parent)
    m = run_stage(STAGES, "pairs", cfg, False, client, exp_id, parent, "")
    out = resolve(STAGES, "pairs", cfg).out_dir
    files = sorted((out / "pairs").glob("*.parquet"))
    assert [f.name for f in files] == ["00000.parquet", "00001.parquet"]
    tables = [pq.read_table(f) for f in files]
    assert all(t.schema.remove_metadata() == PAIRS_SCHEMA for t in tables)
    rows = sum(t.num_rows for t in tables)
    counts = m["counts"]
    assert counts["samples"] == 24 and counts["shards"] == 2 and counts["shards_resumed"] == 0
    assert counts["pairs"] == rows > 0
    # threshold -1 keeps every scored noun; every sample is either paired or skipped+counted.
    assert counts["nouns_scored"] == rows and counts["below_threshold"] == 0
    skipped = sum(v for k, v in counts.items() if k.startswith("skipped_"))
    assert counts["paired_samples"] + skipped == 24
    nouns = {n for t in tables for n in t.column("noun").to_pylist()}
    assert counts["unique_nouns"] == len(nouns)
    for t in tables:
        area = t.column("mask_area").to_numpy()
        assert ((area > 0) & (area <= 1)).all()
        score = t.column("score").to_numpy()
        assert ((score >= -1.001) & (score <= 1.001)).all()
    metrics = m["metrics"]
    for k in ("pair_precision", "pair_precision_largest", "pair_precision_random"):
        assert 0.0 <= metrics[k] <= 1.0, k
    assert metrics["pair_precision"] <= metrics["pair_precision_oracle"] <= 1.0
    assert metrics["eval_class_pairs"] > 0 and metrics["eval_no_gt_pairs"] == 0
    run = client.get_run(m["mlflow_run_id"])
    assert "pair_precision" in run.data.metrics and "count.unique_nouns" in run.data.metrics
    arts = {a.path for a in MlflowClient().list_artifacts(m["mlflow_run_id"])}
    assert {"pairs_gallery.png", "top_nouns.json", "precision_vs_threshold.json"} <= arts

    # Resume: a killed attempt left one shard written and no manifest.
    (out / MANIFEST).unlink()
    files[1].unlink()
    kept_mtime = files[0].stat().st_mtime_ns
    m2 = run_stage(STAGES, "pairs", cfg, False, client, exp_id, parent, "")
    assert m2["counts"]["shards_resumed"] == 1
    assert files[0].stat().st_mtime_ns == kept_mtime, "the finished shard was not redone"
    # The redone shard has exactly the pairs of the uninterrupted run: a shard's pairs depend on
    # the shard alone (key order, each noun's prompts encoded on their own), not on which actor
    # ran it or what it had cached.
    redone = pq.read_table(files[1])
    assert redone.schema == tables[1].schema
    for col in PAIRS_SCHEMA.names:
        assert redone.column(col).equals(tables[1].column(col)), col
    assert {k: v for k, v in m2["counts"].items() if k != "shards_resumed"} == {
        k: v for k, v in counts.items() if k != "shards_resumed"
    }
    timing = {"img_per_s"}  # the only figure that may differ: how fast this machine ran
    assert {k: v for k, v in m2["metrics"].items() if k not in timing} == {
        k: v for k, v in metrics.items() if k not in timing
    }
