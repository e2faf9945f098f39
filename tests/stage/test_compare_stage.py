"""Several methods in one run: ``train.methods`` trains each a few steps through the real Ray
Train loop beside S-Seg (each in the output of a run of it alone), ``evaluate`` evaluates every
row of every trained method and writes the comparison table.

Only what is the stage's own is checked here, with the methods that need it: PACL bound to the
checkpoint of the CLIP this run trained (a requirement trained first), OVSegmentor's own task
(its cross-image partners reach the loss), and the table of every trained method's rows. Every
method's spec (build, step, checkpoint, evaluation rows) is ``tests/unit/test_methods.py``, and
every caption method's training task through the loop's pieces is
``tests/stage/test_train_loop.py::test_every_caption_method_trains_through_its_task`` (a new
method goes there; it needs a Ray Train job here only when the train stage treats it
specially). The upstream stages are the session's shared tiny world (``tiny_trained``)."""

from __future__ import annotations

import json

import pytest
import torch
from mlflow.tracking import MlflowClient

from ovs.methods import METHODS, load_checkpoint
from ovs.stage import read_manifest, resolve
from pipelines.common import connect_mlflow, run_stage
from pipelines.graph import STAGES, load_config
from tests.tiny_world import tiny_trained
from tests.upstream import run_upstream

pytestmark = pytest.mark.slow

# Trained beside S-Seg: PACL (with CLIP, its requirement, trained first) and OVSegmentor.
EXTRA = ["clip", "pacl", "ovsegmentor"]
OVERRIDES = [  # the tiny world's 32-px crops
    "train.clip.vision.image_size=32",
    "train.pacl.model.input_size=32",
    "train.ovsegmentor.model.image.input_size=32",
]
UPSTREAM = ("world", "download", "entities", "pseudo_masks")


def _cfg(tmp_path, *extra):
    return load_config(
        None,
        [
            *tiny_trained(tmp_path),
            *OVERRIDES,
            f"train.methods=[{', '.join(EXTRA)}]",
            "train.num_workers=1",
            "train.log_every=1",
            "train.eval_limit=1",
            "evaluate.num_actors=1",
            "evaluate.batch_size=3",
            "evaluate.num_examples=1",
            *extra,
        ],
    )


def test_train_and_evaluate_several_methods(tmp_path, mlflow_uri, ray_local):
    cfg = _cfg(tmp_path)
    client, exp_id, _ = connect_mlflow("compare-stage")
    parent = client.create_run(exp_id, run_name="p").info.run_id
    run_upstream(UPSTREAM, cfg, client, exp_id, parent)
    train = run_stage(STAGES, "train", cfg, False, client, exp_id, parent, "")

    # Each extra method trained its steps into the output a run of it alone has (reused by it).
    for m in EXTRA:
        alone = resolve(STAGES, "train", _cfg(tmp_path, f"train.method={m}", "train.methods=[]"))
        manifest = read_manifest(alone.out_dir)
        assert manifest is not None and manifest["metrics"]["steps_done"] == 2, m
        assert (alone.out_dir / "model" / "latest.pt").is_file()
        assert train["metrics"][f"{m}.steps_done"] == 2 and f"{m}.miou" in train["metrics"]
        if m == "pacl":  # bound to the CLIP this run trained: its frozen tower is that one
            clip_dir = resolve(
                STAGES, "train", _cfg(tmp_path, "train.method=clip", "train.methods=[]")
            )
            clip_ckpt = clip_dir.out_dir / "model" / "latest.pt"
            assert manifest["config"]["pacl"]["model"]["clip_checkpoint"] == str(clip_ckpt)
            _, clip = load_checkpoint(clip_ckpt)
            _, init = load_checkpoint(clip_dir.out_dir / "model" / "init.pt")
            _, pacl = load_checkpoint(alone.out_dir / "model" / "latest.pt")
            want, got = clip.clip.state_dict(), pacl.clip.state_dict()
            assert want.keys() == got.keys() and all(torch.equal(want[k], got[k]) for k in want)
            first = init.clip.state_dict()
            assert not all(torch.equal(want[k], first[k]) for k in want), "CLIP was trained"
        if m == "ovsegmentor":  # the entities stage's partners reached its loss every step
            history = MlflowClient(mlflow_uri).get_metric_history(
                manifest["mlflow_run_id"], "train/pairs"
            )
            assert len(history) == 2 and all(h.value > 0 for h in history)
    main = resolve(STAGES, "train", cfg).out_dir
    assert (main / "model" / "latest.pt").is_file() and train["metrics"]["steps_done"] == 2

    ev = run_stage(STAGES, "evaluate", cfg, False, client, exp_id, parent, "")
    rows = ["sseg", *(r for m in EXTRA for r in METHODS[m].evaluation_rows())]
    out = resolve(STAGES, "evaluate", cfg).out_dir
    table = json.loads((out / "comparison.json").read_text())
    assert table["method"] == rows
    assert set(table["benchmark"]) == {"world"} and set(table["protocol"]) == {"tiny"}
    for i, r in enumerate(rows):
        prefix = "" if r == "sseg" else f"{r}."
        assert table["miou"][i] == pytest.approx(ev["metrics"][f"{prefix}miou"]), r
        assert table["pixel_acc"][i] == pytest.approx(ev["metrics"][f"{prefix}pixel_acc"]), r
        result = json.loads((out / r / "tiny" / "world" / "result.json").read_text())
        assert result["miou"] == table["miou"][i] and 0 <= result["acc"] <= 1
    assert "| S-Seg |" in (out / "comparison.md").read_text()
    arts = {a.path for a in MlflowClient(mlflow_uri).list_artifacts(ev["mlflow_run_id"])}
    assert {"comparison.json", "comparison.png", "comparison.md"} <= arts
