"""The synthetic world written in the layouts of the real data it stands in for.

The paper config reads CC12M's headerless ``cc12m.tsv`` and evaluates on PASCAL VOC, PASCAL
Context and COCO-Object from their published folders. :func:`export` writes the world in
exactly those layouts, so the paper config's tiny sibling (``conf/cc12m_local.yaml``) runs the
same readers and loaders and differs from it only in where the data is::

    <out>/cc12m.tsv                                  url<TAB>caption, no header (train split)
    <out>/VOCdevkit/VOC2012/JPEGImages/<id>.jpg      train + eval images
    <out>/VOCdevkit/VOC2012/SegmentationClass/<id>.png   palette PNGs, VOC ids and palette
    <out>/VOCdevkit/VOC2012/ImageSets/Segmentation/{train,val}.txt
    <out>/VOCdevkit/VOC2010/JPEGImages/<id>.jpg      eval images
    <out>/VOCdevkit/VOC2010/SegmentationClassContext/<id>.png   Context-60 ids (0 = background)
    <out>/VOCdevkit/VOC2010/ImageSets/SegmentationContext/val.txt
    <out>/coco_stuff164k/images/val2017/<id>.jpg
    <out>/coco_stuff164k/annotations/val2017/<id>_instanceTrainIds.png   COCO-Object ids

Labels: a world class becomes the benchmark class with the same official name (the first
name on its line in ``ovs/eval/classnames``); classes the benchmark does not have (umbrella in
VOC and Context, sand in Context, every stuff class in VOC and COCO-Object) become background
(0), as unannotated regions are in those datasets; the world's ignore value stays 255. Eval
ids are prefixed ``e`` and train ids ``t`` so one VOC folder holds both splits. Every file is
written atomically; the export is deterministic and idempotent.
"""

from __future__ import annotations

import io
from collections.abc import Iterable
from pathlib import Path

import numpy as np
from PIL import Image

from ovs.data.world import CLASSES, IGNORE_INDEX, iter_split
from ovs.eval.names import load_class_names
from ovs.io import atomic_write_bytes, atomic_write_text

BENCHMARKS = ("voc21", "context60", "coco_object")
JPEG_QUALITY = 95


def voc_palette() -> list[int]:
    """PASCAL VOC's 256-colour palette (``VOCdevkit``'s ``labelcolormap``), flat RGB."""
    palette = []
    for i in range(256):
        r = g = b = 0
        c = i
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        palette += [r, g, b]
    return palette


def class_lut(benchmark: str) -> np.ndarray:
    """``uint8[256]``: world class id -> ``benchmark`` class id (absent classes -> 0)."""
    ids = {names[0]: i for i, names in enumerate(load_class_names(benchmark)) if i > 0}
    lut = np.full(256, IGNORE_INDEX, dtype=np.uint8)
    for wid, cls in enumerate(CLASSES):
        lut[wid] = ids.get(cls.name, 0)
    return lut


def _jpeg(image: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="JPEG", quality=JPEG_QUALITY)
    return buf.getvalue()


def _png(label: np.ndarray, palette: list[int] | None = None) -> bytes:
    im = Image.fromarray(label, mode="L" if palette is None else "P")
    if palette is not None:
        im.putpalette(palette)
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


def write_url_list(world_root: Path, out: Path) -> int:
    """``out/cc12m.tsv`` from the world's train URL list; returns the row count."""
    import pyarrow.parquet as pq

    rows = pq.read_table(world_root / "train" / "urls.parquet", columns=["url", "caption"])
    lines = []
    for url, text in zip(rows.column("url").to_pylist(), rows.column("caption").to_pylist()):
        if "\t" in text or "\n" in text:  # cannot happen with the world's captions
            raise ValueError(f"caption {text!r} would break the TSV")
        lines.append(f"{url}\t{text}\n")
    atomic_write_text(out / "cc12m.tsv", "".join(lines))
    return len(lines)


def _write_split(
    samples: Iterable[dict], prefix: str, images: Path, labels: Path, suffix: str, lut, palette
) -> list[str]:
    ids = []
    for s in samples:
        sid = f"{prefix}{s['id']}"
        atomic_write_bytes(images / f"{sid}.jpg", _jpeg(s["image"]))
        atomic_write_bytes(labels / f"{sid}{suffix}", _png(lut[s["label"]], palette))
        ids.append(sid)
    return ids


def export(world_root: str | Path, out: str | Path) -> dict[str, int]:
    """Write the world generated under ``world_root`` in the layouts above; returns counts."""
    world_root, out = Path(world_root), Path(out)
    # one image in memory at a time: each layout streams its split again
    counts = {"url_list_rows": write_url_list(world_root, out)}

    voc = out / "VOCdevkit" / "VOC2012"
    lut, pal = class_lut("voc21"), voc_palette()
    sets = voc / "ImageSets" / "Segmentation"
    for name, split, prefix in (("train", "train", "t"), ("val", "eval", "e")):
        ids = _write_split(
            iter_split(world_root, split),
            prefix,
            voc / "JPEGImages",
            voc / "SegmentationClass",
            ".png",
            lut,
            pal,
        )
        atomic_write_text(sets / f"{name}.txt", "".join(i + "\n" for i in ids))
        counts[f"voc21_{name}"] = len(ids)

    ctx = out / "VOCdevkit" / "VOC2010"
    ids = _write_split(
        iter_split(world_root, "eval"),
        "e",
        ctx / "JPEGImages",
        ctx / "SegmentationClassContext",
        ".png",
        class_lut("context60"),
        None,
    )
    atomic_write_text(
        ctx / "ImageSets" / "SegmentationContext" / "val.txt", "".join(i + "\n" for i in ids)
    )
    counts["context60_val"] = len(ids)

    coco = out / "coco_stuff164k"
    ids = _write_split(
        iter_split(world_root, "eval"),
        "e",
        coco / "images" / "val2017",
        coco / "annotations" / "val2017",
        "_instanceTrainIds.png",
        class_lut("coco_object"),
        None,
    )
    counts["coco_object_val"] = len(ids)
    return counts


def benchmark_roots(out: str | Path) -> dict[str, Path]:
    """Where :func:`export` puts each benchmark (the roots ``evaluate.datasets`` names)."""
    out = Path(out)
    return {
        "voc21": out / "VOCdevkit" / "VOC2012",
        "context60": out / "VOCdevkit" / "VOC2010",
        "coco_object": out / "coco_stuff164k",
    }
