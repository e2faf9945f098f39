"""Protocol presets, sliding windows, text classifier, aggregation and end-to-end evaluation."""

import json
from dataclasses import replace

import numpy as np
import pytest
import torch
from PIL import Image

from ovs.eval.baselines import build_clip_baseline
from ovs.eval.datasets import build_dataset
from ovs.eval.names import MASK_FREE_RENAMES, load_class_names, query_names
from ovs.eval.protocol import (
    EvalShard,
    ProtocolConfig,
    aggregate_names,
    build_classifier,
    classifier_for,
    evaluate,
    evaluate_shard,
    get_protocol,
    labels_from_probs,
    mask_free,
    predict_label,
    resize_short_side,
    shard_indices,
    shard_metrics,
    sliding_window_probs,
    template_embeddings,
    tiny,
    training_free,
    window_boxes,
)
from ovs.eval.templates import IMAGENET80_TEMPLATES, get_templates


@pytest.fixture(scope="module")
def method():
    torch.manual_seed(0)
    return build_clip_baseline("maskclip", "tiny", None)


# ---------------------------------------------------------------- presets


def test_mask_free_preset():
    p = mask_free()
    assert (p.short_side, p.window, p.stride, p.max_long_side) == (448, 448, 224, 2048)
    assert p.bg_threshold == {"voc21": 0.95, "context60": 0.35, "coco_object": 0.95}
    assert p.threshold_for("context60") == 0.35
    assert (p.templates, p.names, p.background_text) == ("single", "renamed", False)
    assert get_templates(p.templates) == ("a photo of a {}.",)


def test_training_free_preset():
    p = training_free()
    assert (p.short_side, p.window, p.stride) == (336, 224, 112)
    assert p.threshold_for("voc21") == 0.1 and p.threshold_for("coco_object") == 0.1
    assert (p.templates, p.names, p.logit_aggregation) == ("imagenet80", "synonyms", "max")
    assert p.background_text and len(get_templates(p.templates)) == 80
    assert get_protocol("training_free") == p and get_protocol("tiny") == tiny()
    with pytest.raises(KeyError):
        get_protocol("nope")


def test_templates_match_open_clip():
    from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES

    assert len(IMAGENET80_TEMPLATES) == 80 == len(set(IMAGENET80_TEMPLATES))
    assert [t.format("cat") for t in IMAGENET80_TEMPLATES] == [
        t("cat") for t in OPENAI_IMAGENET_TEMPLATES
    ]


def test_name_modes():
    voc = load_class_names("voc21")
    assert query_names(voc, "dataset")[11] == ["diningtable"]
    renamed = [c[0] for c in query_names(voc, "renamed")]
    assert "table" in renamed and "plant" in renamed and "monitor" in renamed
    assert not set(MASK_FREE_RENAMES) & set(renamed)
    assert query_names(voc, "synonyms")[20][:2] == ["tvmonitor", "tv monitor"]
    with pytest.raises(ValueError):
        query_names(voc, "nope")


# ---------------------------------------------------------------- geometry


def test_resize_short_side():
    def size(h, w, s=448, cap=2048):
        return tuple(resize_short_side(torch.zeros(1, 3, h, w), s, cap).shape[-2:])

    assert size(375, 500) == (448, 597)
    assert size(500, 375) == (597, 448)
    assert size(100, 2000) == (102, 2048)  # long side capped
    assert size(448, 448) == (448, 448)


@pytest.mark.parametrize(
    "h,w,win,stride",
    [(448, 597, 448, 224), (336, 500, 224, 112), (300, 200, 448, 224), (64, 96, 64, 32)],
)
def test_window_boxes_cover_image(h, w, win, stride):
    boxes = window_boxes(h, w, win, stride)
    cover = np.zeros((h, w), int)
    for y1, y2, x1, x2 in boxes:
        assert (y2 - y1, x2 - x1) == (min(win, h), min(win, w))
        cover[y1:y2, x1:x2] += 1
    assert cover.min() >= 1
    if (h, w) == (448, 597):
        assert boxes == [(0, 448, 0, 448), (0, 448, 149, 597)]


def test_sliding_window_is_mean_over_crops(method):
    emb = method.text_embeddings(["cat", "dog", "sky"])
    x = torch.rand(1, 3, 48, 80)
    out = sliding_window_probs(method, x, emb, window=32, stride=16, batch=3)
    assert torch.allclose(out, sliding_window_probs(method, x, emb, 32, 16, batch=1), atol=1e-6)
    acc, cnt = torch.zeros(3, 48, 80), torch.zeros(1, 48, 80)
    for y1, y2, x1, x2 in window_boxes(48, 80, 32, 16):
        acc[:, y1:y2, x1:x2] += method.dense_probs(x[:, :, y1:y2, x1:x2], emb)[0]
        cnt[:, y1:y2, x1:x2] += 1
    torch.testing.assert_close(out, acc / cnt)
    torch.testing.assert_close(out.sum(0), torch.ones(48, 80))


# ---------------------------------------------------------------- text side / labels


