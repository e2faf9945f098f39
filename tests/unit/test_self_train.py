"""S-Seg+ library pieces: CE loss, UperNet segmenter, layer decay, pseudo-labels and the
confidence rule, closed-vocabulary evaluation, training data."""

from __future__ import annotations

import math

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import timm
import torch
import torch.nn.functional as F

from ovs.codecs import png_bytes
from ovs.data.augment import AugmentConfig
from ovs.eval.datasets import SampleRef, SegDataset
from ovs.eval.metrics import confusion_matrix, summarize
from ovs.eval.protocol import labels_from_probs, tiny
from ovs.methods.segmenter.checkpoint import from_checkpoint, save_checkpoint
from ovs.methods.segmenter.config import SegmenterConfig, paper_segmenter
from ovs.methods.segmenter.losses import pixel_cross_entropy
from ovs.methods.segmenter.model import build_segmenter
from ovs.methods.segmenter.recipe import (
    build_optimizer,
    init_backbone,
    layer_decay_groups,
    layer_ids,
)
from ovs.methods.sseg.config import SSegConfig
from ovs.methods.sseg.model import SSeg
from ovs.selftrain.evaluate import evaluate_closed, predict_closed
from ovs.selftrain.pseudo_labels import (
    TargetConfig,
    apply_confidence_rule,
    class_thresholds,
    confidence_histogram,
    kept_confusion,
    label_and_confidence,
    label_gt_histogram,
    pseudo_label,
    target_images,
)
from ovs.selftrain.training import (
    SelfTrainConfig,
    batches,
    load_rows,
    paper_self_train,
)
from ovs.train.schedules import poly_schedule, warmup_poly

VIT = SegmenterConfig(
    backbone="vit_tiny_patch16_224",
    backbone_kwargs={
        "img_size": 64,
        "depth": 4,
        "embed_dim": 48,
        "num_heads": 2,
        "dynamic_img_size": True,
    },
    out_indices=(0, 1, 2, 3),
    channels=16,
)
RESNET = SegmenterConfig(channels=16, backbone_kwargs={"channels": [8, 16, 32, 64]})


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


# ----------------------------------------------------------------------------- loss


def _reference_ce(logits: torch.Tensor, target: torch.Tensor, ignore: int = 255) -> float:
    total, n = 0.0, 0
    b, k, h, w = logits.shape
    for i in range(b):
        for y in range(h):
            for x in range(w):
                t = int(target[i, y, x])
                if t == ignore:
                    continue
                z = [float(logits[i, c, y, x]) for c in range(k)]
                m = max(z)
                lse = m + math.log(sum(math.exp(v - m) for v in z))
                total += lse - z[t]
                n += 1
    return total / n


def test_pixel_cross_entropy_matches_reference():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 5, 6, 7, generator=g, requires_grad=True)
    target = torch.randint(0, 5, (2, 6, 7), generator=g)
    target[0, :2] = 255
    target[1, 3, 4] = 255
    loss = pixel_cross_entropy(logits, target)
    assert loss.item() == pytest.approx(_reference_ce(logits.detach(), target), rel=1e-5)
    loss.backward()
    assert logits.grad is not None and logits.grad[0, :, :2].abs().sum() == 0


def test_pixel_cross_entropy_all_ignored_and_bad_ids():
    logits = torch.randn(1, 3, 4, 4, requires_grad=True)
    loss = pixel_cross_entropy(logits, torch.full((1, 4, 4), 255))
    assert loss.item() == 0.0
    loss.backward()  # differentiable even with nothing to learn from
    with pytest.raises(ValueError, match="outside"):
        pixel_cross_entropy(logits, torch.full((1, 4, 4), 3))
    with pytest.raises(ValueError, match="vs target"):
        pixel_cross_entropy(logits, torch.zeros(1, 4, 5, dtype=torch.long))


# ----------------------------------------------------------------------------- model


