"""OVSeg mask-category pairs (ovs.pairs.maker, ovs.pairs.precision) against plain references."""

from __future__ import annotations

import io
import json
import math
import tarfile
from collections import Counter

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from ovs.codecs import encode_label_png
from ovs.methods import METHODS
from ovs.pairs.maker import (
    PAIRS_SCHEMA,
    ClipScorer,
    DenseScorer,
    PairMaker,
    PairsConfig,
    candidate_masks,
    clean_nouns,
    masked_crop,
    select_pairs,
    shard_counts,
)
from ovs.pairs.precision import (
    GalleryItem,
    mask_majority,
    noun_classes,
    outline,
    pairs_gallery,
    precision_curve,
    precision_metrics,
    score_sample,
)
from pipelines.graph import load_config

CPU = torch.device("cpu")


def _tiny_sseg(size: int = 32):
    cfg = load_config(None, [f"train.sseg.model.input_size={size}"]).train
    spec = METHODS["sseg"]
    return spec.build_model(cfg.method_config, 0, None).eval()


# ----------------------------------------------------------------------------- preprocessing


def _reference_crop(image, mask, fill):
    """Plain loops: tight box, outside-mask pixels = fill, centred on a fill square."""
    rows = [y for y in range(mask.shape[0]) if mask[y].any()]
    cols = [x for x in range(mask.shape[1]) if mask[:, x].any()]
    y0, y1, x0, x1 = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
    h, w = y1 - y0, x1 - x0
    side = max(h, w)
    top, left = (side - h) // 2, (side - w) // 2
    out = np.zeros((3, side, side), np.float32)
    for y in range(side):
        for x in range(side):
            sy, sx = y - top + y0, x - left + x0
            inside = 0 <= y - top < h and 0 <= x - left < w and mask[sy, sx]
            for c in range(3):
                out[c, y, x] = image[sy, sx, c] / 255.0 if inside else fill[c]
    return torch.from_numpy(out)


def test_masked_crop_matches_plain_reference():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (9, 11, 3), dtype=np.uint8)
    mask = np.zeros((9, 11), bool)
    mask[2:5, 3:9] = True  # wide box 3 x 6 -> padded top/bottom
    mask[2, 3] = False  # a hole inside the box gets the fill colour
    fill = (0.25, 0.5, 0.75)
    ref = _reference_crop(image, mask, fill)
    got = masked_crop(image, mask, 6, fill)
    assert got.shape == (3, 6, 6)
    torch.testing.assert_close(got, ref)
    assert torch.allclose(got[:, 0, :], torch.tensor(fill).view(3, 1))  # padding row
    assert torch.allclose(got[:, 1, 0], torch.tensor(fill))  # the hole
    # Tall mask: padded left/right; resizing is bilinear on the padded square.
    tall = np.zeros((9, 11), bool)
    tall[1:8, 5:7] = True
    ref = _reference_crop(image, tall, fill)
    assert torch.allclose(masked_crop(image, tall, 7, fill), ref)
    up = F.interpolate(ref[None], size=(14, 14), mode="bilinear", align_corners=False)[0]
    torch.testing.assert_close(masked_crop(image, tall, 14, fill), up)
    with pytest.raises(ValueError, match="empty"):
        masked_crop(image, np.zeros((9, 11), bool), 4, fill)


def test_fill_colour_normalises_to_zero_in_clip_scorer():
    scorer = ClipScorer("tiny", None, CPU)
    image = np.full((16, 16, 3), 200, np.uint8)
    mask = np.zeros((16, 16), bool)
    mask[4:12, 6:10] = True
    crop = masked_crop(image, mask, scorer.size, scorer.mean)[None]
    x = (crop - scorer._mean) / scorer._std
    assert torch.allclose(x[0, :, :, :2], torch.zeros(1))  # padded columns
    assert (x[0, :, 20:40, 20:40] > 0.5).all()  # the mask's pixels


def test_clip_mask_embeddings_are_crops_through_the_image_tower():
    torch.manual_seed(0)
    scorer = ClipScorer("tiny", None, CPU)
    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
    grid = np.zeros((4, 4), np.uint8)
    grid[:2] = 1
    grid[3, 3] = 2
    out = scorer.mask_embeddings([image], [grid], [np.array([1, 2])])[0]
    assert out.shape == (2, 64)
    full = np.kron(grid, np.ones((4, 4), np.uint8))
    want = scorer.encode_crops(masked_crop(image, full == 2, scorer.size, scorer.mean)[None])[0]
    torch.testing.assert_close(out[1], want)
    assert torch.allclose(out.norm(dim=-1), torch.ones(2))


