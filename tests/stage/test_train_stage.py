"""The train stage through the real runner: Ray Train (2 DDP workers on gloo), MLflow, an
injected worker failure (restart from checkpoint), a time limit (resumed by a rerun). A
whole-job failure and its resumed rerun, through the same loop, are
``tests/stage/test_self_train_stage.py``'s; resumed equals uninterrupted and reproducible
metrics, ``tests/cluster/test_kill_resume.py``'s (two ranks) and ``test_train_stream.py``'s."""

from __future__ import annotations

import pytest
import torch
from mlflow.tracking import MlflowClient

from ovs.methods import load_checkpoint
from ovs.stage import StageIncomplete, read_manifest, resolve
from pipelines.common import connect_mlflow, run_stage
from pipelines.drills import fail_worker_at
from pipelines.graph import STAGES, load_config
from tests.tiny_world import tiny_upstream
from tests.upstream import run_upstream

pytestmark = pytest.mark.slow

UPSTREAM = ("world", "download", "entities", "pseudo_masks")


def _cfg(tmp_path, *extra):
    return load_config(
        None,
        [
            *tiny_upstream(tmp_path),  # the session's shared upstream (tests/upstream.py)
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
    cfg = _cfg(tmp_path, "train.max_failures=1")
    client, exp_id, _ = connect_mlflow("train-stage")
    parent = client.create_run(exp_id, run_name="p").info.run_id
    run_upstream(UPSTREAM, cfg, client, exp_id, parent)
    with fail_worker_at("train", 3):
        m = run_stage(STAGES, "train", cfg, False, client, exp_id, parent, "")
    out = resolve(STAGES, "train", cfg).out_dir
    assert (out / ".injected_failure").exists(), "the drill really failed a worker"
    state = torch.load(out / "model" / "latest.pt", weights_only=True)
    assert state["step"] == 6, "training finished after the restart"
    # Worker group restarted from the step-2 checkpoint: steps 2..6 were logged, none lost.
    assert _steps_logged(client, m["mlflow_run_id"])[-1] == 6
    assert set(m["metrics"]) >= {"miou", "miou_at_init", "oracle_miou", "train_seconds"}
    assert m["metrics"]["steps_done"] == m["metrics"]["steps"] == 6
    assert 0.0 < m["metrics"]["data_wait_fraction"] < 1.0
    waits = client.get_metric_history(m["mlflow_run_id"], "train/data_wait_fraction")
    assert waits and all(0.0 < w.value < 1.0 for w in waits)
    spec, model = load_checkpoint(out / "model" / "latest.pt")
    assert spec.name == "sseg"
    assert model.text_embeddings(["cat"]).shape == (1, model.cfg.embed_dim)
    run = client.get_run(m["mlflow_run_id"])
    assert {"miou", "miou_at_init", "oracle_miou", "steps_done", "steps"} <= set(run.data.metrics)
    assert "train.inject_failure_at_step" not in run.data.params, "the drill is no config key"
    arts = {a.path for a in client.list_artifacts(m["mlflow_run_id"])}
    assert {"overlays.png", "per_class_iou.png", "confusion.png", "model"} <= arts

    # A time limit that is hit: the loop checkpoints at its first log step (step 2) and the
    # stage ends incomplete, without a manifest. The limit is not in the stage hash, so the
    # rerun below continues the same output. (A whole-job failure and its resumed rerun go
    # through the same loop and checkpoints: tests/stage/test_self_train_stage.py.)
    limited = _cfg(tmp_path, "train.steps=4", "train.time_limit_s=1e-9")
    with pytest.raises(StageIncomplete, match="stopped at step 2 of 4") as stopped:
        run_stage(STAGES, "train", limited, False, client, exp_id, parent, "")
    assert stopped.value.metrics["steps_done"] == 2
    out2 = resolve(STAGES, "train", limited).out_dir
    assert read_manifest(out2) is None
    unlimited = _cfg(tmp_path, "train.steps=4", "train.max_failures=0")
    assert resolve(STAGES, "train", unlimited).out_dir == out2
    m2 = run_stage(STAGES, "train", unlimited, False, client, exp_id, parent, "")
    assert _steps_logged(client, m2["mlflow_run_id"]) == [4], "resumed at step 2, not step 0"
    assert m2["metrics"]["steps_done"] == 4
    assert torch.load(out2 / "model" / "latest.pt", weights_only=True)["step"] == 4

    # That the resumed run equals an uninterrupted one bit for bit (two ranks, data order,
    # augmentation, noun draws and dropout continued from the checkpoint) and that the same
    # config trained twice gives identical metrics is the SIGKILL drill's
    # (tests/cluster/test_kill_resume.py) and, for the streaming ingest, test_train_stream's.


def test_a_batch_over_the_memory_budget_fails_the_stage_with_one_message(
    tmp_path, mlflow_uri, ray_local
):
    """Through Ray Train: the workers' first step refuses the batch and the stage raises the
    driver's one-line error naming ``train.batch_size``, with no model exported."""
    from pipelines.common import PipelineError

    cfg = _cfg(tmp_path, "train.memory_budget_mb=50", "train.max_failures=0")
    client, exp_id, _ = connect_mlflow("train-stage")
    parent = client.create_run(exp_id, run_name="p").info.run_id
    run_upstream(UPSTREAM, cfg, client, exp_id, parent)
    with pytest.raises(PipelineError, match=r"train\.batch_size=\d+ does not fit in memory: .*"
                       r"the limit is 50 MiB \(train\.memory_budget_mb=50\)") as e:  # fmt: skip
        run_stage(STAGES, "train", cfg, False, client, exp_id, parent, "")
    assert "\n" not in str(e.value)
    out = resolve(STAGES, "train", cfg).out_dir
    assert read_manifest(out) is None and not (out / "model" / "latest.pt").exists()