@pytest.mark.parametrize("cfg", [RESNET, VIT], ids=["resnet", "vit"])
def test_segmenter_shapes(cfg):
    model = build_segmenter(cfg, num_classes=7, seed=0)
    feats = model.backbone(torch.randn(2, 3, 64, 64))
    assert [f.shape[-1] for f in feats] == [16, 8, 4, 2], "strides 4/8/16/32"
    head = model.head(feats)
    assert head.shape == (2, 7, 16, 16)
    out = model(torch.rand(2, 3, 50, 70))  # not a multiple of 32: padded and cropped back
    assert out.shape == (2, 7, 50, 70)
    probs = model.eval().probs(torch.rand(1, 3, 64, 64))
    torch.testing.assert_close(probs.sum(1), torch.ones(1, 64, 64))


def test_segmenter_rejects_bad_levels():
    with pytest.raises(ValueError, match="4 feature levels"):
        build_segmenter(SegmenterConfig(out_indices=(1, 2, 3)), 3)
    with pytest.raises(ValueError, match="strides"):
        build_segmenter(SegmenterConfig(out_indices=(0, 1, 2, 3)), 3)  # 2, 4, 8, 16


def test_paper_segmenter_config():
    cfg = paper_segmenter()
    assert cfg.backbone == "vit_base_patch16_224.mae" and cfg.out_indices == (3, 5, 7, 11)
    paper = paper_self_train("voc21", "/data/voc")
    assert paper.layer_decay == 0.7 and paper.lr == 1e-4 and paper.warmup_steps == 1500
    assert paper.steps == 20000 and paper.batch_size * paper.num_workers == 16


def test_layer_decay_vit():
    model = build_segmenter(VIT, 3)
    ids, n = layer_ids(model)
    assert n == 4 + 2, "embeddings, 4 blocks, head"
    assert ids["backbone.model.pos_embed"] == 0
    assert ids["backbone.model.blocks.2.attn.qkv.weight"] == 3
    assert ids["head.classifier.weight"] == 5 and ids["backbone.rescale.0.0.weight"] == 5
    groups = layer_decay_groups(model, 0.05, 0.7)
    scale = {id(p): g["lr_scale"] for g in groups for p in g["params"]}
    params = dict(model.named_parameters())
    assert scale[id(params["backbone.model.blocks.2.attn.qkv.weight"])] == pytest.approx(0.7**2)
    assert scale[id(params["backbone.model.patch_embed.proj.weight"])] == pytest.approx(0.7**5)
    assert scale[id(params["head.classifier.weight"])] == 1.0
    decay = {id(p): g["weight_decay"] for g in groups for p in g["params"]}
    assert decay[id(params["backbone.model.pos_embed"])] == 0.0
    assert decay[id(params["head.classifier.bias"])] == 0.0
    assert decay[id(params["head.classifier.weight"])] == 0.05
    assert sum(len(g["params"]) for g in groups) == len(params)


def test_optimizer_and_poly_schedule():
    cfg = SelfTrainConfig(steps=100, warmup_steps=10, lr=1e-3, layer_decay=0.5)
    model = build_segmenter(RESNET, 3)
    opt = build_optimizer(model, cfg)
    assert max(g["lr"] for g in opt.param_groups) == pytest.approx(1e-3)
    assert min(g["lr"] for g in opt.param_groups) == pytest.approx(
        1e-3 * 0.5 ** (layer_ids(model)[1] - 1)
    )
    sched = poly_schedule(opt, cfg, cfg.poly_power)  # every group: its lr x the same factor
    assert sched.get_last_lr() == [g["initial_lr"] * 0.1 for g in opt.param_groups]
    assert warmup_poly(9, cfg, cfg.poly_power) == pytest.approx(1.0)
    assert warmup_poly(55, cfg, cfg.poly_power) == pytest.approx(0.5)  # linear poly half-way
    assert warmup_poly(100, cfg, cfg.poly_power) == pytest.approx(0.0)