def test_sseg_mask_embeddings_match_per_pixel_reference():
    torch.manual_seed(0)
    model = _tiny_sseg()
    images = torch.rand(2, 3, 32, 32)
    labels = torch.randint(0, 3, (2, 32, 32))
    labels[1][labels[1] == 2] = 0  # segment 2 empty in image 1
    got = model.mask_embeddings(images, labels, 3)
    with torch.no_grad():
        logits, feats = model(images)  # [B,N,8,8], [B,N,E] normalised
    probs = F.interpolate(logits, size=(32, 32), mode="bilinear").sigmoid()
    for b in range(2):
        for k in range(3):
            pix = [(y, x) for y in range(32) for x in range(32) if labels[b, y, x] == k]
            if not pix:
                assert torch.all(got[b, k] == 0)
                continue
            acc = torch.zeros(feats.shape[-1])
            for y, x in pix:  # e(x) = sum_q r_q(x) f_q, summed over the segment
                r = probs[b, :, y, x]
                acc += (r / r.sum()) @ feats[b]
            torch.testing.assert_close(got[b, k], F.normalize(acc, dim=0), atol=1e-5, rtol=1e-4)
    # Sides that are not multiples of 32 are padded and still give unit rows.
    odd = model.mask_embeddings(torch.rand(1, 3, 40, 36), torch.zeros(1, 40, 36).long(), 1)
    assert torch.allclose(odd.norm(dim=-1), torch.ones(1))


# ----------------------------------------------------------------------------- selection


def test_clean_nouns():
    got = clean_nouns(["Cat", "cat", "#travel", "x", "12", None, "sky", "grass"], 3)
    assert got == ["cat", "travel", "sky"]
    assert clean_nouns(None, 4) == []


def test_candidate_masks():
    label = np.array([[0, 0, 1, 1], [0, 0, 1, 3], [0, 0, 1, 1], [0, 0, 0, 0]], np.uint8)
    ids, areas = candidate_masks(label, 5, 0.0)
    assert ids.tolist() == [0, 1, 3] and np.allclose(areas, [10 / 16, 5 / 16, 1 / 16])
    ids, _ = candidate_masks(label, 5, 0.1)
    assert ids.tolist() == [0, 1]


def test_select_best_mask_per_noun_with_threshold():
    scores = np.array(
        [
            [0.1, 0.5, 0.3],  # -> mask 7 (0.5)
            [0.2, 0.2, 0.1],  # tie -> first (mask 2), 0.2 < threshold 0.25 -> dropped
            [0.9, math.nan, 0.95],  # NaN never chosen -> mask 9
            [math.nan, math.nan, math.nan],  # nothing scorable -> dropped
        ]
    )
    ids, areas = np.array([2, 7, 9]), np.array([0.5, 0.3, 0.2])
    got = select_pairs(scores, ["cat", "dog", "sky", "bus"], ids, areas, threshold=0.25)
    assert got == [("cat", 7, 0.5, 0.3), ("sky", 9, 0.95, 0.2)]
    got = select_pairs(scores, ["cat", "dog", "sky", "bus"], ids, areas, threshold=-1.0)
    assert [g[:2] for g in got] == [("cat", 7), ("dog", 2), ("sky", 9)]
    with pytest.raises(ValueError):
        select_pairs(scores[:, :2], ["a", "b", "c", "d"], ids, areas, 0.0)


# ----------------------------------------------------------------------------- precision


def test_noun_classes_synonyms_and_plurals():
    table = noun_classes([["person", "man", "people"], ["sky", "clouds"], ["bus", "coach"]])
    assert table["people"] == table["persons"] == table["man"] == 0
    assert table["skies"] == table["clouds"] == table["cloud"] == 1  # lemma of a plural synonym
    assert table["buses"] == table["coaches"] == 2
    assert "photo" not in table


