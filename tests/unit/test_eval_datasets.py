"""Dataset loaders on tiny fixtures written in each real on-disk format."""

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ovs.eval.datasets import build_dataset
from ovs.eval.names import load_class_names
from ovs.eval.visualize import make_palette

H, W = 6, 8


def write_rgb(path: Path, seed: int = 0, suffix_fmt: str | None = None) -> np.ndarray:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = np.random.default_rng(seed).integers(0, 256, (H, W, 3), dtype=np.uint8)
    Image.fromarray(img).save(path, format=suffix_fmt)
    return img


def write_label(path: Path, label: np.ndarray, palette: bool = False) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    im = Image.fromarray(label.astype(np.uint8))
    if palette:  # VOC SegmentationClass files are palette ("P") PNGs
        im.putpalette(make_palette(256).ravel().tolist())
    im.save(path)


def label_with(values: list[int]) -> np.ndarray:
    return np.resize(np.array(values, dtype=np.uint8), (H, W))


def test_voc21_and_voc20(tmp_path):
    base = tmp_path / "VOCdevkit" / "VOC2012"
    lab = label_with([0, 1, 15, 20, 255, 0])
    img = write_rgb(base / "JPEGImages" / "2007_000032.jpg")
    write_label(base / "SegmentationClass" / "2007_000032.png", lab, palette=True)
    assert Image.open(base / "SegmentationClass" / "2007_000032.png").mode == "P"
    split = base / "ImageSets" / "Segmentation" / "val.txt"
    split.parent.mkdir(parents=True)
    split.write_text("2007_000032\n2007_999999\n")  # second one missing on disk

    voc21 = build_dataset("voc21", tmp_path)  # root = parent of VOCdevkit
    assert len(voc21) == 1 and voc21.missing == 1
    assert voc21.num_classes == 21 and voc21.has_background
    s = voc21[0]
    assert s["id"] == "2007_000032" and s["image"].shape == img.shape
    np.testing.assert_array_equal(s["label"], lab)

    voc20 = build_dataset("voc20", base)  # root = VOC2012 itself
    assert voc20.num_classes == 20 and not voc20.has_background
    expected = np.where(lab == 0, 255, np.where(lab == 255, 255, lab - 1))
    np.testing.assert_array_equal(voc20[0]["label"], expected)
    assert voc20.canonical_names[0] == "aeroplane"


def test_context60_and_59(tmp_path):
    base = tmp_path / "VOC2010"
    lab = label_with([0, 1, 59, 30, 255])
    write_rgb(base / "JPEGImages" / "2008_000002.jpg")
    write_label(base / "SegmentationClassContext" / "2008_000002.png", lab)
    split = base / "ImageSets" / "SegmentationContext" / "val.txt"
    split.parent.mkdir(parents=True)
    split.write_text("2008_000002\n")
    c60 = build_dataset("context60", tmp_path)
    assert c60.num_classes == 60 and c60.has_background
    np.testing.assert_array_equal(c60[0]["label"], lab)
    c59 = build_dataset("context59", base)
    assert c59.num_classes == 59 and not c59.has_background
    out = c59[0]["label"]
    np.testing.assert_array_equal(out, np.where((lab == 0) | (lab == 255), 255, lab - 1))
    assert out.max() == 255 and set(np.unique(out)) == {0, 29, 58, 255}


def _coco_fixture(root: Path) -> np.ndarray:
    # raw stuffthingmap: value = category id - 1; 0 person, 2 car, 11 unused id, 91 first
    # stuff ("banner"), 181 last stuff ("wood"), 255 unlabeled
    raw = label_with([0, 2, 11, 91, 181, 255, 89])
    write_rgb(root / "images" / "val2017" / "000000000139.jpg")
    write_label(root / "annotations" / "val2017" / "000000000139.png", raw)
    return raw


def test_coco_stuff171_and_object_from_raw(tmp_path):
    root = tmp_path / "coco_stuff164k"
    raw = _coco_fixture(root)
    stuff = build_dataset("coco_stuff171", tmp_path)
    assert stuff.num_classes == 171 and not stuff.has_background
    lut = {0: 0, 2: 2, 11: 255, 91: 80, 181: 170, 255: 255, 89: 79}
    np.testing.assert_array_equal(stuff[0]["label"], np.vectorize(lut.get)(raw))
    assert stuff.canonical_names[79] == "toothbrush" and stuff.canonical_names[80] == "banner"

    obj = build_dataset("coco_object", root)
    assert obj.num_classes == 81 and obj.has_background
    # things +1, stuff and unlabeled → background 0 (GroupViT), unused ids → ignore
    lut = {0: 1, 2: 3, 11: 255, 91: 0, 181: 0, 255: 0, 89: 80}
    np.testing.assert_array_equal(obj[0]["label"], np.vectorize(lut.get)(raw))
    assert obj.canonical_names[1] == "person" and obj.canonical_names[80] == "toothbrush"


