"""GroupViT and OVSegmentor through the real train stage (Ray Train loop, 2 DDP workers, MLflow,
export, zero-shot evaluation) on one tiny world; OVSegmentor's partners come from the entities
stage's pairs, across shards and ranks, and reach its loss every step."""

from __future__ import annotations

import pytest

from ovs.methods import load_checkpoint
from ovs.stage import resolve
from pipelines.common import connect_mlflow, run_stage
from pipelines.graph import STAGES, load_config
from tests.tiny_world import tiny_world

pytestmark = pytest.mark.slow

UPSTREAM = ("world", "download", "entities", "pseudo_masks")


def _cfg(tmp_path, method: str):
    return load_config(
        None,
        [
            *tiny_world(tmp_path, num_train=24, num_eval=4, per_shard=8),
            f"train.method={method}",
            f"train.{method}.model.image.input_size=32",
            "train.require_cc4m=true",
            "train.num_workers=2",
            "train.steps=4",
            "train.warmup_steps=1",
            "train.log_every=2",
            "train.checkpoint_every=4",
            "train.eval_limit=2",
        ],
    )


def test_groupvit_and_ovsegmentor_train_stage(tmp_path, mlflow_uri, ray_local):
    client, exp_id, _ = connect_mlflow("grouping-methods")
    parent = client.create_run(exp_id, run_name="p").info.run_id
    gv = _cfg(tmp_path, "groupvit")
    for name in UPSTREAM:
        run_stage(STAGES, name, gv, False, client, exp_id, parent, "")
    ents = run_stage(STAGES, "entities", gv, False, client, exp_id, parent, "")
    assert ents["counts"]["paired_samples"] > 0

    for method in ("groupvit", "ovsegmentor"):
        cfg = _cfg(tmp_path, method)
        m = run_stage(STAGES, "train", cfg, False, client, exp_id, parent, "")
        assert m["metrics"]["steps_done"] == 4 and 0.0 <= m["metrics"]["miou"] <= 1.0
        out = resolve(STAGES, "train", cfg).out_dir
        spec, _ = load_checkpoint(out / "model" / "latest.pt")
        assert spec.name == method
        if method == "ovsegmentor":
            run_id = m["mlflow_run_id"]
            history = client.get_metric_history(run_id, "train/pairs")
            assert history and all(h.value > 0 for h in history)  # pairs reach the loss
            assert client.get_metric_history(run_id, "train/cross_image")