def test_pair_precision_hand_computed():
    # GT 4x4: class 0 top half, class 1 bottom-left, class 2 bottom-right (one void pixel).
    gt = np.array([[0, 0, 0, 0], [0, 0, 0, 0], [1, 1, 2, 2], [1, 1, 2, 255]], np.uint8)
    # Pseudo-mask grid 2x2 -> upsampled 2x: segment 0 = top-left quarter, 1 = top-right,
    # 2 = bottom-left, 3 = bottom-right.
    grid = np.array([[0, 1], [2, 3]], np.uint8)
    assert mask_majority(grid, gt, 5).tolist() == [0, 0, 1, 2, -1]
    noun_to_class = {"sky": 0, "dog": 1, "cat": 2, "cow": 3}
    pairs = [("sky", 1), ("dog", 3), ("cat", 3), ("cow", 0), ("photo", 2)]
    stats, hits = score_sample(pairs, grid, 4, gt, noun_to_class, 0.0)
    assert hits == [True, False, True, False, None]
    assert stats["class_pairs"] == 4 and stats["other_pairs"] == 1
    assert stats["correct"] == 2
    assert stats["present"] == 3 and stats["correct_present"] == 2  # cow is absent
    # Largest mask: all four are 4 px -> the first, segment 0 (class 0): only "sky" right.
    assert stats["largest_correct"] == 1
    # Random: sky 2/4, dog 1/4, cat 1/4, cow 0/4.
    assert stats["random_correct"] == pytest.approx(1.0)
    assert stats["oracle_correct"] == 3
    m = precision_metrics(stats)
    assert m["pair_precision"] == pytest.approx(0.5)
    assert m["pair_precision_present"] == pytest.approx(2 / 3)
    assert m["pair_precision_largest"] == pytest.approx(0.25)
    assert m["pair_precision_random"] == pytest.approx(0.25)
    assert m["pair_precision_oracle"] == pytest.approx(0.75)
    assert m["class_noun_fraction"] == pytest.approx(0.8)
    assert math.isnan(precision_metrics({})["pair_precision"])


def test_precision_curve():
    curve = precision_curve([0.1, 0.2, 0.3, 0.4], [False, False, True, True], num=2)
    assert curve["precision"][0] == pytest.approx(0.5) and curve["kept"][0] == 1.0
    assert curve["precision"][1] == 1.0 and curve["kept"][1] == 0.25


def test_gallery_outline_and_figure():
    mask = np.zeros((6, 6), bool)
    mask[1:5, 1:5] = True
    edge = outline(mask)
    assert edge.sum() == 12 and not edge[2:4, 2:4].any()
    image = np.zeros((6, 6, 3), np.uint8)
    fig = pairs_gallery([GalleryItem(image, mask, "cat", 0.5, True)] * 3)
    assert len(fig.axes) == 3


# ----------------------------------------------------------------------------- one shard


def _jpg(rgb: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="JPEG", quality=95)
    return buf.getvalue()


def _write_shard(tmp_path):
    """A shard of 7 samples: 3 good, then one per failure mode."""
    rng = np.random.default_rng(0)
    keys = [f"{i:09d}" for i in range(7)]
    grid = np.zeros((8, 8), np.uint8)
    grid[:4] = 1
    grid[6:, 6:] = 2  # 4 of 64 cells
    tar_path = tmp_path / "00000.tar"
    with tarfile.open(tar_path, "w") as tar:
        for i, key in enumerate(keys):
            img = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
            data = b"not a jpeg" if i == 3 else _jpg(img)
            for ext, payload in (("jpg", data), ("json", json.dumps({"id": key}).encode())):
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(payload)
                tar.addfile(info, io.BytesIO(payload))
    png = encode_label_png(grid)
    masks = {
        "key": keys[:4] + keys[5:],  # key 4: no pseudo-mask row
        "label_png": [png] * 5 + [b""],
        "k": [3] * 6,
        "status": ["ok"] * 5 + ["decode_error"],  # key 6: failed upstream
    }
    pq.write_table(pa.table(masks), tmp_path / "masks.parquet")
    nouns = [["cat", "sky"], ["dog"], ["grass", "cow", "photo"], ["cat"], ["cat"], [], ["cat"]]
    ents = {
        "key": keys,
        "nouns": nouns,  # key 5: no nouns
        "status": ["ok"] * 7,
    }
    pq.write_table(pa.table(ents), tmp_path / "ents.parquet")
    return tar_path