def test_segmenter_checkpoint_roundtrip(tmp_path):
    model = build_segmenter(RESNET, 5, seed=3).eval()
    save_checkpoint(model, tmp_path / "m.pt", {"step": 7})
    loaded = from_checkpoint(torch.load(tmp_path / "m.pt", weights_only=True)).eval()
    x = torch.rand(1, 3, 32, 32)
    torch.testing.assert_close(loaded(x), model(x))
    assert loaded.num_classes == 5


def test_backbone_from_local_checkpoint(tmp_path):
    kw = {"channels": [8, 16, 32, 64], "stem_width": 8}
    src = timm.create_model("resnet10t", **kw)
    torch.save(src.state_dict(), tmp_path / "backbone.pth")
    cfg = SegmenterConfig(
        backbone="resnet10t", checkpoint=str(tmp_path / "backbone.pth"), backbone_kwargs=kw
    )
    model = build_segmenter(cfg, 3)
    torch.testing.assert_close(model.backbone.model.conv1[0].weight, src.conv1[0].weight)
    with pytest.raises(FileNotFoundError):
        build_segmenter(SegmenterConfig(checkpoint=str(tmp_path / "missing.pth")), 3)


def test_init_backbone_from_sseg():
    sseg = SSeg(SSegConfig())
    seg = build_segmenter(SegmenterConfig(), 4)
    n = init_backbone(seg, sseg.image_backbone())
    assert n > 50
    torch.testing.assert_close(
        seg.backbone.model.layer3[0].conv1.weight,
        sseg.maskformer.backbone.net.layer3[0].conv1.weight,
    )
    with pytest.raises(ValueError, match="no tensor of the trained image backbone"):
        init_backbone(build_segmenter(VIT, 4), sseg.image_backbone())


# ----------------------------------------------------------------------------- pseudo-labels


def test_label_and_confidence_match_protocol():
    g = torch.Generator().manual_seed(1)
    probs = torch.rand(4, 5, 6, generator=g)
    probs = probs / probs.sum(0, keepdim=True)
    for offset, thr in ((0, None), (1, 0.4)):
        labels, conf = label_and_confidence(probs, offset, thr)
        np.testing.assert_array_equal(labels, labels_from_probs(probs, offset, thr).numpy())
        best = probs.max(0).values.numpy()
        expect = best if thr is None else np.where(best < thr, 1 - best, best)
        np.testing.assert_array_equal(conf, np.rint(expect * 255).astype(np.uint8))


def test_confidence_histogram_and_thresholds_match_numpy():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 4, (3, 20, 20)).astype(np.uint8)
    labels[0, :3] = 255  # ignored pixels are not counted
    conf = rng.integers(0, 256, labels.shape).astype(np.uint8)
    conf[labels == 2] //= 4  # a less confident class
    hist = sum(confidence_histogram(label, c, 5) for label, c in zip(labels, conf))
    for c in range(4):
        np.testing.assert_array_equal(hist[c], np.bincount(conf[labels == c], minlength=256))
    assert hist[4].sum() == 0
    q = 0.3
    thr = class_thresholds(hist, q)
    for c in range(4):
        ref = np.quantile(conf[labels == c].astype(np.int64), q, method="inverted_cdf")
        assert thr[c] == ref
    assert thr[4] == 0, "never-predicted class: no threshold"
    assert thr[2] < thr[0], "per class, not global"
    np.testing.assert_array_equal(class_thresholds(hist, 0.0), np.zeros(5))
    assert (class_thresholds(hist, 0.3, min_confidence=0.9) >= 230).all()
    with pytest.raises(ValueError):
        class_thresholds(hist, 1.0)


