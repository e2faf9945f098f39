"""The synthetic caption world: the embedded dataset that lets the whole method run on a CPU.

Public segmentation datasets and pretrained weights cannot be downloaded on the machines this
project is developed on, so the pipeline's default input is generated here, deterministically
from a seed. It is built to make a broken method fail:

* 12 object classes and 4 stuff classes. Each class has a characteristic colour, texture and
  shape, with per-instance jitter, so neither colour nor shape alone identifies it
  (cow and horse share dark patches, boat and sky share light tones, ...).
* 1-4 objects per image (configurable) of varying size and position, occluding each other,
  on one or two stuff regions with irregular boundaries.
* Captions written like web alt-text: they mention a random subset of what is visible, use
  synonyms, plurals and adjectives, carry distractor words and hashtags, and a fraction of
  them name something that is not in the image. They never describe masks or positions.

Layout written by :func:`generate` (``root`` is the stage output directory)::

    train/images/<id>.png   train/labels/<id>.png   train/urls.parquet (url, caption, id)
    eval/images/<id>.png    eval/labels/<id>.png    eval/classes.txt   eval/classes_bg.txt
    world.json              (the config, class table and counts)

Label PNGs hold class ids ``0..15`` in the order of ``CLASSES`` (objects first, then stuff);
255 is the ignore index (unused by the generator, honoured by every consumer). ``classes.txt``
has one class per line, synonyms comma-separated, canonical name first.

Background: the benchmark *with* background (``classes_bg.txt``, the GroupViT / COCO-Object
style protocol) merges the 4 stuff classes into a single ``background`` class with id 0 and
shifts objects to ``1..12``; :func:`to_background_labels` does the mapping.
"""

from __future__ import annotations

import heapq
import json
import os
import urllib.parse
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ovs.codecs import png_bytes, read_image, read_label_png
from ovs.io import (
    atomic_parquet_writer,
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
)

LABELLED_SPLITS = ("eval", "val")
SPLITS = ("train", *LABELLED_SPLITS)
# Images rendered, and URL rows buffered, at a time. At 1024 the driver's RSS stepped by 2 MB in
# time with the chunks (python -m tools.bench memory --upto world: 23.4 -> 27.2 MB peak growth
# from 5k to 25k images); at 256 it is flat (17.0 -> 15.3) and no slower.
CHUNK = 256


@dataclass
class WorldConfig:
    """Size and difficulty knobs of the synthetic world (defaults: ~20 s to generate on 1 core)."""

    seed: int = 0
    image_size: int = 64
    num_train: int = 3000
    num_eval: int = 200
    # A labelled split for choosing settings, disjoint from train and eval (its own seeds):
    # tune on val (report_split: val), report on eval.
    num_val: int = 200
    # The labelled split every world metric is computed on (train's miou, evaluate's world
    # row, the pseudo-mask oracle, S-Seg+'s evaluation): "eval" (reported figures) or "val"
    # (tuning runs). It names the world's output, so a tuning run has its own stage hashes.
    report_split: str = "eval"
    min_objects: int = 1
    max_objects: int = 3
    min_object_frac: float = 0.22  # object bounding size as a fraction of the image side
    max_object_frac: float = 0.55
    colour_jitter: float = 18.0  # per-instance RGB jitter (0-255 scale)
    noise_std: float = 6.0  # per-pixel sensor noise (0-255 scale)
    mention_prob: float = 0.85  # probability a visible object is named in the caption
    stuff_mention_prob: float = 0.6
    synonym_prob: float = 0.3  # probability a mention uses a synonym instead of the name
    wrong_prob: float = 0.1  # probability a caption also names an absent object
    distractor_prob: float = 0.6  # probability of distractor words / hashtags
    # Also write the world in the real datasets' layouts here (ovs.data.world_export: a
    # headerless cc12m.tsv, VOC2012 / Context / COCO-Object folders); "" = no export.
    export_dir: str = ""

    def validate(self) -> None:
        """Raise ``ValueError`` naming the bad ``world.*`` setting (called at config load)."""
        if self.image_size < 8 or self.num_train < 1 or self.num_eval < 0 or self.num_val < 0:
            raise ValueError(
                "world.image_size must be >= 8, world.num_train >= 1 and world.num_eval, "
                f"world.num_val >= 0, got {self.image_size}, {self.num_train}, {self.num_eval}, "
                f"{self.num_val}"
            )
        if self.report_split not in LABELLED_SPLITS:
            raise ValueError(
                f"world.report_split must be one of {LABELLED_SPLITS}, got {self.report_split!r}"
            )
        if self.report_split == "val" and self.num_val < 1:
            raise ValueError("world.report_split is val, but world.num_val is 0")
        if not 1 <= self.min_objects <= self.max_objects:
            raise ValueError(
                "world.min_objects must be >= 1 and <= world.max_objects, got "
                f"{self.min_objects} and {self.max_objects}"
            )
        if not 0.0 < self.min_object_frac <= self.max_object_frac <= 1.0:
            raise ValueError(
                "world.min_object_frac and world.max_object_frac must satisfy "
                f"0 < min <= max <= 1, got {self.min_object_frac} and {self.max_object_frac}"
            )
        for key in (
            "mention_prob",
            "stuff_mention_prob",
            "synonym_prob",
            "wrong_prob",
            "distractor_prob",
        ):
            if not 0.0 <= getattr(self, key) <= 1.0:
                raise ValueError(f"world.{key} must be in [0, 1], got {getattr(self, key)}")
        if self.colour_jitter < 0 or self.noise_std < 0:
            raise ValueError(
                "world.colour_jitter and world.noise_std must be >= 0, got "
                f"{self.colour_jitter} and {self.noise_std}"
            )