@pytest.mark.parametrize("scorer_name", ["sseg", "clip"])
def test_pair_shard_skips_and_counts_bad_samples(tmp_path, scorer_name):
    tar = _write_shard(tmp_path)
    torch.manual_seed(0)
    cfg = PairsConfig(scorer=scorer_name, threshold=-1.0, image_size=32, min_mask_area=0.1)
    if scorer_name == "sseg":
        scorer = DenseScorer(_tiny_sseg(), 32, CPU)
    else:
        scorer = ClipScorer("tiny", None, CPU)
    maker = PairMaker(cfg, scorer)
    table, counts = maker.shard(tar, tmp_path / "masks.parquet", tmp_path / "ents.parquet")
    assert table.schema.remove_metadata() == PAIRS_SCHEMA
    assert counts["samples"] == 7
    assert counts["skipped_bad_image"] == 1
    assert counts["skipped_no_pseudo_mask"] == 2
    assert counts["skipped_no_nouns"] == 1
    assert counts["nouns_scored"] == 6 and counts["pairs"] == 6  # threshold -1 keeps all
    assert counts["paired_samples"] == 3
    rows = table.to_pylist()
    assert {r["key"] for r in rows} == {"000000000", "000000001", "000000002"}
    assert [r["noun"] for r in rows] == ["cat", "sky", "dog", "grass", "cow", "photo"]
    assert {r["mask_id"] for r in rows} <= {0, 1}  # mask 2 is below min_mask_area
    for r in rows:
        assert r["mask_area"] == pytest.approx(0.5 if r["mask_id"] == 1 else 28 / 64)
    # Each pair really is its noun's best mask.
    emb = maker.noun_embeddings(["cat"])
    image = np.asarray(Image.open(io.BytesIO(_first_jpg(tar))).convert("RGB"))
    grid = np.zeros((8, 8), np.uint8)
    grid[:4] = 1
    grid[6:, 6:] = 2
    m = scorer.mask_embeddings([image], [grid], [np.array([0, 1])])[0]
    scores = (emb @ m.T)[0]
    assert rows[0]["mask_id"] == int(scores.argmax())
    assert rows[0]["score"] == pytest.approx(float(scores.max()), abs=1e-5)
    out = tmp_path / "out.parquet"
    pq.write_table(table, out)
    assert shard_counts(out) == counts  # the counts travel in the parquet metadata
    assert pq.read_table(out).num_rows == 6
    # A threshold above every cosine keeps nothing, and says so.
    strict = PairMaker(PairsConfig(scorer=scorer_name, threshold=1.01, image_size=32), scorer)
    table, counts = strict.shard(tar, tmp_path / "masks.parquet", tmp_path / "ents.parquet")
    assert table.num_rows == 0 and counts["below_threshold"] == counts["nouns_scored"] == 6


def _first_jpg(tar_path) -> bytes:
    with tarfile.open(tar_path) as tar:
        f = tar.extractfile("000000000.jpg")
        assert f is not None
        return f.read()


def test_pair_shard_missing_upstream_files_count_every_sample(tmp_path):
    tar = _write_shard(tmp_path)
    maker = PairMaker(PairsConfig(image_size=32), DenseScorer(_tiny_sseg(), 32, CPU))
    table, counts = maker.shard(tar, tmp_path / "nope.parquet", tmp_path / "ents.parquet")
    assert table.num_rows == 0
    assert Counter(counts)["skipped_no_pseudo_mask"] == counts["samples"] == 7


def test_config_validation():
    with pytest.raises(ValueError, match="pairs.scorer"):
        PairMaker(PairsConfig(scorer="nope"), DenseScorer(_tiny_sseg(), 32, CPU))
    with pytest.raises(ValueError, match="noun_column"):
        PairMaker(PairsConfig(noun_column="text"), DenseScorer(_tiny_sseg(), 32, CPU))


def test_binned_precision_curve_matches_the_exact_one_at_its_thresholds():
    """The stage's curve from per-shard histograms (two fixed arrays per shard, summed): each
    threshold within one bin below the score at the quantile's rank and never above the exact
    quantile; precision and kept equal the exact computation at that threshold; the sum of two
    shards' histograms gives the curve of their pairs together."""
    from ovs.pairs.precision import precision_curve_binned, score_histograms

    rng = np.random.default_rng(0)
    scores = rng.uniform(-0.2, 0.9, 3001).astype(np.float32)
    hits = rng.random(3001) < (scores + 0.2) / 1.1  # higher scores are right more often
    a, b = (
        score_histograms(scores[:1000], hits[:1000]),
        score_histograms(scores[1000:], hits[1000:]),
    )
    curve = precision_curve_binned(a[0] + b[0], a[1] + b[1])
    exact = precision_curve(scores.tolist(), hits.tolist())
    s = np.sort(scores.astype(np.float64))
    for q, t, t_exact, p, kept in zip(
        np.linspace(0, 0.95, 11), curve["threshold"], exact["threshold"], curve["precision"],
        curve["kept"], strict=True,
    ):  # fmt: skip
        low = s[int(np.floor(q * (len(s) - 1)))]
        assert low - 0.001 - 1e-12 <= t <= t_exact + 1e-12
        keep = scores.astype(np.float64) >= t
        assert p == pytest.approx(hits[keep].mean()) and kept == pytest.approx(keep.mean())
    assert curve["precision"][-1] > curve["precision"][0]
    assert precision_curve_binned(*score_histograms([], [])) == {
        "threshold": [], "precision": [], "kept": []
    }  # fmt: skip
