"""COCO-Object from instance JSON: RLE decoding, polygon rasterisation, class merging."""

import json

import numpy as np
from PIL import Image

from ovs.eval.coco_object import (
    RAW_TO_STUFF171,
    category_to_object_id,
    decode_rle,
    instances_to_object_labels,
    main,
    raw_to_object_lut,
    rle_string_to_counts,
)


def mask_to_counts(mask: np.ndarray) -> list[int]:
    """Reference RLE encoder: column-major runs, first run counts zeros."""
    flat = mask.T.ravel().astype(np.uint8)
    counts, cur, run = [], 0, 0
    for v in flat:
        if v != cur:
            counts.append(run)
            cur, run = v, 0
        run += 1
    counts.append(run)
    return counts


def counts_to_string(counts: list[int]) -> str:
    """pycocotools' rleToString, written out independently of the decoder under test."""
    out = []
    for i, x in enumerate(counts):
        if i > 2:
            x -= counts[i - 2]
        more = True
        while more:
            c = x & 0x1F
            x >>= 5
            more = (x != -1) if (c & 0x10) else (x != 0)
            if more:
                c |= 0x20
            out.append(chr(c + 48))
    return "".join(out)


def test_rle_roundtrip_random_masks():
    rng = np.random.default_rng(0)
    for h, w, p in [(7, 5, 0.5), (30, 40, 0.1), (13, 9, 0.9)]:
        mask = rng.random((h, w)) < p
        counts = mask_to_counts(mask)
        assert rle_string_to_counts(counts_to_string(counts)) == counts
        np.testing.assert_array_equal(decode_rle(counts, h, w), mask)
        np.testing.assert_array_equal(decode_rle(counts_to_string(counts), h, w), mask)


def test_luts_match_groupvit_table():
    # spot checks of GroupViT's clsID_to_trID table (before its +1 / stuff→0 step)
    for raw, train in [
        (0, 0),
        (10, 10),
        (12, 11),
        (26, 24),
        (30, 26),
        (45, 40),
        (66, 60),
        (69, 61),
        (71, 62),
        (83, 73),
        (89, 79),
        (91, 80),
        (181, 170),
    ]:
        assert RAW_TO_STUFF171[raw] == train
    obj = raw_to_object_lut()
    assert obj[0] == 1 and obj[89] == 80 and obj[91] == 0 and obj[255] == 0
    assert raw_to_object_lut("ignore")[255] == 255
    assert category_to_object_id(1) == 1 and category_to_object_id(90) == 80
    assert category_to_object_id(92) == 0 and category_to_object_id(12) == 255


def _instances():
    h, w = 10, 12
    small = np.zeros((h, w), bool)
    small[4:6, 5:7] = True
    return {
        "images": [{"id": 7, "file_name": "000000000007.jpg", "height": h, "width": w}],
        "categories": [{"id": 1, "name": "person"}, {"id": 3, "name": "car"}],
        "annotations": [
            # small car drawn on top of a big person although listed first
            {
                "image_id": 7,
                "category_id": 3,
                "area": 4.0,
                "iscrowd": 1,
                "segmentation": {"size": [h, w], "counts": counts_to_string(mask_to_counts(small))},
            },
            {
                "image_id": 7,
                "category_id": 1,
                "area": 48.0,
                "iscrowd": 0,
                "segmentation": [[2.0, 2.0, 9.0, 2.0, 9.0, 7.0, 2.0, 7.0]],
            },
            {
                "image_id": 7,
                "category_id": 92,
                "area": 100.0,
                "iscrowd": 0,  # stuff: ignored
                "segmentation": {"size": [h, w], "counts": [0, h * w]},
            },
        ],
    }


def test_instances_to_object_labels():
    label = instances_to_object_labels(_instances())[7]
    assert label.shape == (10, 12)
    assert (label[4:6, 5:7] == 3).all()  # car (category 3 → object id 3)
    assert label[3, 3] == 1 and label[6, 8] == 1  # inside the person polygon
    assert label[0, 0] == 0 and label[9, 11] == 0  # background, stuff not painted
    assert set(np.unique(label)) == {0, 1, 3}


def test_instances_cli(tmp_path, capsys):
    path = tmp_path / "instances_val2017.json"
    path.write_text(json.dumps(_instances()))
    out = tmp_path / "coco"
    assert main(["--instances", str(path), "--out", str(out)]) == 0
    png = out / "annotations" / "val2017" / "000000000007_instanceTrainIds.png"
    np.testing.assert_array_equal(
        np.asarray(Image.open(png)), instances_to_object_labels(_instances())[7]
    )
    assert '"written": 1' in capsys.readouterr().out
