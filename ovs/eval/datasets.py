"""Evaluation datasets read from the on-disk layouts mmsegmentation documents.

Every loader returns a :class:`SegDataset`: an indexable list of samples
``{"image": uint8[H, W, 3] RGB, "label": uint8[H, W], "id": str}`` whose labels are already in
the benchmark's class ids ``0..C-1`` with 255 = ignore, plus the class names
(``[[official, synonym, ...], ...]``, see :mod:`ovs.eval.names`) and whether class 0 is
"background" (then the protocol's background threshold applies).

Layouts (``root`` may be the folder named in the first column or its parent):

=================  ==========================================================================
``voc21/voc20``    ``VOCdevkit/VOC2012/{JPEGImages/<id>.jpg, SegmentationClass/<id>.png,
                   ImageSets/Segmentation/<split>.txt}``; palette PNGs (index 0 = background,
                   255 = border). voc20: background → ignore, ids shift down by one.
``context60/59``   ``VOCdevkit/VOC2010/{JPEGImages, SegmentationClassContext/<id>.png,
                   ImageSets/SegmentationContext/<split>.txt}`` (labels 0 = background, 1..59);
                   context59: background → ignore (mmseg ``reduce_zero_label``).
``coco_object``    ``coco_stuff164k/{images/<split>/<id>.jpg, annotations/<split>/
                   <id>_instanceTrainIds.png}`` (from :mod:`ovs.eval.coco_object`) or, if those
                   are missing, the raw ``<id>.png`` stuffthingmaps converted on the fly.
``coco_stuff171``  same folder; ``<id>_labelTrainIds.png`` (mmseg's converter) or raw ``<id>.png``.
``ade150``         ``ADEChallengeData2016/{images,annotations}/<split>/`` (``validation``);
                   label 0 ("other") → ignore, ids shift down by one.
``cityscapes19``   ``cityscapes/{leftImg8bit/<split>/<city>/<x>_leftImg8bit.png,
                   gtFine/<split>/<city>/<x>_gtFine_labelTrainIds.png}``; if the trainIds file
                   is missing, ``_gtFine_labelIds.png`` is mapped to the 19 train ids.
``world``          the synthetic world: ``<root>/<split>/{images,labels}/<id>.png`` and
                   ``<root>/<split>/classes.txt`` (split ``eval``).
=================  ==========================================================================

Label values that fall outside the class range after mapping become 255 (ignored), so a
stray value cannot crash an evaluation. Samples listed but missing on disk are skipped at
construction and counted in :attr:`SegDataset.missing`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ovs.codecs import IGNORE, read_image, read_label_png
from ovs.eval.coco_object import RAW_TO_STUFF171, raw_to_object_lut
from ovs.eval.names import load_class_names, read_class_file


@dataclass(frozen=True)
class SampleRef:
    """Where one sample lives on disk; ``lut`` maps stored label values to class ids."""

    id: str
    image: Path
    label: Path
    lut: int = 0  # index into SegDataset.luts (0 = the dataset's default)


def identity_lut() -> np.ndarray:
    return np.arange(256, dtype=np.uint8)


def reduce_zero_label_lut() -> np.ndarray:
    """mmseg ``reduce_zero_label``: 0 → 255, v → v − 1, 255 stays 255."""
    lut = (np.arange(256) - 1).astype(np.int64)
    lut[0] = IGNORE
    lut[255] = IGNORE
    return lut.astype(np.uint8)


def cityscapes_label_to_train_lut() -> np.ndarray:
    """Cityscapes ``labelIds`` → the 19 ``trainIds`` (all others → 255)."""
    lut = np.full(256, IGNORE, dtype=np.uint8)
    label_ids = (
        7,
        8,
        11,
        12,
        13,
        17,
        19,
        20,
        21,
        22,
        23,
        24,
        25,
        26,
        27,
        28,
        31,
        32,
        33,
    )
    for train_id, label_id in enumerate(label_ids):
        lut[label_id] = train_id
    return lut


class SegDataset:
    """An evaluation split: sample references + the label mapping + class names.

    ``dataset[i]`` reads from disk each time (no caching), so a dataset object is cheap to
    ship to Ray workers. Raises ``OSError``/``ValueError`` for an unreadable sample; the
    evaluator skips and counts those.
    """

    def __init__(
        self,
        name: str,
        samples: list[SampleRef],
        class_names: list[list[str]],
        has_background: bool,
        luts: list[np.ndarray] | None = None,
        missing: int = 0,
    ) -> None:
        self.name = name
        self.samples = samples
        self.class_names = class_names
        self.has_background = has_background
        self.missing = missing
        c = len(class_names)
        self.luts = []
        for lut in luts or [identity_lut()]:
            lut = lut.copy()
            lut[(lut >= c) & (lut != IGNORE)] = IGNORE  # out-of-range → ignore
            self.luts.append(lut)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def canonical_names(self) -> list[str]:
        return [c[0] for c in self.class_names]

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> dict:
        ref = self.samples[i]
        image = read_image(ref.image)
        raw = read_label_png(ref.label)
        if raw.shape != image.shape[:2]:
            raise ValueError(f"{ref.id}: label {raw.shape} vs image {image.shape[:2]}")
        return {"image": image, "label": self.luts[ref.lut][raw], "id": ref.id}

    def __repr__(self) -> str:
        return f"SegDataset({self.name!r}, n={len(self)}, classes={self.num_classes})"


def _find_root(root: str | Path, marker: str, *subdirs: str) -> Path:
    """The first of ``root``, ``root/<subdir>``... that contains ``marker``."""
    root = Path(root)
    tried = []
    for cand in [root, *(root / s for s in subdirs)]:
        tried.append(str(cand / marker))
        if (cand / marker).exists():
            return cand
    raise FileNotFoundError(f"dataset layout not found; looked for {tried}")


def _from_list(
    base: Path, list_file: Path, img_dir: str, ann_dir: str, img_suffix: str
) -> tuple[list[SampleRef], int]:
    if not list_file.exists():
        raise FileNotFoundError(f"split list {list_file} not found")
    samples, missing = [], 0
    for line in list_file.read_text().splitlines():
        sid = line.strip()
        if not sid:
            continue
        img, ann = base / img_dir / f"{sid}{img_suffix}", base / ann_dir / f"{sid}.png"
        if img.exists() and ann.exists():
            samples.append(SampleRef(sid, img, ann))
        else:
            missing += 1
    return samples, missing


def pascal_voc(root: str | Path, split: str = "val", background: bool = True) -> SegDataset:
    """PASCAL VOC 2012: ``voc21`` (with background) or ``voc20`` (background ignored)."""
    base = _find_root(root, "ImageSets/Segmentation", "VOC2012", "VOCdevkit/VOC2012")
    samples, missing = _from_list(
        base,
        base / "ImageSets/Segmentation" / f"{split}.txt",
        "JPEGImages",
        "SegmentationClass",
        ".jpg",
    )
    key = "voc21" if background else "voc20"
    lut = identity_lut() if background else reduce_zero_label_lut()
    return SegDataset(key, samples, load_class_names(key), background, [lut], missing)


def pascal_context(root: str | Path, split: str = "val", background: bool = True) -> SegDataset:
    """PASCAL Context (VOC2010 + SegmentationClassContext): ``context60`` / ``context59``."""
    base = _find_root(root, "SegmentationClassContext", "VOC2010", "VOCdevkit/VOC2010")
    samples, missing = _from_list(
        base,
        base / "ImageSets/SegmentationContext" / f"{split}.txt",
        "JPEGImages",
        "SegmentationClassContext",
        ".jpg",
    )
    key = "context60" if background else "context59"
    lut = identity_lut() if background else reduce_zero_label_lut()
    return SegDataset(key, samples, load_class_names(key), background, [lut], missing)


def _coco(root: str | Path, split: str, converted_suffix: str, raw_lut: np.ndarray, key: str):
    base = _find_root(root, f"images/{split}", "coco_stuff164k")
    ann_dir = base / "annotations" / split
    samples, missing = [], 0
    for img in sorted((base / "images" / split).glob("*.jpg")):
        converted, raw = (
            ann_dir / f"{img.stem}{converted_suffix}",
            ann_dir / f"{img.stem}.png",
        )
        if converted.exists():
            samples.append(SampleRef(img.stem, img, converted, lut=0))
        elif raw.exists():
            samples.append(SampleRef(img.stem, img, raw, lut=1))
        else:
            missing += 1
    has_bg = key == "coco_object"
    return SegDataset(
        key, samples, load_class_names(key), has_bg, [identity_lut(), raw_lut], missing
    )


def coco_object(root: str | Path, split: str = "val2017") -> SegDataset:
    """COCO-Object: background + 80 things (GroupViT convention, see :mod:`.coco_object`)."""
    return _coco(root, split, "_instanceTrainIds.png", raw_to_object_lut(), "coco_object")


def coco_stuff171(root: str | Path, split: str = "val2017") -> SegDataset:
    """COCO-Stuff-164k with the 171 used classes (mmseg ``COCOStuffDataset``)."""
    return _coco(root, split, "_labelTrainIds.png", RAW_TO_STUFF171, "coco_stuff171")


def ade20k(root: str | Path, split: str = "validation") -> SegDataset:
    """ADE20K-150 (ADEChallengeData2016), ``reduce_zero_label``."""
    base = _find_root(root, f"images/{split}", "ADEChallengeData2016")
    samples, missing = [], 0
    for img in sorted((base / "images" / split).glob("*.jpg")):
        ann = base / "annotations" / split / f"{img.stem}.png"
        if ann.exists():
            samples.append(SampleRef(img.stem, img, ann))
        else:
            missing += 1
    return SegDataset(
        "ade150",
        samples,
        load_class_names("ade150"),
        False,
        [reduce_zero_label_lut()],
        missing,
    )


def cityscapes(root: str | Path, split: str = "val") -> SegDataset:
    """Cityscapes with the 19 train ids (``gtFine``)."""
    base = _find_root(root, f"leftImg8bit/{split}", "cityscapes")
    samples, missing = [], 0
    for img in sorted((base / "leftImg8bit" / split).glob("*/*_leftImg8bit.png")):
        stem = img.name[: -len("_leftImg8bit.png")]
        gt = base / "gtFine" / split / img.parent.name
        train, label = (
            gt / f"{stem}_gtFine_labelTrainIds.png",
            gt / f"{stem}_gtFine_labelIds.png",
        )
        if train.exists():
            samples.append(SampleRef(stem, img, train, lut=0))
        elif label.exists():
            samples.append(SampleRef(stem, img, label, lut=1))
        else:
            missing += 1
    return SegDataset(
        "cityscapes19",
        samples,
        load_class_names("cityscapes19"),
        False,
        [identity_lut(), cityscapes_label_to_train_lut()],
        missing,
    )


def synthetic_world(root: str | Path, split: str = "") -> SegDataset:
    """A labelled split of the synthetic world (layout in the project contract): ``split``
    ``"eval"`` or ``"val"``; ``""`` = the one the world reports on (``world.report_split``).

    Class 0 counts as background (thresholded) only if its first name is ``background``.
    """
    if not split:
        from ovs.data.world import report_split

        split = report_split(root)
    base = Path(root) / split
    if not (base / "classes.txt").exists():
        raise FileNotFoundError(f"no {base / 'classes.txt'}")
    classes = read_class_file(base / "classes.txt")
    samples, missing = [], 0
    for img in sorted((base / "images").glob("*.png")):
        ann = base / "labels" / img.name
        if ann.exists():
            samples.append(SampleRef(img.stem, img, ann))
        else:
            missing += 1
    has_bg = bool(classes) and classes[0][0].lower() == "background"
    return SegDataset("world", samples, classes, has_bg, [identity_lut()], missing)


DatasetBuilder = Callable[..., SegDataset]

DATASETS: dict[str, tuple[DatasetBuilder, str]] = {
    "voc21": (lambda root, split: pascal_voc(root, split, background=True), "val"),
    "voc20": (lambda root, split: pascal_voc(root, split, background=False), "val"),
    "context60": (
        lambda root, split: pascal_context(root, split, background=True),
        "val",
    ),
    "context59": (
        lambda root, split: pascal_context(root, split, background=False),
        "val",
    ),
    "coco_object": (coco_object, "val2017"),
    "coco_stuff171": (coco_stuff171, "val2017"),
    "ade150": (ade20k, "validation"),
    "cityscapes19": (cityscapes, "val"),
    "world": (synthetic_world, ""),  # "" = world.report_split
}
"""Benchmark key → (builder(root, split), default split)."""


def build_dataset(name: str, root: str | Path, split: str | None = None) -> SegDataset:
    """Build a benchmark's eval split by key (see :data:`DATASETS`)."""
    if name not in DATASETS:
        raise KeyError(f"unknown dataset {name!r}; choose from {sorted(DATASETS)}")
    builder, default_split = DATASETS[name]
    return builder(root, split or default_split)


def missing_reason(name: str, root: str | Path, split: str | None = None) -> str | None:
    """Why benchmark ``name`` has no data at ``root``, or None when it is present.

    Present means what evaluating it needs: the layout of the table above is found (e.g.
    VOC: ``ImageSets/Segmentation/<split>.txt``) and at least one listed sample has both its
    image (``JPEGImages/<id>.jpg``) and its label (``SegmentationClass/<id>.png``).
    """
    if root == "" or (isinstance(root, Path) and not root.parts):  # str(Path("")) is "."
        return "no root configured"
    try:
        n = len(build_dataset(name, root, split))
    except (FileNotFoundError, NotADirectoryError) as e:
        return f"no data at {root}: {e}"
    return None if n else f"no samples at {root} (split {split or DATASETS[name][1]!r})"