def test_apply_confidence_rule():
    rng = np.random.default_rng(2)
    labels = rng.integers(0, 3, (30, 30)).astype(np.uint8)
    labels[0, 0] = 255
    conf = rng.integers(0, 256, labels.shape).astype(np.uint8)
    thr = np.array([100, 0, 200])
    out = apply_confidence_rule(labels, conf, thr)
    for y in range(30):
        for x in range(30):
            lab = labels[y, x]
            drop = lab == 255 or conf[y, x] < thr[lab]
            assert out[y, x] == (255 if drop else lab)
    # The rule drops about ignore_quantile of each class's pixels (never more).
    hist = confidence_histogram(labels, conf, 3)
    kept = apply_confidence_rule(labels, conf, class_thresholds(hist, 0.25))
    for c in range(3):
        frac = 1 - (kept == c).sum() / (labels == c).sum()
        assert 0.2 < frac <= 0.25


def test_kept_confusion_matches_rule_then_confusion():
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 4, (3, 16, 16)).astype(np.uint8)
    gt = rng.integers(0, 4, labels.shape).astype(np.uint8)
    gt[0, 0] = 255
    conf = rng.integers(0, 256, labels.shape).astype(np.uint8)
    joint = sum(label_gt_histogram(lab, c, g, 4) for lab, c, g in zip(labels, conf, gt))
    np.testing.assert_array_equal(kept_confusion(joint), confusion_matrix(labels, gt, 4))
    thr = np.array([30, 200, 0, 128])
    ruled = np.stack([apply_confidence_rule(lab, c, thr) for lab, c in zip(labels, conf)])
    ref = confusion_matrix(np.where(ruled == 255, 0, ruled), np.where(ruled == 255, 255, gt), 4)
    np.testing.assert_array_equal(kept_confusion(joint, thr), ref)


