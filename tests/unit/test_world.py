import numpy as np
import pyarrow.parquet as pq

from ovs.data import world
from ovs.data.world import CLASSES, OBJECTS, STUFF, WorldConfig, caption, render


def test_class_table():
    assert len(OBJECTS) >= 12 and len(STUFF) >= 4
    names = [c.name for c in CLASSES]
    assert len(set(names)) == len(names)
    syn = [s for c in CLASSES for s in c.synonyms]
    assert not set(syn) & set(names)


def test_render_deterministic_and_varied():
    cfg = WorldConfig(image_size=48)
    a = render(cfg, 3, "train")
    b = render(cfg, 3, "train")
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    c = render(cfg, 3, "eval")
    assert not np.array_equal(a[0], c[0])
    labels = np.concatenate([render(cfg, i, "train")[1].ravel() for i in range(60)])
    present = set(np.unique(labels).tolist())
    assert present == set(range(len(CLASSES)))  # every class appears


def test_objects_have_texture_not_flat_colour():
    cfg = WorldConfig(image_size=64, noise_std=0.0)
    img, lab, objs = render(cfg, 0, "train")
    for cid in set(objs):
        pix = img[lab == cid].astype(float)
        if len(pix) > 30:
            assert pix.std(0).max() > 3.0


def test_captions_mention_subset_and_never_masks():
    cfg = WorldConfig()
    caps = []
    for i in range(200):
        img, lab, objs = render(cfg, i, "train")
        cap = caption(cfg, i, lab, objs)
        assert cap and "mask" not in cap and "pixel" not in cap
        caps.append(cap)
    joined = " ".join(caps)
    assert any(s in joined for s in ("kitten", "puppy", "ship", "pony"))  # synonyms
    assert "cats" in joined or "dogs" in joined or "two" in joined  # plurals
    assert "#" in joined  # web alt-text noise
    assert len(set(caps)) > 150


def test_generate_layout(tmp_path):
    cfg = WorldConfig(num_train=12, num_eval=5, num_val=0, image_size=32)
    counts = world.generate(cfg, tmp_path)
    assert counts == {"train_images": 12, "eval_images": 5}
    urls = pq.read_table(tmp_path / "train" / "urls.parquet").to_pylist()
    assert len(urls) == 12 and all(u["url"].startswith("file://") for u in urls)
    ev = world.load_split(tmp_path, "eval")
    assert len(ev) == 5 and ev[0]["image"].shape == (32, 32, 3) and ev[0]["label"].dtype == np.uint8
    names = world.class_names(tmp_path)
    assert len(names) == len(CLASSES) and names[8][0] == "person" and "man" in names[8]
    bg = world.class_names(tmp_path, with_background=True)
    assert bg[0] == ["background"] and len(bg) == len(OBJECTS) + 1
    mapped = world.to_background_labels(ev[0]["label"])
    assert mapped.max() <= len(OBJECTS)
    assert ((ev[0]["label"] >= len(OBJECTS)) == (mapped == 0)).all()


def test_export_real_layouts_round_trip(tmp_path):
    """The exported VOC / Context / COCO-Object folders load with the benchmark loaders, with
    every world class under the benchmark class of the same name (absent ones background)."""
    from PIL import Image

    from ovs.data.world_export import benchmark_roots, class_lut, export, voc_palette
    from ovs.eval.datasets import build_dataset

    cfg = WorldConfig(num_train=6, num_eval=5, image_size=32)
    world.generate(cfg, tmp_path / "w")
    counts = export(tmp_path / "w", tmp_path / "x")
    assert counts == {
        "url_list_rows": 6,
        "voc21_train": 6,
        "voc21_val": 5,
        "context60_val": 5,
        "coco_object_val": 5,
    }
    lines = (tmp_path / "x" / "cc12m.tsv").read_text().splitlines()
    urls = pq.read_table(tmp_path / "w" / "train" / "urls.parquet").to_pylist()
    assert lines == [f"{u['url']}\t{u['caption']}" for u in urls]  # no header row
    roots = benchmark_roots(tmp_path / "x")
    truth = {s["id"]: s for s in world.load_split(tmp_path / "w", "eval")}
    wid = {c.name: i for i, c in enumerate(CLASSES)}
    voc, coco = class_lut("voc21"), class_lut("coco_object")  # published ids, spot checks
    assert (voc[wid["cat"]], voc[wid["person"]], voc[wid["bus"]], voc[wid["umbrella"]]) == (
        8,
        15,
        6,
        0,
    )
    assert (coco[wid["person"]], coco[wid["umbrella"]], coco[wid["sky"]]) == (1, 26, 0)
    assert class_lut("context60")[wid["sky"]] == 47
    for key, absent in (
        ("voc21", {"umbrella", "sky", "grass", "water", "sand"}),
        ("context60", {"umbrella", "sand"}),
        ("coco_object", {"sky", "grass", "water", "sand"}),
    ):
        ds = build_dataset(key, roots[key])
        assert len(ds) == 5 and ds.missing == 0
        canon = ds.canonical_names
        for i in range(len(ds)):
            s = ds[i]
            ref = truth[s["id"][1:]]
            want = np.array(
                [0 if c.name in absent else canon.index(c.name) for c in CLASSES], np.uint8
            )[ref["label"]]
            assert np.array_equal(s["label"], want), key
            assert np.abs(s["image"].astype(int) - ref["image"]).mean() < 12  # JPEG
        present = {canon[v] for i in range(len(ds)) for v in np.unique(ds[i]["label"])}
        assert present - {"background"} <= {c.name for c in CLASSES} - absent
    voc_train = build_dataset("voc21", roots["voc21"], "train")
    assert len(voc_train) == 6 and voc_train[0]["id"] == "t000000"
    png = next((roots["voc21"] / "SegmentationClass").glob("e*.png"))
    with Image.open(png) as im:
        assert im.mode == "P" and im.getpalette()[:9] == [0, 0, 0, 128, 0, 0, 0, 128, 0]
        assert im.getpalette() == voc_palette()[: len(im.getpalette())]
    again = {p: p.read_bytes() for p in sorted((tmp_path / "x").rglob("*")) if p.is_file()}
    export(tmp_path / "w", tmp_path / "x")
    assert again == {p: p.read_bytes() for p in sorted((tmp_path / "x").rglob("*")) if p.is_file()}


