"""The train stage through the real runner: Ray Train (2 DDP workers on gloo), MLflow, an
injected worker failure (restart from checkpoint) and a whole-job restart (resume)."""

from __future__ import annotations

import pytest
import torch
from mlflow.tracking import MlflowClient

from ovs.config import load_config
from ovs.models.sseg import load_checkpoint
from ovs.stage import read_manifest, resolve
from pipelines.common import connect_mlflow, run_stage
from pipelines.graph import STAGES
from tests.tiny_world import tiny_world

pytestmark = pytest.mark.slow

UPSTREAM = ("world", "download", "entities", "pseudo_masks")


def _cfg(tmp_path, *extra):
    return load_config(
        None,
        [
            *tiny_world(tmp_path, num_train=40, num_eval=6, per_shard=10, oracle_images=6),
            "train.num_workers=2",
            "train.steps=6",
            "train.warmup_steps=2",
            "train.log_every=2",
            "train.checkpoint_every=2",
            "train.eval_limit=4",
            *extra,
        ],
    )


def _steps_logged(client: MlflowClient, run_id: str) -> list[int]:
    return sorted({m.step for m in client.get_metric_history(run_id, "train/loss")})


def test_train_with_worker_failure_then_job_restart(tmp_path, mlflow_uri, ray_local):
    cfg = _cfg(tmp_path, "train.inject_failure_at_step=3", "train.max_failures=1")
    client, exp_id, _ = connect_mlflow("train-stage")
    parent = client.create_run(exp_id, run_name="p").info.run_id
    for name in UPSTREAM:
        run_stage(STAGES, name, cfg, False, client, exp_id, parent, "")
    m = run_stage(STAGES, "train", cfg, False, client, exp_id, parent, "")
    out = resolve(STAGES, "train", cfg).out_dir
    assert (out / ".injected_failure").exists(), "the drill really failed a worker"
    state = torch.load(out / "model" / "latest.pt", weights_only=True)
    assert state["step"] == 6, "training finished after the restart"
    # Worker group restarted from the step-2 checkpoint: steps 2..6 were logged, none lost.
    assert _steps_logged(client, m["mlflow_run_id"])[-1] == 6
    assert set(m["metrics"]) >= {"miou", "miou_at_init", "oracle_miou", "train_seconds"}
    model = load_checkpoint(out / "model" / "latest.pt")
    assert model.text_embeddings(["cat"]).shape == (1, model.cfg.embed_dim)
    run = client.get_run(m["mlflow_run_id"])
    assert {"miou", "miou_at_init", "oracle_miou"} <= set(run.data.metrics)
    arts = {a.path for a in client.list_artifacts(m["mlflow_run_id"])}
    assert {"overlays.png", "per_class_iou.png", "confusion.png", "model"} <= arts

    # Whole-job restart: no worker restarts allowed, so the injected failure kills the job;
    # the rerun of the stage resumes from the last checkpoint instead of step 0.
    cfg2 = _cfg(tmp_path, "train.inject_failure_at_step=3", "train.max_failures=0", "train.steps=4")
    with pytest.raises(Exception, match="injected worker failure"):
        run_stage(STAGES, "train", cfg2, False, client, exp_id, parent, "")
    out2 = resolve(STAGES, "train", cfg2).out_dir
    assert read_manifest(out2) is None
    m2 = run_stage(STAGES, "train", cfg2, False, client, exp_id, parent, "")
    assert _steps_logged(client, m2["mlflow_run_id"]) == [4], "resumed at step 2, not step 0"
    assert torch.load(out2 / "model" / "latest.pt", weights_only=True)["step"] == 4

    # Reproducible: the same config trained again from scratch (two DDP ranks, one thread each)
    # gives bit-identical weights.
    cfg3 = _cfg(tmp_path, "train.steps=3", "train.eval_limit=1")
    out3 = resolve(STAGES, "train", cfg3).out_dir
    weights = []
    for force in (False, True):  # force: the output is wiped, so the second run trains anew
        m3 = run_stage(STAGES, "train", cfg3, force, client, exp_id, parent, "")
        assert _steps_logged(client, m3["mlflow_run_id"])[-1] == 3
        weights.append(torch.load(out3 / "model" / "latest.pt", weights_only=True)["model"])
    assert weights[0].keys() == weights[1].keys()
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