def test_template_averaging_matches_loop(method):
    names = ["cat", "traffic light"]
    got = template_embeddings(method, names, IMAGENET80_TEMPLATES)
    for i, n in enumerate(names):
        e = method.text_embeddings([t.format(n) for t in IMAGENET80_TEMPLATES]).mean(0)
        torch.testing.assert_close(got[i], e / e.norm(), atol=1e-5, rtol=1e-5)


def test_aggregate_names_max_and_sum():
    torch.manual_seed(0)
    probs = torch.rand(5, 3, 4)
    name_to_class = torch.tensor([0, 1, 1, 2, 1])
    mx = aggregate_names(probs, name_to_class, 3, "max")
    sm = aggregate_names(probs, name_to_class, 3, "sum")
    for c in range(3):
        idx = [i for i in range(5) if name_to_class[i] == c]
        torch.testing.assert_close(mx[c], probs[idx].max(0).values)
        torch.testing.assert_close(sm[c], probs[idx].sum(0))
    with pytest.raises(ValueError):
        aggregate_names(probs, name_to_class, 3, "mean")


def test_labels_from_probs_threshold_and_offset():
    probs = torch.tensor([[[0.9, 0.3]], [[0.1, 0.7]]])  # [C=2, H=1, W=2]
    assert labels_from_probs(probs, 0, None).tolist() == [[0, 1]]
    assert labels_from_probs(probs, 1, 0.8).tolist() == [[1, 0]]  # 0.7 < 0.8 → background
    assert labels_from_probs(probs, 1, 0.0).tolist() == [[1, 2]]


def test_build_classifier_modes(method):
    voc = load_class_names("voc21")
    mf = build_classifier(method, voc, True, mask_free(), "voc21")
    assert (mf.num_prompted, mf.offset, mf.bg_threshold) == (20, 1, 0.95)
    assert mf.emb.shape[0] == 20 and "table" in mf.names and "background" not in mf.names
    # single template: the 80-template averaging is pinned above, and 80x is slow on CPU
    tf = build_classifier(method, voc, True, replace(training_free(), templates="single"), "voc21")
    n_names = sum(len(c) for c in voc)
    assert (tf.num_prompted, tf.offset, tf.bg_threshold) == (21, 0, 0.1)
    assert tf.emb.shape[0] == n_names == tf.name_to_class.numel()
    assert tf.name_to_class[0] == 0 and tf.name_to_class[-1] == 20
    nobg = build_classifier(method, voc[1:], False, mask_free(), "voc20")
    assert (nobg.num_prompted, nobg.offset, nobg.bg_threshold) == (20, 0, None)


# ---------------------------------------------------------------- end to end


def _world(tmp_path, n=4, h=40, w=56, corrupt=True):
    base = tmp_path / "world" / "eval"
    for d in ("images", "labels"):
        (base / d).mkdir(parents=True)
    (base / "classes.txt").write_text("cube, box\nsphere, ball\ngrass\nsky\n")
    rng = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(
            base / "images" / f"{i:03d}.png"
        )
        label = rng.integers(0, 4, (h, w)).astype(np.uint8)
        label[:3] = 255
        Image.fromarray(label).save(base / "labels" / f"{i:03d}.png")
    if corrupt:
        (base / "images" / "999.png").write_bytes(b"garbage")
        Image.fromarray(np.zeros((h, w), np.uint8)).save(base / "labels" / "999.png")
    return build_dataset("world", tmp_path / "world")


def test_evaluate_world_and_shards_sum(tmp_path, method):
    ds = _world(tmp_path)
    proto = ProtocolConfig(name="t", short_side=32, window=32, stride=16)
    res = evaluate(method, ds, proto)
    assert res["num_images"] == 4 and res["num_skipped"] == 1
    assert res["dataset"] == "world" and res["protocol"] == "t"
    conf = np.array(res["confusion"])
    assert conf.shape == (4, 4) and conf.sum() == 4 * 37 * 56  # non-ignored pixels
    assert 0.0 <= res["miou"] <= 1.0 and 0.0 <= res["acc"] <= 1.0
    assert set(res["per_class_iou"]) == {"cube", "sphere", "grass", "sky"}
    json.dumps(res)  # JSON-serialisable

    clf = classifier_for(method, ds, proto)
    shards = [evaluate_shard(method, ds, proto, idx, clf) for idx in shard_indices(len(ds), 3)]
    merged = sum(shards[1:], shards[0])
    assert isinstance(merged, EvalShard)
    np.testing.assert_array_equal(merged.confusion, conf)
    assert shard_metrics(merged, ds)["miou"] == pytest.approx(res["miou"])
    assert [len(r) for r in shard_indices(5, 3)] == [2, 1, 2]


