"""Pseudo-mask generator: decoding, the batch masker, determinism, storage format, oracle mIoU."""

import io
import itertools

import numpy as np
import pytest
import torch
from PIL import Image

from ovs.codecs import decode_label_png, encode_label_png
from ovs.data import world
from ovs.pseudo_masks.device_decode import decode_resize
from ovs.pseudo_masks.masker import PseudoMaskConfig, PseudoMasker, smooth_labels, upsample_labels
from ovs.pseudo_masks.oracle import oracle_labels, oracle_miou, pseudo_mask_figure


def _jpeg(img: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="JPEG", quality=95)
    return buf.getvalue()


def _quadrants(size: int = 32, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A handmade image of 4 flat-coloured quadrants + its class map (classes 0..3)."""
    rng = np.random.default_rng(seed)
    label = np.zeros((size, size), np.uint8)
    half = size // 2
    label[:half, half:], label[half:, :half], label[half:, half:] = 1, 2, 3
    colours = rng.integers(0, 256, (4, 3))
    return colours[label].astype(np.uint8), label


# ----------------------------------------------------------------------------- decoding / PNG


def test_decode_resize_and_corrupt_inputs():
    img, _ = _quadrants(40)
    data = _jpeg(img)
    out = decode_resize(data, 32)
    assert out.shape == (32, 32, 3) and out.dtype == np.uint8
    assert decode_resize(data, 40).astype(int).__sub__(img).__abs__().mean() < 4
    for bad in (None, b"", b"not an image", data[: len(data) // 2], b"\xff\xd8\xff" + b"\0" * 64):
        assert decode_resize(bad, 32) is None


def test_label_png_roundtrip_and_upsampling():
    label = np.random.default_rng(0).integers(0, 8, (7, 5)).astype(np.uint8)
    assert np.array_equal(decode_label_png(encode_label_png(label)), label)
    up = upsample_labels(label, (28, 20))
    ref = torch.nn.functional.interpolate(
        torch.from_numpy(label)[None, None].float(), size=(28, 20), mode="nearest-exact"
    )[0, 0].numpy()
    assert np.array_equal(up, ref)
    up_odd = upsample_labels(label, (10, 9))  # non-integer factors
    ref_odd = torch.nn.functional.interpolate(
        torch.from_numpy(label)[None, None].float(), size=(10, 9), mode="nearest-exact"
    )[0, 0].numpy()
    assert np.array_equal(up_odd, ref_odd)


def test_smooth_labels_removes_isolated_pixels():
    lab = torch.zeros(1, 9, 9, dtype=torch.long)
    lab[0, 4, 4] = 1  # one stray pixel
    lab[0, :, 7:] = 2  # a real region
    out = smooth_labels(lab, 3, 3)
    assert out[0, 4, 4] == 0 and torch.all(out[0, :, 7:] == 2)


# ----------------------------------------------------------------------------- masker


def _masker(**kw) -> PseudoMasker:
    return PseudoMasker(PseudoMaskConfig(**{"image_size": 32, "k": 4, **kw}), device="cpu")


def test_masker_pixels_on_quadrants_is_perfect():
    imgs, labels = zip(*[_quadrants(32, s) for s in range(3)], strict=True)
    out = _masker()({"key": ["a", "b", "c"], "image": np.stack(imgs)})
    assert list(out["status"]) == ["ok"] * 3
    assert list(out["grid_h"]) == [32] * 3 and list(out["k"]) == [4] * 3
    maps = [decode_label_png(b) for b in out["label_png"]]
    assert all(m.shape == (32, 32) and m.max() < 4 for m in maps)
    assert oracle_miou(maps, list(labels), num_classes=4) == pytest.approx(1.0)


def test_corrupt_images_are_skipped_and_counted():
    img, _ = _quadrants(48)
    good = _jpeg(img)
    masker = _masker()
    out = masker({"key": ["0", "1", "2", "3"], "jpg": [good, b"garbage", good[:100], good]})
    assert list(out["status"]) == ["ok", "decode_error", "decode_error", "ok"]
    assert out["label_png"][1] == b"" and out["grid_h"][1] == 0
    assert decode_label_png(out["label_png"][3]).shape == (32, 32)
    out = masker({"key": ["4", "5", "6"], "image": [img, None, img.astype(np.float32)]})
    assert list(out["status"]) == ["ok", "bad_image", "bad_image"]
    assert masker.counts == {"ok": 3, "decode_error": 2, "bad_image": 2}
    out = masker({"key": ["7"], "jpg": [b"x"]})  # a batch with nothing decodable
    assert list(out["status"]) == ["decode_error"] and out["grid_h"][0] == 0


def test_same_seed_same_label_maps():
    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
    keys = ["k0", "k1", "k2", "k3"]
    a = _masker(seed=7)({"key": keys, "image": imgs})
    b = _masker(seed=7, batch_size=3)({"key": keys, "image": imgs})  # other batching
    assert list(a["label_png"]) == list(b["label_png"])
    c = _masker(seed=8)({"key": keys, "image": imgs})
    assert list(a["label_png"]) != list(c["label_png"])
    rev = _masker(seed=7)({"key": keys[::-1], "image": imgs[::-1]})  # seed follows the key
    assert list(rev["label_png"])[::-1] == list(a["label_png"])


def test_same_seed_same_label_maps_dino():
    imgs = np.random.default_rng(1).integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    # batch_size 2: oneDNN Graph (auto on CPU) runs fixed batches, the default 64 would pad the
    # 3 images to 64 in every traced and warm-up call; 2 still pads the last batch.
    cfg = dict(extractor="dino_vits8", random_init=True, seed=5, batch_size=2)
    # Two maskers built separately: same (seeded) random weights, same K-means seeds.
    a = _masker(**cfg)({"key": ["a", "b", "c"], "image": imgs})
    b = _masker(**cfg)({"key": ["a", "b", "c"], "image": imgs})
    assert list(a["grid_h"]) == [4, 4, 4]
    assert list(a["label_png"]) == list(b["label_png"])


def test_dino_vits8_masker_224_random_init():
    # batch_size 1: oneDNN Graph traces and warms up one image, not two, at 784 tokens.
    cfg = dict(extractor="dino_vits8", random_init=True, image_size=224, k=8, batch_size=1)
    with pytest.raises(ValueError):  # random weights are never silent
        PseudoMasker(PseudoMaskConfig(**{**cfg, "random_init": False, "pretrained": False}))
    masker = PseudoMasker(PseudoMaskConfig(**cfg), device="cpu")
    assert masker.metric == "cosine"
    imgs = np.stack([_quadrants(64, s)[0] for s in range(2)])  # resized to 224 by the masker
    out = masker({"key": ["x", "y"], "image": imgs})
    assert list(out["grid_h"]) == [28, 28] and list(out["grid_w"]) == [28, 28]
    maps = [decode_label_png(b) for b in out["label_png"]]
    assert all(m.shape == (28, 28) and m.max() < 8 for m in maps)


# ----------------------------------------------------------------------------- oracle mIoU


def _oracle_reference(pseudo, gts, num_classes, ignore=255):
    """Plain loops: majority label per segment, then per-class IoU over the whole set."""
    inter = [0] * num_classes
    union = [0] * num_classes
    for seg, gt in zip(pseudo, gts, strict=True):
        seg = upsample_labels(seg, gt.shape)
        mapped = {}
        for s in set(seg.ravel().tolist()):
            votes = {}
            for y, x in itertools.product(range(gt.shape[0]), range(gt.shape[1])):
                if seg[y, x] == s and gt[y, x] != ignore:
                    votes[int(gt[y, x])] = votes.get(int(gt[y, x]), 0) + 1
            # ties -> smallest class id (as argmax)
            mapped[s] = min(votes, key=lambda c: (-votes[c], c)) if votes else ignore
        for c in range(num_classes):
            for y, x in itertools.product(range(gt.shape[0]), range(gt.shape[1])):
                if gt[y, x] == ignore:
                    continue
                p, g = mapped[seg[y, x]] == c, gt[y, x] == c
                inter[c] += p and g
                union[c] += p or g
    ious = [i / u for i, u in zip(inter, union, strict=True) if u > 0]
    return sum(ious) / len(ious)


def test_oracle_miou_matches_loop_reference():
    rng = np.random.default_rng(0)
    gts, pseudo = [], []
    for _ in range(4):
        gt = rng.integers(0, 5, (12, 12)).astype(np.uint8)
        gt[rng.random((12, 12)) < 0.1] = 255
        gts.append(gt)
        pseudo.append(rng.integers(0, 6, (6, 6)).astype(np.uint8))  # coarser grid, upsampled
    ours = oracle_miou(pseudo, gts, num_classes=5)
    assert ours == pytest.approx(_oracle_reference(pseudo, gts, 5))
    assert 0.0 < ours < 1.0


def test_oracle_miou_handmade_cases():
    _, gt = _quadrants(8)
    assert oracle_miou([gt.copy()], [gt], 4) == 1.0  # perfect segments
    one = np.zeros((8, 8), np.uint8)  # one segment -> everything gets the majority (0 wins ties)
    assert oracle_miou([one], [gt], 4) == pytest.approx((16 / 64) / 4)
    halves = np.zeros((8, 8), np.uint8)
    halves[4:] = 1  # top: classes 0/1 -> 0; bottom: 2/3 -> 2
    assert oracle_miou([halves], [gt], 4) == pytest.approx((0.5 + 0.5) / 4)
    ignored = gt.copy()
    ignored[:4, :4] = 255  # a segment that only covers void maps to void
    assert oracle_labels(gt, ignored, 4)[0, 0] == 255
    assert oracle_miou([gt], [ignored], 4) == 1.0


def _oracle_miou_before_refactor(pseudo_labels, gt_labels, num_classes, ignore=255):
    """The pre-ovs.eval.metrics arithmetic of oracle_miou (issue 13): numpy confusion and the
    mean over the present classes as one compact array. The stage's golden figure must not
    move by a bit."""
    conf = np.zeros((num_classes, num_classes), dtype=np.int64)
    for pseudo, gt in zip(pseudo_labels, gt_labels, strict=True):
        pred = oracle_labels(pseudo, gt, num_classes, ignore)
        valid = (gt != ignore) & (gt < num_classes) & (pred < num_classes)
        idx = gt[valid].astype(np.int64) * num_classes + pred[valid].astype(np.int64)
        conf += np.bincount(idx, minlength=num_classes**2).reshape(num_classes, num_classes)
    tp = np.diag(conf).astype(np.float64)
    union = conf.sum(0) + conf.sum(1) - tp
    present = union > 0
    return float((tp[present] / union[present]).mean()) if present.any() else float("nan")


def test_oracle_miou_is_bit_identical_to_the_pre_refactor_arithmetic():
    rng = np.random.default_rng(7)
    for trial in range(40):
        c = int(rng.integers(2, 40))
        present = rng.choice(c, size=int(rng.integers(1, c + 1)), replace=False)  # absent classes
        gts, pseudo = [], []
        for _ in range(3):
            gt = rng.choice(present, (16, 16)).astype(np.uint8)
            gt[rng.random((16, 16)) < 0.1] = 255
            if trial % 4 == 0:
                gt[0, :3] = c + 1  # ids >= C are left out like void
            gts.append(gt)
            pseudo.append(rng.integers(0, 8, (8, 8)).astype(np.uint8))
        assert oracle_miou(pseudo, gts, c) == _oracle_miou_before_refactor(pseudo, gts, c)


def test_oracle_on_world_images_beats_random_segments():
    wcfg = world.WorldConfig(image_size=32)
    samples = [world.render(wcfg, i, "eval")[:2] for i in range(6)]
    imgs = np.stack([s[0] for s in samples])
    gts = [s[1] for s in samples]
    out = _masker(k=8)({"key": [str(i) for i in range(6)], "image": imgs})
    maps = [decode_label_png(b) for b in out["label_png"]]
    ours = oracle_miou(maps, gts, num_classes=16)
    rng = np.random.default_rng(0)
    rand = oracle_miou([rng.integers(0, 8, (32, 32)) for _ in gts], gts, num_classes=16)
    assert ours > 0.6 and ours > rand + 0.3

    fig = pseudo_mask_figure(list(imgs), maps, gts, num_classes=16, max_rows=4)
    assert len(fig.axes) == 16
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    assert buf.getvalue()[:4] == b"\x89PNG"


# ----------------------------------------------------------------------------- precision


def test_autocast_auto_follows_the_hardware(monkeypatch):
    """``autocast: auto`` (the default) is bf16 only where it is native; the runtime follows."""
    from ovs import precision

    assert PseudoMaskConfig().autocast == "auto"
    with pytest.raises(ValueError, match="autocast must be one of"):
        PseudoMasker(PseudoMaskConfig(autocast="bf16"), device="cpu")
    vit = dict(extractor="dino_vits8", random_init=True, image_size=32, batch_size=2)
    for native in (True, False):
        monkeypatch.setattr(precision, "cpu_native_bf16", lambda native=native: native)
        pixels = PseudoMasker(PseudoMaskConfig(), device="cpu")
        assert pixels.autocast_dtype == (torch.bfloat16 if native else None)
        assert pixels.runtime == "eager"
        masker = PseudoMasker(PseudoMaskConfig(**vit), device="cpu")
        assert masker.autocast_dtype == (torch.bfloat16 if native else None)
        assert masker.runtime == "onednn_graph"  # fuses bf16 where native, fp32 elsewhere
        # An explicit bf16 on a CPU without native bf16 cannot be fused: eager.
        forced = PseudoMasker(PseudoMaskConfig(**vit, autocast="bfloat16"), device="cpu")
        assert forced.autocast_dtype == torch.bfloat16
        assert forced.runtime == ("onednn_graph" if native else "eager")


def test_autocast_auto_real_behaviour_on_this_machine():
    """Unpatched: auto resolves to this CPU's answer and computes exactly what that dtype
    computes when named explicitly."""
    from ovs import precision

    resolved = precision.resolve_dtype("auto", torch.device("cpu"))
    name = "bfloat16" if resolved == torch.bfloat16 else "float32"
    imgs = np.random.default_rng(3).integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
    cfg = dict(extractor="dino_vits8", random_init=True, image_size=32, batch_size=2, seed=1)
    auto = PseudoMasker(PseudoMaskConfig(**cfg), device="cpu")
    named = PseudoMasker(PseudoMaskConfig(**cfg, autocast=name), device="cpu")
    assert auto.autocast_dtype == resolved and auto.runtime == named.runtime
    fa, _ = auto.features(imgs)
    fn, _ = named.features(imgs)
    assert fa.dtype == (resolved or torch.float32)
    torch.testing.assert_close(fa, fn, rtol=0, atol=0)


def test_bench_says_what_the_machine_supports_and_which_dtype_ran(capsys):
    import json

    from ovs import precision
    from tools.bench.pseudo_masks import main

    tiny = ["--image-size", "32", "--batch-size", "2", "--naive-images", "1", "--device", "cpu"]
    assert main([*tiny, "--rounds", "1", "--gemm-size", "64", "--jpeg-size", "32"]) == 0
    line = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    cpu = torch.device("cpu")
    resolved = precision.resolve_dtype("auto", cpu)
    assert line["autocast"] == "auto" and line["precision"] == precision.describe(cpu)
    assert line["dtype"] == line["gemm_dtype"] == str(resolved or torch.float32)[6:]
    assert line["img_per_s"] > 0
