"""The evaluate stage through the real runner: a tiny world, a 2-step trained model, Ray Data
actors, two protocols, a random-init baseline, a present and a missing benchmark."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient
from PIL import Image

from ovs.eval.datasets import build_dataset
from ovs.eval.method import MethodRef, load_method
from ovs.eval.protocol import evaluate
from ovs.stage import read_manifest, resolve
from pipelines.common import connect_mlflow, run_stage
from pipelines.evaluate import OVERLAY_PANEL_PX
from pipelines.graph import STAGES, load_config
from tests.tiny_world import tiny_trained
from tests.upstream import run_upstream

pytestmark = pytest.mark.slow

UPSTREAM = ("world", "download", "entities", "pseudo_masks", "train")
# A second protocol shaped like the training-free one (synonyms, 80 templates, background
# prompted) at the world's 32 px.
SCLIP32 = (
    "{name: sclip32, short_side: 32, window: 32, stride: 16, background_text: true, "
    "names: synonyms, templates: imagenet80, default_bg_threshold: 0.1}"
)


def _voc(root, n=2, h=24, w=40, context=False):
    """A tiny PASCAL VOC 2012 layout (palette labels with background and border pixels), or
    with ``context`` the PASCAL Context one (VOC2010, SegmentationClassContext, 60 classes)."""
    year, labels, lists, classes = (
        ("VOC2010", "SegmentationClassContext", "SegmentationContext", 60)
        if context
        else ("VOC2012", "SegmentationClass", "Segmentation", 21)
    )
    base = root / "VOCdevkit" / year
    for d in ("JPEGImages", labels, f"ImageSets/{lists}"):
        (base / d).mkdir(parents=True)
    rng = np.random.default_rng(0)
    ids = [f"2007_{i:06d}" for i in range(n)]
    for sid in ids:
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(
            base / "JPEGImages" / f"{sid}.jpg"
        )
        label = rng.integers(0, classes, (h, w)).astype(np.uint8)
        label[0] = 255
        Image.fromarray(label, mode="L").save(base / labels / f"{sid}.png")
    (base / f"ImageSets/{lists}/val.txt").write_text("\n".join(ids) + "\n")
    return root


def _cfg(tmp_path, *extra):
    voc = _voc(tmp_path / "voc")
    return load_config(
        None,
        [
            *tiny_trained(tmp_path),
            "evaluate.protocols=[tiny, sclip32]",
            f"evaluate.custom_protocols=[{SCLIP32}]",
            "evaluate.baselines=[{name: maskclip, method: maskclip, model: tiny, pretrained: null}]",
            f"evaluate.datasets=[{{name: voc21, root: '{voc}'}}, "
            f"{{name: context60, root: '{tmp_path / 'no_context'}', optional: true}}]",
            "evaluate.num_actors=2",
            "evaluate.num_cpus=0.5",
            "evaluate.batch_size=2",
            "evaluate.num_examples=2",
            *extra,
        ],
    )


def test_config_selects_published_protocols():
    cfg = load_config(None, ["evaluate.protocols=[mask_free, training_free]"])
    mf, tf = cfg.evaluate.resolved_protocols()
    assert (mf.short_side, mf.window, mf.stride, mf.background_text) == (448, 448, 224, False)
    assert mf.bg_threshold == {"voc21": 0.95, "context60": 0.35, "coco_object": 0.95}
    assert (tf.short_side, tf.window, tf.stride, tf.templates) == (336, 224, 112, "imagenet80")
    with pytest.raises(ValueError, match="unknown protocol"):
        load_config(None, ["evaluate.protocols=[nope]"])
    with pytest.raises(ValueError, match="unknown benchmark"):
        load_config(None, ["evaluate.datasets=[{name: voc99, root: /x}]"])


def test_evaluate_stage(tmp_path, mlflow_uri, ray_local, caplog):
    cfg = _cfg(tmp_path)
    client, exp_id, _ = connect_mlflow("evaluate-stage")
    parent = client.create_run(exp_id, run_name="p").info.run_id
    run_upstream(UPSTREAM, cfg, client, exp_id, parent)
    with caplog.at_level(logging.INFO, logger="ovs"):
        m = run_stage(STAGES, "evaluate", cfg, False, client, exp_id, parent, "")
    out = resolve(STAGES, "evaluate", cfg).out_dir

    # The missing benchmark: one clear message, counted; the present ones evaluated.
    assert "benchmark context60 skipped" in caplog.text and "no_context" in caplog.text
    assert m["counts"]["datasets_missing"] == 1 and m["counts"]["datasets_evaluated"] == 2
    assert m["counts"]["world.images"] == 4 and m["counts"]["voc21.images"] == 2
    names = {
        f"{p}{d}{k}"
        for p in ("", "sclip32.", "maskclip.", "maskclip.sclip32.")
        for d in ("", "voc21.")
        for k in ("miou", "pixel_acc", "macc")
    }
    assert names <= set(m["metrics"])
    assert not any(k.startswith("context60") for k in m["metrics"])

    # Sharded Ray Data result == single-process evaluate(), for the model and the baseline.
    world = build_dataset("world", resolve(STAGES, "world", cfg).out_dir)
    protocol = cfg.evaluate.resolved_protocols()[0]
    ckpt = resolve(STAGES, "train", cfg).out_dir / "model" / "latest.pt"
    torch.manual_seed(cfg.seed)
    baseline = load_method(MethodRef("maskclip", None, "tiny", None))
    for name, method in (
        ("sseg", load_method(MethodRef(checkpoint=str(ckpt)))),
        ("maskclip", baseline),
    ):
        saved = json.loads((out / name / "tiny" / "world" / "result.json").read_text())
        ref = evaluate(method, world, protocol, range(len(world)))
        np.testing.assert_array_equal(np.array(saved["confusion"]), np.array(ref["confusion"]))
        assert saved["miou"] == pytest.approx(ref["miou"])
    assert m["metrics"]["miou"] == pytest.approx(
        json.loads((out / "sseg" / "tiny" / "world" / "result.json").read_text())["miou"]
    )
    voc = json.loads((out / "sseg" / "sclip32" / "voc21" / "result.json").read_text())
    assert np.array(voc["confusion"]).sum() == 2 * 23 * 40  # every non-ignored pixel once

    # MLflow: metrics, counts, protocol params and the pictures / tables per combination.
    run = MlflowClient(mlflow_uri).get_run(m["mlflow_run_id"])
    assert names <= set(run.data.metrics) and run.data.metrics["count.datasets_missing"] == 1
    assert run.data.params["protocol.sclip32.templates"] == "imagenet80"
    assert run.data.params["protocol.tiny.short_side"] == "64"
    for combo in ("sseg/tiny/world", "sseg/sclip32/voc21", "maskclip/tiny/world"):
        arts = {a.path.rsplit("/", 1)[-1] for a in client.list_artifacts(run.info.run_id, combo)}
        assert {
            "overlays.png",
            "per_class_iou.png",
            "per_class_iou.json",
            "result.json",
            "confusion.png",
        } <= arts
    top = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"missing_benchmarks.txt", "protocols.json", "_SUCCESS.json"} <= top
    # 2 rows of 3 panels, each upscaled to OVERLAY_PANEL_PX (legible), plus the class legend
    grid = np.asarray(Image.open(out / "sseg" / "tiny" / "world" / "overlays.png"))
    px = OVERLAY_PANEL_PX
    assert grid.shape[0] >= 2 * px and grid.shape[1] > 3 * px + 2 * 4

    # Resume: a killed attempt keeps finished combinations and recomputes only the rest.
    (out / "_SUCCESS.json").unlink()
    redo = out / "maskclip" / "sclip32" / "voc21" / "result.json"
    redo.unlink()
    kept = out / "sseg" / "tiny" / "world" / "result.json"
    kept_mtime = kept.stat().st_mtime_ns
    m2 = run_stage(STAGES, "evaluate", cfg, False, client, exp_id, parent, "")
    assert read_manifest(out) is not None and redo.is_file()
    assert kept.stat().st_mtime_ns == kept_mtime
    assert m2["metrics"]["maskclip.sclip32.voc21.miou"] == pytest.approx(
        m["metrics"]["maskclip.sclip32.voc21.miou"]
    )

    # The optional benchmark's data appears: the next run evaluates it in the same directory
    # (the other results kept), then the output is complete again and skipped.
    _voc(tmp_path / "no_context", context=True)
    with caplog.at_level(logging.INFO, logger="ovs"):
        m3 = run_stage(STAGES, "evaluate", cfg, False, client, exp_id, parent, "")
    assert "benchmark context60 was missing" in caplog.text and "rerunning" in caplog.text
    assert m3["counts"]["context60.images"] == 2 and m3["counts"]["datasets_missing"] == 0
    assert m3["mlflow_run_id"] != m2["mlflow_run_id"] and "context60.miou" in m3["metrics"]
    assert kept.stat().st_mtime_ns == kept_mtime and read_manifest(out) == m3
    assert m3["metrics"]["voc21.miou"] == pytest.approx(m["metrics"]["voc21.miou"])
    m4 = run_stage(STAGES, "evaluate", cfg, False, client, exp_id, parent, "")
    assert m4["mlflow_run_id"] == m3["mlflow_run_id"]  # skipped