def test_coco_object_conversion_cli_then_loader(tmp_path, capsys):
    from ovs.eval.coco_object import main

    root = tmp_path / "coco_stuff164k"
    raw = _coco_fixture(root)
    on_the_fly = build_dataset("coco_object", root)[0]["label"]
    assert main([str(root), "--split", "val2017"]) == 0
    assert '"written": 1' in capsys.readouterr().out
    converted = root / "annotations" / "val2017" / "000000000139_instanceTrainIds.png"
    assert converted.exists()
    ds = build_dataset("coco_object", root)
    assert ds.samples[0].label == converted
    np.testing.assert_array_equal(ds[0]["label"], on_the_fly)
    assert main([str(root)]) == 0  # resumable: nothing rewritten
    assert '"existing": 1' in capsys.readouterr().out
    assert raw.shape == on_the_fly.shape
    assert main([str(tmp_path / "nope")]) == 2


def test_ade150_reduce_zero_label(tmp_path):
    base = tmp_path / "ADEChallengeData2016"
    lab = label_with([0, 1, 150, 75])
    write_rgb(base / "images" / "validation" / "ADE_val_00000001.jpg")
    write_label(base / "annotations" / "validation" / "ADE_val_00000001.png", lab)
    ds = build_dataset("ade150", tmp_path)
    assert ds.num_classes == 150 and not ds.has_background
    np.testing.assert_array_equal(ds[0]["label"], np.where(lab == 0, 255, lab - 1))
    assert ds.canonical_names[0] == "wall" and ds.canonical_names[149] == "flag"


def test_cityscapes_label_ids_to_train_ids(tmp_path):
    base = tmp_path / "cityscapes"
    city = "frankfurt"
    for k, stem in enumerate(["frankfurt_000000_000294", "frankfurt_000000_000576"]):
        write_rgb(base / "leftImg8bit" / "val" / city / f"{stem}_leftImg8bit.png", seed=k)
    ids = label_with([7, 8, 26, 33, 0, 1, 255, 24])
    gt = base / "gtFine" / "val" / city
    write_label(gt / "frankfurt_000000_000294_gtFine_labelIds.png", ids)
    train = label_with([0, 1, 13, 18, 255])
    write_label(gt / "frankfurt_000000_000576_gtFine_labelTrainIds.png", train)
    ds = build_dataset("cityscapes19", tmp_path)
    assert len(ds) == 2 and ds.num_classes == 19
    lut = {7: 0, 8: 1, 26: 13, 33: 18, 0: 255, 1: 255, 255: 255, 24: 11}
    np.testing.assert_array_equal(ds[0]["label"], np.vectorize(lut.get)(ids))
    np.testing.assert_array_equal(ds[1]["label"], train)


def test_world_split_and_out_of_range_labels(tmp_path):
    base = tmp_path / "world" / "eval"
    (base / "classes.txt").parent.mkdir(parents=True)
    (base / "classes.txt").write_text("cube, box\nsphere, ball\ngrass\nsky\n")
    write_rgb(base / "images" / "000.png")
    write_label(base / "labels" / "000.png", label_with([0, 1, 2, 3, 255, 9]))
    write_rgb(base / "images" / "001.png", seed=1)  # no label: missing
    ds = build_dataset("world", tmp_path / "world")
    assert len(ds) == 1 and ds.missing == 1 and not ds.has_background
    assert ds.class_names[0] == ["cube", "box"]
    out = ds[0]["label"]
    assert set(np.unique(out)) == {0, 1, 2, 3, 255}  # 9 is out of range → ignore


def test_bad_samples_raise_and_bad_roots(tmp_path):
    base = tmp_path / "world" / "eval"
    (base / "images").mkdir(parents=True)
    (base / "labels").mkdir(parents=True)
    (base / "classes.txt").write_text("a\nb\n")
    (base / "images" / "000.png").write_bytes(b"not a png")
    write_label(base / "labels" / "000.png", label_with([0, 1]))
    ds = build_dataset("world", tmp_path / "world")
    with pytest.raises(OSError):
        ds[0]
    with pytest.raises(FileNotFoundError):
        build_dataset("voc21", tmp_path)
    with pytest.raises(KeyError):
        build_dataset("nope", tmp_path)


def test_class_files_consistent():
    assert load_class_names("voc20") == load_class_names("voc21")[1:]
    assert load_class_names("context59") == load_class_names("context60")[1:]
    assert load_class_names("coco_object")[1:] == load_class_names("coco_stuff171")[:80]
    sizes = {
        "voc21": 21,
        "context60": 60,
        "coco_object": 81,
        "coco_stuff171": 171,
        "ade150": 150,
        "cityscapes19": 19,
    }
    for key, n in sizes.items():
        names = load_class_names(key)
        assert len(names) == n, key
        firsts = [c[0] for c in names]
        assert len(set(firsts)) == n, f"duplicate official names in {key}"
