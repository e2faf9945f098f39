"""The self_train stage through the real runner on a tiny world: Ray Data labelling actors, Ray
Train (2 DDP workers on gloo) with an injected worker failure, then a whole-job failure whose
rerun resumes both the labels (no shard relabelled) and the training (from its checkpoint), with
weights bit-identical to an uninterrupted run's."""

from __future__ import annotations

import json

import pytest
import torch
from mlflow.tracking import MlflowClient

from ovs.methods import load_checkpoint
from ovs.stage import read_manifest, resolve
from pipelines.common import connect_mlflow, run_stage
from pipelines.drills import fail_worker_at
from pipelines.graph import STAGES, load_config
from tests.tiny_world import tiny_trained
from tests.upstream import run_upstream

pytestmark = pytest.mark.slow

UPSTREAM = ("world", "download", "entities", "pseudo_masks", "train")


def _cfg(tmp_path, *extra):
    return load_config(
        None,
        [
            *tiny_trained(tmp_path),
            "self_train.label.shard_size=10",
            "self_train.label.num_cpus=1",
            "self_train.label.num_actors=2",
            "self_train.augment.size=32",
            "self_train.batch_size=4",
            "self_train.num_workers=2",
            "self_train.cpus_per_worker=1",
            "self_train.steps=6",
            "self_train.warmup_steps=2",
            "self_train.log_every=2",
            "self_train.checkpoint_every=2",
            *extra,
        ],
    )


def _steps_logged(client: MlflowClient, run_id: str) -> list[int]:
    return sorted({m.step for m in client.get_metric_history(run_id, "self_train/loss")})


def test_self_train_stage_failure_drill_and_resume(tmp_path, mlflow_uri, ray_local):
    cfg = _cfg(tmp_path, "self_train.max_failures=1")
    client, exp_id, _ = connect_mlflow("self-train-stage")
    parent = client.create_run(exp_id, run_name="p").info.run_id
    run_upstream(UPSTREAM, cfg, client, exp_id, parent)
    with fail_worker_at("self_train", 3):
        m = run_stage(STAGES, "self_train", cfg, False, client, exp_id, parent, "")
    out = resolve(STAGES, "self_train", cfg).out_dir
    assert (out / ".injected_failure").exists(), "the drill really failed a worker"
    assert m["counts"]["target_images"] == 24 and m["counts"]["shards"] == 3
    assert sorted(p.name for p in (out / "labels").glob("*.parquet")) == [
        "00000.parquet",
        "00001.parquet",
        "00002.parquet",
    ]
    thresholds = json.loads((out / "thresholds.json").read_text())
    assert len(thresholds["thresholds_uint8"]) == 16
    spec, model = load_checkpoint(out / "model" / "latest.pt")
    assert spec.name == "segmenter"
    assert model.num_classes == 16
    assert torch.load(out / "model" / "latest.pt", weights_only=True)["step"] == 6
    metrics = m["metrics"]
    assert {"miou", "sseg_miou", "miou_gain", "label_miou", "label_kept_fraction"} <= set(metrics)
    assert metrics["miou_gain"] == pytest.approx(metrics["miou"] - metrics["sseg_miou"])
    # Default rule: per class, the pixels below the 50% confidence quantile go (ties stay).
    assert 0.5 <= metrics["label_kept_fraction"] <= 1.0
    train_miou = read_manifest(resolve(STAGES, "train", cfg).out_dir)["metrics"]["miou"]
    assert metrics["sseg_miou_train_stage"] == pytest.approx(train_miou)
    assert metrics["sseg_miou"] == pytest.approx(train_miou), "same images, same protocol"
    run = client.get_run(m["mlflow_run_id"])
    assert {"miou", "sseg_miou", "label_miou"} <= set(run.data.metrics)
    assert _steps_logged(client, m["mlflow_run_id"])[-1] == 6
    assert metrics["steps_done"] == metrics["steps"] == 6
    assert 0.0 < metrics["data_wait_fraction"] < 1.0
    assert client.get_metric_history(m["mlflow_run_id"], "self_train/data_wait_fraction")
    arts = {a.path for a in client.list_artifacts(m["mlflow_run_id"])}
    assert {
        "overlays.png",
        "per_class_iou.png",
        "confusion.png",
        "pseudo_labels.png",
        "model",
    } <= arts

    # Whole-job failure after labelling and 2 steps; the rerun relabels nothing and resumes.
    cfg2 = _cfg(tmp_path, "self_train.max_failures=0", "self_train.steps=4")
    with fail_worker_at("self_train", 3), pytest.raises(Exception, match="injected worker failure"):
        run_stage(STAGES, "self_train", cfg2, False, client, exp_id, parent, "")
    out2 = resolve(STAGES, "self_train", cfg2).out_dir
    assert read_manifest(out2) is None and len(list((out2 / "labels").glob("*.parquet"))) == 3
    m2 = run_stage(STAGES, "self_train", cfg2, False, client, exp_id, parent, "")
    assert m2["counts"]["shards_resumed"] == 3 and "label_seconds" not in m2["metrics"]
    assert _steps_logged(client, m2["mlflow_run_id"]) == [4], "resumed at step 2, not step 0"
    assert torch.load(out2 / "model" / "latest.pt", weights_only=True)["step"] == 4

    # The resumed run equals an uninterrupted one (same training, another output directory:
    # eval_limit is part of the hash) bit for bit: the batch stream and RNGs were checkpointed.
    cfg3 = _cfg(tmp_path, "self_train.steps=4", "self_train.eval_limit=2")
    run_stage(STAGES, "self_train", cfg3, False, client, exp_id, parent, "")
    out3 = resolve(STAGES, "self_train", cfg3).out_dir
    got = torch.load(out2 / "model" / "latest.pt", weights_only=True)["model"]
    want = torch.load(out3 / "model" / "latest.pt", weights_only=True)["model"]
    assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want)
