"""COCO label conversions: COCO-Stuff-164k label maps → COCO-Stuff-171 / COCO-Object ids.

COCO-Object (81 classes: background + the 80 COCO "things") is the mask-free family's third
benchmark. Two ways to build its label PNGs:

1. From COCO-Stuff-164k's ``stuffthingmaps_trainval2017`` PNGs (mmsegmentation layout:
   ``coco_stuff164k/annotations/<split>/<id>.png``; pixel value = COCO category id − 1,
   255 = unlabeled). This is exactly what GroupViT's ``convert_coco_object.py`` does (and TCL,
   SCLIP reuse): thing → 1..80, stuff → 0; unlabeled (255) also → 0 (background), which we keep
   as the default for comparability (``unlabeled="background"``); ``unlabeled="ignore"`` keeps
   it 255.
2. From the COCO instance JSON (``instances_val2017.json``) without pycocotools: polygons are
   rasterised with PIL, RLE (compressed string or counts list) decoded here; all instances of a
   class are merged, larger instances painted first so small ones stay visible; pixels covered
   by no instance are background (0). Crowd regions are painted like others. PIL's polygon
   fill differs from pycocotools' on boundary pixels, so the labels match option 1 only
   up to edges and the stuff annotation.

Output: ``<out>/annotations/<split>/<id>_instanceTrainIds.png`` (the name mmseg-style
COCO-Object loaders and :func:`ovs.eval.datasets.coco_object` read).

CLI: ``python -m ovs.eval.coco_object COCO_STUFF_ROOT [--split val2017] [--out DIR]`` or
``python -m ovs.eval.coco_object --instances instances_val2017.json --out DIR``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from ovs.codecs import png_bytes
from ovs.io import atomic_write_bytes

# Raw stuffthingmap values (category id − 1) that no COCO category uses.
_UNUSED_RAW = frozenset({11, 25, 28, 29, 44, 65, 67, 68, 70, 82, 90})
_NUM_RAW = 182  # raw values 0..181
_FIRST_STUFF_RAW = 91  # raw >= 91 is stuff (category ids 92..182)


def _raw_to_stuff171() -> np.ndarray:
    lut = np.full(256, 255, dtype=np.uint8)
    train_id = 0
    for raw in range(_NUM_RAW):
        if raw in _UNUSED_RAW:
            continue
        lut[raw] = train_id
        train_id += 1
    assert train_id == 171
    return lut


RAW_TO_STUFF171: np.ndarray = _raw_to_stuff171()
"""uint8[256] LUT: stuffthingmap value → COCO-Stuff-171 train id (mmseg's converter)."""


def raw_to_object_lut(unlabeled: str = "background") -> np.ndarray:
    """uint8[256] LUT: stuffthingmap value → COCO-Object id (0 = background, 1..80 things).

    ``unlabeled``: ``"background"`` (GroupViT's converter: 255 → 0) or ``"ignore"`` (255 stays).
    """
    if unlabeled not in ("background", "ignore"):
        raise ValueError(f"unlabeled must be 'background' or 'ignore', got {unlabeled!r}")
    lut = RAW_TO_STUFF171.astype(np.int64)
    # things 0..79 → 1..80, stuff 80..170 → 0, unused / out-of-range values → 255
    obj = np.where(lut < 80, lut + 1, np.where(lut < 171, 0, 255))
    obj[255] = 0 if unlabeled == "background" else 255
    return obj.astype(np.uint8)


_OBJECT_LUT_STRICT = raw_to_object_lut("ignore")


def stuffthingmap_to_object(raw: np.ndarray, unlabeled: str = "background") -> np.ndarray:
    """uint8[H, W] stuffthingmap → uint8[H, W] COCO-Object labels."""
    return raw_to_object_lut(unlabeled)[raw]


# ---------------------------------------------------------------- instance JSON route


def rle_string_to_counts(s: str) -> list[int]:
    """Decode COCO's compressed RLE string (LEB128-like, 6 bits/char, delta from i−2)."""
    counts: list[int] = []
    p = 0
    while p < len(s):
        x, k, more = 0, 0, True
        while more:
            c = ord(s[p]) - 48
            x |= (c & 0x1F) << (5 * k)
            more = bool(c & 0x20)
            p += 1
            k += 1
            if not more and (c & 0x10):
                x |= -1 << (5 * k)
        if len(counts) > 2:
            x += counts[-2]
        counts.append(x)
    return counts


def decode_rle(counts: list[int] | str, height: int, width: int) -> np.ndarray:
    """bool[H, W] mask from RLE counts (column-major runs, starting with a 0-run)."""
    if isinstance(counts, str):
        counts = rle_string_to_counts(counts)
    flat = np.zeros(height * width, dtype=bool)
    pos = 0
    for i, n in enumerate(counts):
        if i % 2 == 1:
            flat[pos : pos + n] = True
        pos += n
    if pos != height * width:
        raise ValueError(f"RLE covers {pos} pixels, image has {height * width}")
    return flat.reshape(width, height).T


def polygons_to_mask(polygons: list[list[float]], height: int, width: int) -> np.ndarray:
    """bool[H, W] union of COCO polygons ``[x0, y0, x1, y1, ...]`` (pixel coordinates)."""
    img = Image.new("L", (width, height), 0)
    draw = ImageDraw.Draw(img)
    for poly in polygons:
        if len(poly) >= 6:
            draw.polygon([(poly[i], poly[i + 1]) for i in range(0, len(poly) - 1, 2)], fill=1)
    return np.asarray(img, dtype=bool)


def annotation_mask(segmentation: list | dict, height: int, width: int) -> np.ndarray:
    """bool[H, W] of one COCO annotation's ``segmentation`` (polygons or RLE)."""
    if isinstance(segmentation, list):
        return polygons_to_mask(segmentation, height, width)
    h, w = segmentation.get("size", (height, width))
    return decode_rle(segmentation["counts"], int(h), int(w))


def category_to_object_id(category_id: int) -> int:
    """COCO category id → COCO-Object label (1..80 for things, 0 for stuff, 255 unknown)."""
    if not 1 <= category_id <= _NUM_RAW:
        return 255
    return int(_OBJECT_LUT_STRICT[category_id - 1])


def instances_to_object_labels(coco: dict) -> dict[int, np.ndarray]:
    """COCO instance JSON dict → ``{image_id: uint8[H, W]}`` COCO-Object label maps.

    Annotations of non-thing categories are not painted (their pixels stay background).
    """
    images = {int(im["id"]): im for im in coco["images"]}
    by_image: dict[int, list[dict]] = {i: [] for i in images}
    for ann in coco["annotations"]:
        obj_id = category_to_object_id(int(ann["category_id"]))
        if 1 <= obj_id <= 80 and int(ann["image_id"]) in by_image:
            by_image[int(ann["image_id"])].append(ann)
    out = {}
    for image_id, anns in by_image.items():
        im = images[image_id]
        h, w = int(im["height"]), int(im["width"])
        label = np.zeros((h, w), dtype=np.uint8)
        # Large first so that small instances lying on top of large ones survive.
        for ann in sorted(anns, key=lambda a: -float(a.get("area", 0.0))):
            mask = annotation_mask(ann["segmentation"], h, w)
            label[mask] = category_to_object_id(int(ann["category_id"]))
        out[image_id] = label
    return out


# ---------------------------------------------------------------- writers / CLI


def convert_stuffthingmaps(
    coco_stuff_root: str | Path,
    split: str = "val2017",
    out_root: str | Path | None = None,
    unlabeled: str = "background",
) -> dict[str, int]:
    """Write ``<out>/annotations/<split>/<id>_instanceTrainIds.png`` for every raw map.

    Reads ``<root>/annotations/<split>/<id>.png`` (skipping ``*TrainIds.png``); already
    converted files are skipped (resumable). Returns counts ``{"written", "existing",
    "failed"}``; unreadable PNGs are counted, not fatal.
    """
    root = Path(coco_stuff_root)
    src = root / "annotations" / split
    if not src.is_dir():
        raise FileNotFoundError(f"no raw COCO-Stuff label folder {src}")
    dst = Path(out_root or root) / "annotations" / split
    counts = {"written": 0, "existing": 0, "failed": 0}
    lut = raw_to_object_lut(unlabeled)
    for path in sorted(src.glob("*.png")):
        if path.stem.endswith("TrainIds"):
            continue
        target = dst / f"{path.stem}_instanceTrainIds.png"
        if target.exists():
            counts["existing"] += 1
            continue
        try:
            raw = np.asarray(Image.open(path))
        except OSError:
            counts["failed"] += 1
            continue
        if raw.ndim != 2:
            counts["failed"] += 1
            continue
        atomic_write_bytes(target, png_bytes(lut[raw]))
        counts["written"] += 1
    return counts


def convert_instances(instances_json: str | Path, out_root: str | Path, split: str) -> int:
    """Rasterise an instance JSON into ``<out>/annotations/<split>/<stem>_instanceTrainIds.png``.

    The file stem is the image's ``file_name`` without extension. Returns the number written.
    """
    coco = json.loads(Path(instances_json).read_text())
    stems = {int(im["id"]): Path(im["file_name"]).stem for im in coco["images"]}
    dst = Path(out_root) / "annotations" / split
    labels = instances_to_object_labels(coco)
    for image_id, label in labels.items():
        atomic_write_bytes(dst / f"{stems[image_id]}_instanceTrainIds.png", png_bytes(label))
    return len(labels)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m ovs.eval.coco_object",
        description="Build COCO-Object label PNGs (background + 80 things).",
    )
    parser.add_argument("root", nargs="?", help="coco_stuff164k root (stuffthingmaps route)")
    parser.add_argument("--instances", help="instances_<split>.json (polygon/RLE route)")
    parser.add_argument("--split", default="val2017")
    parser.add_argument("--out", help="output root (default: the input root)")
    parser.add_argument("--unlabeled", choices=("background", "ignore"), default="background")
    args = parser.parse_args(argv)
    if bool(args.root) == bool(args.instances):
        parser.error("give exactly one of ROOT or --instances")
    try:
        if args.instances:
            if not args.out:
                parser.error("--instances needs --out")
            n = convert_instances(args.instances, args.out, args.split)
            result: dict[str, int] = {"written": n}
        else:
            result = convert_stuffthingmaps(args.root, args.split, args.out, args.unlabeled)
    except FileNotFoundError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