def test_background_threshold_end_to_end(tmp_path, method):
    base = tmp_path / "VOC2012"
    for d in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (base / d).mkdir(parents=True)
    rng = np.random.default_rng(1)
    Image.fromarray(rng.integers(0, 256, (24, 40, 3), dtype=np.uint8)).save(
        base / "JPEGImages" / "a.jpg"
    )
    Image.fromarray(rng.integers(0, 21, (24, 40)).astype(np.uint8)).save(
        base / "SegmentationClass" / "a.png"
    )
    (base / "ImageSets/Segmentation/val.txt").write_text("a\n")
    ds = build_dataset("voc21", base)
    always_bg = ProtocolConfig(short_side=24, window=24, stride=12, bg_threshold={"voc21": 1.01})
    conf = np.array(evaluate(method, ds, always_bg)["confusion"])
    assert conf[:, 1:].sum() == 0 and conf[:, 0].sum() == 24 * 40
    never_bg = ProtocolConfig(short_side=24, window=24, stride=12, bg_threshold={"voc21": 0.0})
    conf = np.array(evaluate(method, ds, never_bg)["confusion"])
    assert conf[:, 0].sum() == 0 and conf.sum() == 24 * 40


def test_bench_prints_json_last(capsys):
    from tools.bench.__main__ import main
    from tools.bench.evaluate import run

    res = run(["--images", "2", "--height", "32", "--width", "48"])
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert json.loads(last) == res and res["img_per_s"] > 0
    assert res["pixels_counted"] == 2 * 32 * 48
    # Through the dispatcher (python -m tools.bench evaluate): exit code 0, JSON line last.
    assert main(["evaluate", "--method", "sseg", "--images", "1", "--height", "32"]) == 0
    last = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert last["method"] == "sseg" and last["pixels_counted"] == 32 * 96


def test_shard_evaluator_adapter(tmp_path, method):
    from ovs.eval.config import EvalConfig, EvalDatasetConfig
    from ovs.eval.method import MethodRef
    from ovs.eval.runner import EvalTask, ShardEvaluator, combine_rows, decode_examples

    ds = _world(tmp_path)
    proto = ProtocolConfig(name="t", short_side=32, window=32, stride=16)
    proto2 = replace(proto, name="t2", logit_aggregation="sum", templates="imagenet80")
    cfg = EvalDatasetConfig(name="world", root=str(tmp_path / "world"))
    tasks = [EvalTask(cfg, proto, None, 2), EvalTask(cfg, proto2, 3)]
    worker = ShardEvaluator(MethodRef(method="maskclip", model="tiny"), tasks, method=method)
    assert worker.total == 5 + 3
    # Batches straddle the two tasks; row order does not matter.
    rows = [worker(ids) for ids in ([7, 0, 1], [2, 5], [3, 4, 6])]
    merged = combine_rows(rows, task=0)
    np.testing.assert_array_equal(
        merged.confusion, evaluate_shard(method, ds, proto, range(5)).confusion
    )
    assert merged.num_images == 4 and len(merged.skipped) == 1 and "999" in merged.skipped[0]
    second = combine_rows(rows, task=1)
    np.testing.assert_array_equal(
        second.confusion, evaluate_shard(method, ds, proto2, range(3)).confusion
    )
    assert second.num_images == 3 and second.skipped == []
    with pytest.raises(ValueError, match="several tasks"):
        combine_rows(rows)
    examples = decode_examples(rows, task=0)
    assert sorted(examples) == [0, 1]
    clf = classifier_for(method, ds, proto)
    np.testing.assert_array_equal(examples[1], predict_label(method, ds[1]["image"], clf, proto))
    assert decode_examples(rows, task=1) == {}
    assert EvalConfig().datasets == [] and EvalConfig().resolved_protocols() == [tiny()]


def test_methods_evaluator_equals_one_worker_per_method(tmp_path):
    """The evaluate stage's one pool for all methods: a worker that switches between methods
    (and back) returns exactly the rows a fresh worker of each method returns, its random-init
    baselines rebuilt from the seed, with one method held at a time."""
    from ovs.eval.config import EvalDatasetConfig
    from ovs.eval.method import MethodRef
    from ovs.eval.runner import EvalTask, MethodsEvaluator, ShardEvaluator

    _world(tmp_path)
    proto = ProtocolConfig(name="t", short_side=32, window=32, stride=16)
    cfg = EvalDatasetConfig(name="world", root=str(tmp_path / "world"))
    refs = [MethodRef(method=m, model="tiny", pretrained=None) for m in ("maskclip", "clip")]
    tasks = [[EvalTask(cfg, proto, 5, 2)], [EvalTask(cfg, proto, 3, 1)]]
    pool = MethodsEvaluator(list(zip(refs, tasks)), seed=3)
    calls = [(0, [0, 1]), (1, [0, 2]), (0, [2, 3, 4]), (1, [1])]
    got = [pool(j, ids) for j, ids in calls]
    assert pool.current is not None and pool.current[0] == 1
    fresh = [ShardEvaluator(r, t, seed=3) for r, t in zip(refs, tasks)]
    for (j, ids), row in zip(calls, got):
        want = fresh[j](ids)
        assert row.keys() == want.keys()
        for k in want:
            np.testing.assert_array_equal(row[k], want[k])