@dataclass(frozen=True)
class WorldClass:
    name: str
    synonyms: tuple[str, ...]
    plural: str
    colour: tuple[int, int, int]
    texture: str
    shape: str  # objects only; "" for stuff
    verbs: tuple[str, ...] = ()


OBJECTS: tuple[WorldClass, ...] = (
    WorldClass(
        "cat",
        ("kitten", "kitty"),
        "cats",
        (230, 140, 40),
        "stripes",
        "ellipse",
        ("sitting", "sleeping"),
    ),
    WorldClass(
        "dog", ("puppy", "doggy"), "dogs", (140, 90, 50), "spots", "circle", ("running", "playing")
    ),
    WorldClass(
        "car",
        ("automobile", "sedan"),
        "cars",
        (215, 35, 35),
        "noise",
        "wide_rect",
        ("parked", "driving"),
    ),
    WorldClass(
        "bird",
        ("sparrow", "songbird"),
        "birds",
        (245, 225, 60),
        "noise",
        "triangle",
        ("flying", "perched"),
    ),
    WorldClass(
        "boat",
        ("ship", "sailboat"),
        "boats",
        (235, 235, 235),
        "hstripes",
        "trapezoid",
        ("floating", "sailing"),
    ),
    WorldClass(
        "chair", ("seat", "armchair"), "chairs", (150, 60, 200), "grid", "square", ("standing",)
    ),
    WorldClass(
        "bottle",
        ("flask", "jar"),
        "bottles",
        (30, 165, 160),
        "vgradient",
        "tall_rect",
        ("standing", "lying"),
    ),
    WorldClass(
        "horse",
        ("pony", "stallion"),
        "horses",
        (45, 35, 30),
        "noise",
        "wide_ellipse",
        ("galloping", "grazing"),
    ),
    WorldClass(
        "person",
        ("man", "woman", "people"),
        "persons",
        (240, 160, 185),
        "noise",
        "tall_ellipse",
        ("walking", "standing"),
    ),
    WorldClass(
        "cow",
        ("cattle", "calf"),
        "cows",
        (250, 250, 250),
        "patches",
        "wide_rect",
        ("grazing", "standing"),
    ),
    WorldClass(
        "umbrella", ("parasol",), "umbrellas", (215, 0, 160), "rings", "semicircle", ("open",)
    ),
    WorldClass(
        "bus",
        ("coach", "minibus"),
        "buses",
        (165, 225, 35),
        "windows",
        "wide_rect",
        ("driving", "parked"),
    ),
)

STUFF: tuple[WorldClass, ...] = (
    WorldClass("sky", ("clouds",), "skies", (135, 190, 240), "sky", ""),
    WorldClass("grass", ("lawn", "meadow"), "grass", (70, 150, 50), "grass", ""),
    WorldClass("water", ("sea", "lake"), "water", (30, 80, 170), "waves", ""),
    WorldClass("sand", ("beach",), "sand", (215, 195, 140), "speckle", ""),
)