def _world_like(tmp_path, split: str, n: int, size: int = 32, classes: int = 3) -> SegDataset:
    from PIL import Image

    base = tmp_path / split
    (base / "images").mkdir(parents=True)
    (base / "labels").mkdir()
    (base / "classes.txt").write_text("red\ngreen\nblue\n")
    rng = np.random.default_rng(len(split))
    for i in range(n):
        label = np.zeros((size, size), np.uint8)
        label[:, size // 2 :] = 1
        label[size // 2 :, : size // 2] = 2
        image = (np.eye(3)[label] * 200 + rng.integers(0, 40, (size, size, 3))).astype(np.uint8)
        Image.fromarray(image).save(base / "images" / f"{i:03d}.png")
        Image.fromarray(label).save(base / "labels" / f"{i:03d}.png")
    samples = [
        SampleRef(f"{i:03d}", base / "images" / f"{i:03d}.png", base / "labels" / f"{i:03d}.png")
        for i in range(n)
    ]
    return SegDataset("world", samples, [["red"], ["green"], ["blue"]], False)


def test_target_images(tmp_path):
    _world_like(tmp_path, "train", 5)
    refs, ds = target_images(TargetConfig(limit=3), tmp_path)
    assert [r.id for r in refs] == ["000", "001", "002"] and ds is not None
    assert ds[refs[1].index]["image"].shape == (32, 32, 3)
    refs, ds = target_images(TargetConfig(image_dir=str(tmp_path / "train" / "images")), None)
    assert len(refs) == 5 and ds is None and refs[0].index is None
    with pytest.raises(ValueError, match="root is empty"):
        target_images(TargetConfig(dataset="voc21"), tmp_path)
    (tmp_path / "empty" / "images").mkdir(parents=True)
    (tmp_path / "empty" / "classes.txt").write_text("red\n")
    with pytest.raises(FileNotFoundError, match="no target images"):
        target_images(TargetConfig(split="empty"), tmp_path)


def test_target_list_has_one_row_group_per_label_shard(tmp_path):
    """The list the labelling actors read their shard from: the refs of ``target_images`` in
    order, ``shard_size`` per row group, and the class names they prompt with."""
    from ovs.selftrain.pseudo_labels import write_target_list

    _world_like(tmp_path, "train", 5)
    out = tmp_path / "targets.parquet"
    listed = write_target_list(TargetConfig(), str(tmp_path), str(out), 2)
    assert listed == {"count": 5, "class_names": [["red"], ["green"], ["blue"]],
                      "has_background": False, "dataset_key": "world"}  # fmt: skip
    f = pq.ParquetFile(out)
    assert f.num_row_groups == 3 and [f.metadata.row_group(k).num_rows for k in range(3)] == [
        2,
        2,
        1,
    ]
    refs, _ = target_images(TargetConfig(), tmp_path)
    assert f.read_row_group(1).to_pylist() == [
        {"id": r.id, "path": r.path, "index": r.index} for r in refs[2:4]
    ]
    folder = TargetConfig(image_dir=str(tmp_path / "train" / "images"), eval_split="train")
    listed = write_target_list(folder, str(tmp_path), str(out), 4)
    assert listed["count"] == 5 and pq.read_table(out).column("index").null_count == 5


def test_pseudo_label_with_sseg(tmp_path):
    from ovs.eval.protocol import build_classifier

    ds = _world_like(tmp_path, "train", 1)
    torch.manual_seed(0)
    model = SSeg(SSegConfig()).eval()
    protocol = tiny()
    classifier = build_classifier(model, ds.class_names, False, protocol, "world")
    labels, conf = pseudo_label(model, ds[0]["image"], classifier, protocol)
    assert labels.shape == conf.shape == (32, 32) and labels.max() < 3
    assert conf.min() >= 255 // 3 - 1, "winning probability of 3 classes is at least 1/3"


# ----------------------------------------------------------------------------- evaluation


def test_predict_and_evaluate_closed(tmp_path):
    ds = _world_like(tmp_path, "eval", 3)
    model = build_segmenter(RESNET, 3, seed=0).eval()
    protocol = tiny()  # 32-px images, short side 64: resized up, one window
    pred = predict_closed(model, ds[0]["image"], protocol)
    x = torch.from_numpy(np.array(ds[0]["image"])).permute(2, 0, 1)[None].float() / 255
    up = F.interpolate(x, size=(64, 64), mode="bilinear", align_corners=False)
    ref = F.interpolate(model.probs(up), size=(32, 32), mode="bilinear", align_corners=False)
    np.testing.assert_array_equal(pred, ref.argmax(1)[0].numpy())
    res = evaluate_closed(model, ds, protocol)
    conf = sum(
        confusion_matrix(predict_closed(model, ds[i]["image"], protocol), ds[i]["label"], 3)
        for i in range(3)
    )
    assert res["miou"] == pytest.approx(summarize(conf)["miou"])
    assert res["num_images"] == 3
    with pytest.raises(ValueError, match="classes"):
        evaluate_closed(build_segmenter(RESNET, 4), ds, protocol)


# ----------------------------------------------------------------------------- training data


def test_load_rows_and_batches(tmp_path):
    ds = _world_like(tmp_path, "train", 4)
    rows = []
    for i in range(4):
        label = ds[i]["label"]
        conf = np.full(label.shape, 200, np.uint8)
        conf[:4] = 10  # low-confidence band -> ignored
        rows.append(
            {
                "key": ds.samples[i].id,
                "image_path": str(ds.samples[i].image),
                "label_png": png_bytes(label),
                "conf_png": png_bytes(conf),
                "gt_png": b"",
                "status": "ok",
            }
        )
    rows.append({**rows[0], "key": "bad", "status": "bad_image"})
    rows.append({**rows[0], "key": "gone", "image_path": str(tmp_path / "gone.png")})
    cols = list(rows[0])
    table = pa.table(
        {
            c: pa.array([r[c] for r in rows], pa.binary() if "png" in c else pa.string())
            for c in cols
        }
    )
    pq.write_table(table, tmp_path / "00000.parquet")
    loaded, counts = load_rows([tmp_path / "00000.parquet"], np.array([50, 50, 50]), True)
    assert counts == {"rows": 6, "used": 4, "skipped_status": 1, "skipped_image": 1}
    assert (loaded[0].label[:4] == 255).all() and (loaded[0].label[4:] < 3).all()
    rng = np.random.default_rng(0)
    it = batches(loaded, 3, AugmentConfig(size=16, scale=(0.5, 1.0)), rng)
    images, labels = next(it)
    assert images.shape == (3, 3, 16, 16) and labels.shape == (3, 16, 16)
    assert labels.dtype == torch.int64 and set(labels.unique().tolist()) <= {0, 1, 2, 255}


def test_streamed_rows_give_the_cached_rows_batches(tmp_path):
    """``cache_in_memory: false`` (labels in a ``LabelStore``, decoded per batch; two shards,
    one of two row groups) yields the same batches as the cached rows for the same seed."""
    ds = _world_like(tmp_path, "train", 7)
    rng = np.random.default_rng(1)
    files = []
    for shard, idx in enumerate([range(0, 4), range(4, 7)]):
        rows = []
        for i in idx:
            label = rng.integers(0, 3, ds[i]["label"].shape).astype(np.uint8)
            rows.append(
                {
                    "key": ds.samples[i].id,
                    "image_path": str(ds.samples[i].image),
                    "label_png": png_bytes(label),
                    "conf_png": png_bytes(rng.integers(0, 256, label.shape).astype(np.uint8)),
                    "status": "ok" if i != 5 else "bad_image",
                }
            )
        table = pa.table(
            {c: pa.array([r[c] for r in rows], pa.binary() if "png" in c else pa.string())
             for c in rows[0]}
        )  # fmt: skip
        files.append(tmp_path / f"{shard:05d}.parquet")
        pq.write_table(table, files[-1], row_group_size=2 if shard == 0 else None)
    assert pq.ParquetFile(files[0]).num_row_groups == 2
    thresholds = np.array([60, 120, 180])
    cached, c_counts = load_rows(files, thresholds, True)
    streamed, s_counts = load_rows(files, thresholds, False)
    assert c_counts == s_counts == {"rows": 7, "used": 6, "skipped_status": 1, "skipped_image": 0}
    assert all(r.label is None and r.image is None for r in streamed)
    assert [r.key for r in streamed] == [r.key for r in cached]
    for a, b in zip(cached, streamed, strict=True):
        np.testing.assert_array_equal(a.label_map(), b.label_map())
    aug = AugmentConfig(size=16, scale=(0.5, 1.0))
    one = batches(cached, 4, aug, np.random.default_rng(3))
    two = batches(streamed, 4, aug, np.random.default_rng(3))
    for _ in range(5):  # across an epoch boundary
        (ia, la), (ib, lb) = next(one), next(two)
        assert torch.equal(ia, ib) and torch.equal(la, lb)


def test_streamed_rows_hold_32_bytes_per_row(tmp_path):
    """``cache_in_memory: false`` keeps no Python object per row: 20,000 streamed rows (keys,
    paths and label pairs in the store's temp file) leave about 32 bytes each in RAM
    (tracemalloc), against ~500 for one ``LabelledRow`` with its key and path strings."""
    import tracemalloc

    label = png_bytes(np.zeros((8, 8), np.uint8))
    files = []
    for shard in range(2):
        n = 10_000
        table = pa.table(
            {
                "key": [f"{shard}{i:08d}" for i in range(n)],
                "image_path": [f"/data/coco/train2017/{shard}{i:011d}.jpg" for i in range(n)],
                "label_png": pa.array([label] * n, pa.binary()),
                "conf_png": pa.array([label] * n, pa.binary()),
                "status": ["ok"] * n,
            }
        )
        files.append(tmp_path / f"{shard:05d}.parquet")
        pq.write_table(table, files[-1])
    tracemalloc.start()
    try:
        rows, counts = load_rows(files, np.array([0]), False)
        held, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert counts["used"] == len(rows) == 20_000
    assert held < 20_000 * 64, f"{held / 20_000:.0f} bytes per row"
    assert rows[12_345].key == "100002345" and rows[-1].image_path.endswith("/100000009999.jpg")
    assert rows[3].label_map().shape == (8, 8)
    with pytest.raises(IndexError):
        rows[20_000]