def test_val_split_is_disjoint_and_report_split_chooses_what_metrics_use(tmp_path):
    """issue 16: a labelled ``val`` split for choosing settings, drawn from its own seeds (no
    image shared with train or eval), and ``world.report_split`` names the split that the
    world's metrics read (the ``world`` benchmark's default split)."""
    import pytest

    from ovs.eval.datasets import build_dataset

    cfg = WorldConfig(num_train=6, num_eval=4, num_val=4, image_size=32)
    counts = world.generate(cfg, tmp_path / "a")
    assert counts == {"train_images": 6, "eval_images": 4, "val_images": 4}
    splits = {s: world.load_split(tmp_path / "a", s) for s in ("train", "eval", "val")}
    assert len(splits["val"]) == 4 and world.class_names(tmp_path / "a")
    for a, b in (("val", "eval"), ("val", "train")):
        for x in splits[a]:
            assert not any(np.array_equal(x["image"], y["image"]) for y in splits[b]), (a, b)
    urls = pq.read_table(tmp_path / "a" / "val" / "urls.parquet").to_pylist()
    assert len(urls) == 4 and not set(u["caption"] for u in urls) & {
        u["caption"] for u in pq.read_table(tmp_path / "a" / "eval" / "urls.parquet").to_pylist()
    }
    # train and eval do not depend on whether a val split exists
    world.generate(WorldConfig(num_train=6, num_eval=4, num_val=0, image_size=32), tmp_path / "b")
    for s in ("train", "eval"):
        other = world.load_split(tmp_path / "b", s)
        assert all(np.array_equal(x["image"], y["image"]) for x, y in zip(splits[s], other))
    assert world.report_split(tmp_path / "a") == "eval"
    assert [r.id for r in build_dataset("world", tmp_path / "a").samples] == [
        x["id"] for x in splits["eval"]
    ]
    tune = WorldConfig(num_train=6, num_eval=4, num_val=3, image_size=32, report_split="val")
    world.generate(tune, tmp_path / "c")
    assert world.report_split(tmp_path / "c") == "val"
    assert len(build_dataset("world", tmp_path / "c")) == 3
    assert len(build_dataset("world", tmp_path / "c", "eval")) == 4
    with pytest.raises(ValueError, match="report_split"):
        WorldConfig(report_split="train").validate()
    with pytest.raises(ValueError, match="num_val is 0"):
        WorldConfig(report_split="val", num_val=0).validate()


def test_the_first_ids_of_a_split_are_found_without_listing_it_whole(tmp_path):
    """``split_ids(limit=16)`` (the world stage's sample grid, the oracle's images) gives the
    16 smallest ids of a 5,000-image split and holds about 16 names while it scans, not 5,000
    paths (1 MB here; 10 MB at 25k images, the memory benchmark's world stage)."""
    import tracemalloc

    images = tmp_path / "train" / "images"
    images.mkdir(parents=True)
    for i in reversed(range(5000)):
        (images / f"{i:06d}.png").touch()
    (images / "notes.txt").touch()
    tracemalloc.start()
    try:
        first = world.split_ids(tmp_path, "train", limit=16)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert first == [f"{i:06d}" for i in range(16)]
    assert peak < 100_000, peak
    assert world.split_ids(tmp_path, "train") == [f"{i:06d}" for i in range(5000)]