CLASSES: tuple[WorldClass, ...] = OBJECTS + STUFF
NUM_CLASSES = len(CLASSES)
IGNORE_INDEX = 255
BACKGROUND_NAME = "background"
_SKY, _GROUND = len(OBJECTS), (len(OBJECTS) + 1, len(OBJECTS) + 2, len(OBJECTS) + 3)


# ----------------------------------------------------------------------------- rendering


def _smooth_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Low-frequency noise in [0, 1]: bilinear upsampling of a ``cells x cells`` grid."""
    grid = rng.random((cells + 1, cells + 1))
    t = np.linspace(0, cells, size, endpoint=False)
    i = t.astype(int)
    f = t - i
    a = grid[i][:, i] * (1 - f)[None, :] + grid[i][:, i + 1] * f[None, :]
    b = grid[i + 1][:, i] * (1 - f)[None, :] + grid[i + 1][:, i + 1] * f[None, :]
    return a * (1 - f)[:, None] + b * f[:, None]


def _texture(kind: str, rng: np.random.Generator, size: int, colour: np.ndarray) -> np.ndarray:
    """An ``[size, size, 3]`` float RGB texture around ``colour``."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    base = np.broadcast_to(colour, (size, size, 3)).astype(np.float32).copy()
    if kind == "stripes":  # oriented dark stripes
        theta = rng.uniform(0, np.pi)
        period = rng.uniform(4.0, 6.0)
        s = np.sin((xx * np.cos(theta) + yy * np.sin(theta)) * 2 * np.pi / period)
        base *= (0.75 + 0.25 * (s > 0))[..., None]
    elif kind == "hstripes":
        base *= (0.7 + 0.3 * ((yy.astype(int) // 3) % 2))[..., None]
    elif kind == "spots":
        spots = _smooth_noise(rng, size, max(2, size // 5)) > 0.7
        base[spots] *= 0.45
    elif kind == "grid":
        lines = ((xx.astype(int) % 6) == 0) | ((yy.astype(int) % 6) == 0)
        base[lines] = base[lines] * 0.4 + 150
    elif kind == "vgradient":
        base *= (0.6 + 0.5 * yy / size)[..., None]
    elif kind == "patches":  # black patches on white (cow)
        patches = _smooth_noise(rng, size, max(2, size // 10)) > 0.55
        base[patches] = 25
    elif kind == "rings":
        cy, cx = rng.uniform(0, size, 2)
        r = np.hypot(yy - cy, xx - cx)
        base *= (0.65 + 0.35 * ((r.astype(int) // 3) % 2))[..., None]
    elif kind == "windows":  # a row of dark windows
        win = ((xx.astype(int) % 7) < 4) & ((yy.astype(int) % 12) < 5)
        base[win] = (40, 60, 90)
    elif kind == "sky":
        clouds = _smooth_noise(rng, size, 3)
        base = base * (0.85 + 0.25 * yy / size)[..., None]
        base += (np.clip(clouds - 0.6, 0, 1) * 250)[..., None]
    elif kind == "grass":
        blades = rng.random((size, size)) * 0.5 + 0.5 * np.sin(xx * 1.7 + rng.uniform(0, 6))
        base *= (0.75 + 0.35 * blades)[..., None]
    elif kind == "waves":
        phase = rng.uniform(0, 2 * np.pi)
        w = np.sin(yy * 1.3 + 2.0 * np.sin(xx * 0.3 + phase))
        base += (w * 22)[..., None]
    elif kind == "speckle":
        base *= (0.85 + 0.3 * rng.random((size, size)))[..., None]
    elif kind == "noise":
        base *= (0.8 + 0.4 * _smooth_noise(rng, size, max(2, size // 8)))[..., None]
    else:
        raise ValueError(f"unknown texture {kind!r}")
    return base


def _shape_mask(
    shape: str, size: int, cy: float, cx: float, h: float, w: float, angle: float
) -> np.ndarray:
    """Boolean ``[size, size]`` mask of a shape centred at (cy, cx) with extent (h, w)."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    dy, dx = yy - cy, xx - cx
    c, s = np.cos(angle), np.sin(angle)
    u, v = dx * c + dy * s, -dx * s + dy * c  # rotated coordinates
    a, b = w / 2, h / 2
    if shape in ("ellipse", "wide_ellipse", "tall_ellipse", "circle"):
        return (u / a) ** 2 + (v / b) ** 2 <= 1
    if shape in ("square", "wide_rect", "tall_rect"):
        return (np.abs(u) <= a) & (np.abs(v) <= b)
    if shape == "triangle":
        return (v <= b) & (v >= -b) & (np.abs(u) <= a * (v + b) / (2 * b))
    if shape == "trapezoid":
        return (np.abs(v) <= b) & (np.abs(u) <= a * (0.6 + 0.4 * (b - v) / (2 * b)))
    if shape == "semicircle":
        return ((u / a) ** 2 + (v / b) ** 2 <= 1) & (v <= 0.2 * b)
    raise ValueError(f"unknown shape {shape!r}")


_ASPECT = {
    "wide_rect": (0.55, 1.0),
    "tall_rect": (1.0, 0.4),
    "wide_ellipse": (0.6, 1.0),
    "tall_ellipse": (1.0, 0.55),
    "ellipse": (0.75, 1.0),
    "semicircle": (0.8, 1.0),
}


def _jitter(rng: np.random.Generator, colour: tuple[int, int, int], amount: float) -> np.ndarray:
    return np.asarray(colour, np.float32) + rng.normal(0, amount, 3).astype(np.float32)


def render(cfg: WorldConfig, index: int, split: str) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """Render one image deterministically from ``(cfg.seed, split, index)``.

    Returns ``(image uint8 [S,S,3], label uint8 [S,S], object class ids in paint order)``.
    """
    split_code = SPLITS.index(split)  # train 0, eval 1, val 2: one seed stream per split
    rng = np.random.default_rng([cfg.seed, split_code, index])
    size = cfg.image_size
    yy, xx = np.mgrid[0:size, 0:size]
    # Stuff layout: an upper region (sky most of the time) and one or two ground regions with
    # wavy boundaries.
    upper = _SKY if rng.random() < 0.75 else int(rng.choice(_GROUND))
    grounds = [int(g) for g in rng.choice(_GROUND, size=2, replace=False)]
    horizon = rng.uniform(0.25, 0.6) * size
    wave = rng.uniform(0.5, 3.0) * np.sin(xx * rng.uniform(0.1, 0.4) + rng.uniform(0, 6))
    label = np.where(yy < horizon + wave, upper, grounds[0]).astype(np.uint8)
    if rng.random() < 0.4:
        second = horizon + rng.uniform(0.2, 0.35) * size + wave * 0.5
        label[(yy > second) & (label != upper)] = grounds[1]
    image = np.zeros((size, size, 3), np.float32)
    for cid in np.unique(label):
        cls = CLASSES[cid]
        tex = _texture(cls.texture, rng, size, _jitter(rng, cls.colour, cfg.colour_jitter))
        image[label == cid] = tex[label == cid]
    # Objects, painted back to front (later ones occlude earlier ones).
    n_obj = int(rng.integers(cfg.min_objects, cfg.max_objects + 1))
    objects: list[int] = []
    for _ in range(n_obj):
        cid = int(rng.integers(0, len(OBJECTS)))
        cls = CLASSES[cid]
        extent = rng.uniform(cfg.min_object_frac, cfg.max_object_frac) * size
        ah, aw = _ASPECT.get(cls.shape, (1.0, 1.0))
        h, w = extent * ah, extent * aw
        cy = rng.uniform(h * 0.3, size - h * 0.3)
        cx = rng.uniform(w * 0.3, size - w * 0.3)
        angle = rng.uniform(-0.35, 0.35)
        mask = _shape_mask(cls.shape, size, cy, cx, h, w, angle)
        if mask.sum() < 12:
            continue
        tex = _texture(cls.texture, rng, size, _jitter(rng, cls.colour, cfg.colour_jitter))
        image[mask] = tex[mask]
        label[mask] = cid
        objects.append(cid)
    image += rng.normal(0, cfg.noise_std, image.shape) * (rng.random() * 0.8 + 0.6)
    image *= rng.uniform(0.85, 1.1)  # global brightness
    return np.clip(image, 0, 255).astype(np.uint8), label, objects


# ----------------------------------------------------------------------------- captions

_ADJ_COUNT = {2: "two", 3: "three", 4: "four"}
_ADJECTIVES = ("small", "big", "cute", "old", "little", "beautiful", "lonely", "happy")
_DISTRACTORS = (
    "stock photo",
    "royalty free image",
    "close up",
    "free download",
    "view",
    "photography",
    "wallpaper",
    "illustration",
    "vintage postcard",
    "summer day",
)
_HASHTAGS = ("#travel", "#nature", "#instagood", "#weekend", "#photooftheday", "#love")


def _mention(cls: WorldClass, count: int, rng: np.random.Generator, cfg: WorldConfig) -> str:
    word = cls.name
    if rng.random() < cfg.synonym_prob:
        word = str(rng.choice(cls.synonyms))
    if count > 1:
        plural = cls.plural if word == cls.name else (word if word == "people" else word + "s")
        if word == "people":
            plural = "people"
        return f"{_ADJ_COUNT.get(count, 'many')} {plural}"
    if rng.random() < 0.35:
        word = f"{rng.choice(_ADJECTIVES)} {word}"
    if rng.random() < 0.3 and cls.verbs:
        word = f"{word} {rng.choice(cls.verbs)}"
    article = "an" if word[0] in "aeiou" else "a"
    return f"{article} {word}" if rng.random() < 0.8 else word


def caption(cfg: WorldConfig, index: int, label: np.ndarray, objects: list[int]) -> str:
    """Alt-text style caption for a rendered image (a subset of what is visible, never masks)."""
    rng = np.random.default_rng([cfg.seed, 7, index])
    counts: dict[int, int] = {}
    for cid in objects:
        if (label == cid).sum() >= 8:  # fully occluded objects are not "visible"
            counts[cid] = counts.get(cid, 0) + 1
    things = [
        _mention(CLASSES[c], n, rng, cfg)
        for c, n in counts.items()
        if rng.random() < cfg.mention_prob
    ]
    if rng.random() < cfg.wrong_prob:  # partly wrong: name an absent object
        absent = [c for c in range(len(OBJECTS)) if c not in counts]
        things.append(_mention(CLASSES[int(rng.choice(absent))], 1, rng, cfg))
    stuff_ids = [int(c) for c in np.unique(label) if c >= len(OBJECTS)]
    stuff = [
        str(rng.choice((CLASSES[c].name,) + CLASSES[c].synonyms))
        for c in stuff_ids
        if rng.random() < cfg.stuff_mention_prob
    ]
    rng.shuffle(things)
    if not things and not stuff:
        things = [str(rng.choice(_DISTRACTORS))]
    text = (
        " and ".join(things) if len(things) <= 2 else ", ".join(things[:-1]) + " and " + things[-1]
    )
    if stuff:
        prep = str(rng.choice(("on the", "near the", "by the", "in front of the", "with")))
        text = f"{text} {prep} {' and '.join(stuff)}" if text else f"the {' and '.join(stuff)}"
    text = text.strip()
    if rng.random() < cfg.distractor_prob:
        form = int(rng.integers(0, 4))
        extra = str(rng.choice(_DISTRACTORS))
        if form == 0:
            text = f"{extra} of {text}"
        elif form == 1:
            text = f"{text} - {extra}"
        elif form == 2:
            text = f"{text} {' '.join(rng.choice(_HASHTAGS, size=2, replace=False))}"
        else:
            text = f"{text.capitalize()}."
    return text


# ----------------------------------------------------------------------------- files


def class_lines(with_background: bool = False) -> list[str]:
    """Lines of a class-name file: canonical name first, synonyms after, comma-separated."""
    lines = [",".join((c.name,) + c.synonyms) for c in CLASSES]
    if with_background:
        return [BACKGROUND_NAME] + lines[: len(OBJECTS)]
    return lines


def to_background_labels(label: np.ndarray) -> np.ndarray:
    """Map a full world label map to the with-background benchmark (stuff → 0, objects + 1)."""
    out = np.where(label < len(OBJECTS), label.astype(np.int32) + 1, 0)
    out[label == IGNORE_INDEX] = IGNORE_INDEX
    return out.astype(np.uint8)


def _write_one(cfg: WorldConfig, root: Path, split: str, index: int) -> dict:
    image, label, objects = render(cfg, index, split)
    sample_id = f"{index:06d}"
    # strings, not Path: see ovs.io.atomic_write_bytes (one file per sample)
    folder = os.path.join(os.path.realpath(root), split)
    img_path = os.path.join(folder, "images", f"{sample_id}.png")
    atomic_write_bytes(img_path, png_bytes(image))
    atomic_write_bytes(os.path.join(folder, "labels", f"{sample_id}.png"), png_bytes(label))
    return {
        "id": sample_id,
        "url": "file://" + urllib.parse.quote(img_path),
        "caption": caption(cfg, index + SPLITS.index(split) * 10**7, label, objects),
    }


def generate(cfg: WorldConfig, root: str | Path, workers: int = 4, progress=None) -> dict:
    """Generate the world under ``root``; returns counts. Idempotent and deterministic."""
    import pyarrow as pa

    root = Path(root)
    columns = ("url", "caption", "id")
    schema = pa.schema([(c, pa.string()) for c in columns])
    sizes = {"train": cfg.num_train, "eval": cfg.num_eval, "val": cfg.num_val}
    with ThreadPoolExecutor(workers) as pool:
        for split in SPLITS:
            n = sizes[split]
            # URL rows go to the parquet CHUNK at a time, and only CHUNK renders are queued:
            # memory does not grow with the split
            with atomic_parquet_writer(root / split / "urls.parquet", schema) as writer:
                for start in range(0, n, CHUNK):
                    ids = range(start, min(start + CHUNK, n))
                    rows = list(pool.map(lambda k, s=split: _write_one(cfg, root, s, k), ids))
                    writer.write_table(
                        pa.table({c: [r[c] for r in rows] for c in columns}, schema=schema)
                    )
                    if progress is not None:
                        progress(ids.stop, n, f"{split} images")
    for split in SPLITS:
        atomic_write_text(root / split / "classes.txt", "\n".join(class_lines()) + "\n")
        atomic_write_text(root / split / "classes_bg.txt", "\n".join(class_lines(True)) + "\n")
    counts = {"train_images": cfg.num_train, "eval_images": cfg.num_eval}
    if cfg.num_val:
        counts["val_images"] = cfg.num_val
    atomic_write_json(
        root / "world.json",
        {
            "config": asdict(cfg),
            "counts": counts,
            "classes": class_lines(),
            "ignore_index": IGNORE_INDEX,
        },
    )
    return counts


def report_split(root: str | Path) -> str:
    """The labelled split world metrics are computed on (``world.report_split`` of the world
    generated at ``root``; ``"eval"`` for a world written before the key existed, or laid out
    by hand without a ``world.json``)."""
    path = Path(root) / "world.json"
    if not path.is_file():
        return "eval"
    return str(json.loads(path.read_text())["config"].get("report_split", "eval"))


def class_names(root: str | Path, with_background: bool = False) -> list[list[str]]:
    """Read a world class-name file: a list of synonym lists, canonical name first."""
    name = "classes_bg.txt" if with_background else "classes.txt"
    lines = (Path(root) / "eval" / name).read_text().splitlines()
    return [[s.strip() for s in line.split(",") if s.strip()] for line in lines if line.strip()]


def split_ids(root: str | Path, split: str, limit: int | None = None) -> list[str]:
    """The sample ids of a split (its ``images/*.png`` stems), sorted; with ``limit`` the first
    ``limit`` found in one pass that holds no more than ``limit`` names."""
    folder = Path(root) / split / "images"
    with os.scandir(folder) as entries:
        names = (e.name[:-4] for e in entries if e.name.endswith(".png"))
        return sorted(names) if limit is None else heapq.nsmallest(limit, names)


def iter_split(root: str | Path, split: str, limit: int | None = None) -> Iterator[dict]:
    """The samples of a split one at a time, sorted by id (see :func:`load_split`)."""
    folder = Path(root) / split
    for sid in split_ids(root, split, limit):
        yield {
            "id": sid,
            "image": read_image(folder / "images" / f"{sid}.png"),
            "label": read_label_png(folder / "labels" / f"{sid}.png"),
        }


def load_split(root: str | Path, split: str, limit: int | None = None) -> list[dict]:
    """Load a split as ``[{"id", "image": uint8 [H,W,3], "label": uint8 [H,W]}]``, sorted by id."""
    return list(iter_split(root, split, limit))
