"""Training ingest as pure per-batch functions: join by key, plan, decode + augment, assemble.

The Ray Data plan in ``pipelines/ingest.py`` runs these; nothing here imports Ray, so every
step is unit-tested on its own and the same plan can be evaluated in-process
(:func:`iter_local_blocks`) to check that Ray changes nothing.

Data flow for one rank and one epoch::

    shards_for_rank ─► join_shard (tar index + masks/texts parquet, per shard, no pixels)
                  └──► plan_epoch (seeded shard order, windows, seeded permutation per window,
                       chunks of ``chunk_rows`` rows)  ─► Chunk items
    Chunk ─► decode_chunk (CPU task: read JPEG bytes by tar offset, decode at reduced DCT
             scale, random resized crop + flip of image and pseudo-mask grid) ─► block
    blocks ─► BatchAssembler (exactly ``batch_size`` rows per batch, counts) ─► IngestBatch

Shuffling is a full permutation inside windows of ``window_shards`` consecutive shards (of the
epoch's seeded shard order): a bounded-window shuffle whose memory is a few chunks, never a
window of pixels, because rows are read by tar offset in permuted order. Everything random is
seeded: the shard order and window permutations from ``(seed, rank, epoch)``, each sample's
crop and flip from ``(seed, epoch, key)``, so the same seed gives the same batches in the same
order on any machine and load, and a resumed iterator (``plan_epoch(..., skip_rows=...)``)
continues exactly where an uninterrupted one would be, without decoding what it skips.

Bad samples never crash and are counted: a missing pseudo-mask, text or image member, and a
caption the CC4M filter drops, are known from metadata and removed at planning time (their
counts come with the plan); an image that fails to decode is known only in the task, where its
row is flagged, and :class:`BatchAssembler` fills its slot with the previous good sample of the
same batch, so batch positions depend on metadata alone and resume stays exact.

Pseudo-masks and augmentation, compared with the paper: S-Seg computes pseudo-masks on each
augmented batch (DINO + K-means on the crop the model sees). Here the pseudo-mask is computed
once per image, on the whole image, by the ``pseudo_masks`` stage, and its label grid is
cropped and resized (pixel-centre nearest) with the image. The two differ in that a crop's
segments are then pieces of whole-image clusters: a small crop may contain a fragment of a
segment, or fewer than K segments, and K-means never re-clusters at the crop's scale; cluster
boundaries are at the grid's resolution upsampled, not the crop's. Computing masks per batch
would put a DINO forward + K-means into the training step (about the cost of the pseudo-mask
stage, per epoch); it is not offered as an option here, because it is not cheap.
"""

from __future__ import annotations

import io
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ovs.codecs import decode_label_png, read_keyed
from ovs.data.augment import AugmentConfig, sample_crop
from ovs.data.shards import shard_members
from ovs.pseudo_masks.masker import image_seed

OK = "ok"
# Metadata reasons, in the order the join checks them (train_data.iter_samples' order).
NO_IMAGE = "undecodable"  # no image member: counted with images that fail to decode
NO_PSEUDO_MASK = "no_pseudo_mask"
NO_TEXT = "no_text"
FILTERED_CC4M = "filtered_cc4m"
UNDECODABLE = "undecodable"
DRAFTS = ("image", "crop", "off")


@dataclass
class IngestConfig:
    """How one rank's batches are made.

    ``draft`` picks the JPEG DCT scale (1, 1/2, 1/4, 1/8) the image is decoded at: ``image``
    decodes the whole image at the smallest scale that keeps it at least ``size`` on each side
    (a 512-px image at 1/2: the resolution today's loader resizes every image to), ``crop``
    the smallest that keeps the *crop* at least ``size`` (full resolution for small crops; the
    torchvision behaviour, slower), ``off`` always decodes at full size.
    """

    augment: AugmentConfig = field(default_factory=AugmentConfig)
    batch_size: int = 32
    window_shards: int = 2  # shuffle window: a full permutation over this many shards
    chunk_rows: int = 128  # rows per decode task (one Ray Data block, ~25 MB at 224 px)
    require_keep: bool = False  # CC4M entity filter
    draft: str = "image"
    # Consecutive epochs are planned into one Ray dataset until it holds this many rows:
    # Ray Data's per-dataset start-up (~0.1 CPU-s in the rank's process, ~0.3 CPU-s in all,
    # and a ~0.4 s bubble with no task running, measured on a 2-core VM) is then paid once
    # per this many rows, not once per epoch. An epoch larger than this is one dataset.
    dataset_rows: int = 8192

    def __post_init__(self) -> None:
        if self.draft not in DRAFTS:
            raise ValueError(f"ingest draft must be one of {DRAFTS}, got {self.draft!r}")
        if min(self.batch_size, self.window_shards, self.chunk_rows, self.dataset_rows) < 1:
            raise ValueError(
                "ingest batch_size, window_shards, chunk_rows and dataset_rows must be >= 1"
            )


# ----------------------------------------------------------------------------- join by key


@dataclass
class ShardTable:
    """One shard's samples joined by key, in tar order, without pixels.

    ``status[i]`` is ``ok`` or the metadata reason sample ``i`` is unusable; ``offset/size``
    locate its JPEG bytes in the tar (size 0: no image member).
    """

    path: str
    keys: list[str]
    offset: np.ndarray  # int64 [n]
    size: np.ndarray  # int64 [n]
    label_png: list[bytes | None]
    text: list[str]
    nouns: list[tuple[str, ...]]
    status: np.ndarray  # object [n]

    @property
    def good(self) -> np.ndarray:
        return self.status == OK

    def counts(self) -> Counter:
        return Counter(str(s) for s in self.status if s != OK)


def tar_index(path: str | Path, ext: str = "jpg") -> tuple[list[str], np.ndarray, np.ndarray]:
    """Keys in tar order with the data offset and size of each key's ``ext`` member (0, 0
    when it has none). Reads headers only (:func:`ovs.data.shards.shard_members`: a tar cut
    short or corrupt raises :class:`~ovs.data.shards.ShardError` naming the file, never offsets
    past its end)."""
    keys: list[str] = []
    offsets: list[int] = []
    sizes: list[int] = []
    for info in shard_members(path):
        if not info.isfile():
            continue
        key, _, member = info.name.rsplit("/", 1)[-1].partition(".")
        if not keys or keys[-1] != key:
            keys.append(key)
            offsets.append(0)
            sizes.append(0)
        if member == ext:
            offsets[-1], sizes[-1] = info.offset_data, info.size
    return keys, np.asarray(offsets, np.int64), np.asarray(sizes, np.int64)


def join_shard(
    shard: str | Path, masks_dir: str | Path, texts_dir: str | Path, require_keep: bool = False
) -> ShardTable:
    """Join shard ``<stem>.tar`` with ``masks_dir/<stem>.parquet`` (``key,label_png,status``)
    and ``texts_dir/<stem>.parquet`` (``key,text,keep,status[,nouns]``) by key: a shard-level
    map, no global join, rows in key order. A missing file means every sample lacks that part."""
    shard = Path(shard)
    keys, offset, size = tar_index(shard)
    # Key order, not tar order: img2dataset writes a shard's members as their downloads
    # finish, which differs from run to run; the plan and its batches must not.
    order = sorted(range(len(keys)), key=keys.__getitem__)
    keys, offset, size = [keys[i] for i in order], offset[order], size[order]
    masks = read_keyed(Path(masks_dir) / f"{shard.stem}.parquet", ["key", "label_png"])
    texts = read_keyed(Path(texts_dir) / f"{shard.stem}.parquet", ["key", "text", "keep", "nouns"])
    pngs: list[bytes | None] = []
    captions: list[str] = []
    nouns: list[tuple[str, ...]] = []
    status = np.empty(len(keys), dtype=object)
    for i, key in enumerate(keys):
        m, t = masks.get(key), texts.get(key)
        png = m.get("label_png") if m else None
        text = (t.get("text") or "") if t else ""
        pngs.append(png)
        captions.append(text)
        nouns.append(tuple((t.get("nouns") or ()) if t else ()))
        if png is None:
            status[i] = NO_PSEUDO_MASK
        elif not text:
            status[i] = NO_TEXT
        elif require_keep and not t.get("keep"):  # type: ignore[union-attr]
            status[i] = FILTERED_CC4M
        elif size[i] == 0:
            status[i] = NO_IMAGE
        else:
            status[i] = OK
    return ShardTable(str(shard), keys, offset, size, pngs, captions, nouns, status)


@lru_cache(maxsize=8)
def cached_join(shard: str, masks_dir: str, texts_dir: str, require_keep: bool) -> ShardTable:
    """:func:`join_shard` memoised per process: a decode task reuses its window's tables for
    every chunk of the window (Ray reuses worker processes)."""
    return join_shard(shard, masks_dir, texts_dir, require_keep)


# ----------------------------------------------------------------------------- the plan


@dataclass(frozen=True)
class Chunk:
    """One decode task: rows ``sel`` (indices into the concatenation of the window's shard
    tables) that sit at positions ``start, start+1, ...`` of the epoch's row stream."""

    epoch: int
    window: int
    start: int
    shards: tuple[str, ...]
    sel: tuple[int, ...]


@dataclass
class EpochPlan:
    chunks: list[Chunk]
    rows: int  # usable rows in the epoch (after metadata filtering)
    counts: Counter  # metadata-bad samples of the windows the plan covers, by reason


def shard_order(n: int, seed: int, rank: int, epoch: int) -> np.ndarray:
    """The epoch's shard order for one rank (a seeded permutation)."""
    return np.random.default_rng([seed, rank, epoch, 0]).permutation(n)


def plan_epoch(
    shards: Sequence[str],
    good: Sequence[np.ndarray],
    counts: Sequence[Counter],
    cfg: IngestConfig,
    seed: int,
    rank: int,
    epoch: int,
    skip_rows: int = 0,
) -> EpochPlan:
    """Chunks of one epoch, in stream order, starting ``skip_rows`` usable rows in.

    ``good[i]`` (bool per sample of ``shards[i]``) and ``counts[i]`` come from
    :func:`join_shard`. Windows wholly before ``skip_rows`` produce no chunk (nothing is
    read), the window holding it starts mid-permutation.
    """
    order = shard_order(len(shards), seed, rank, epoch)
    chunks: list[Chunk] = []
    bad: Counter = Counter()
    pos = 0
    k = cfg.window_shards
    for w, first in enumerate(range(0, len(order), k)):
        members = [int(i) for i in order[first : first + k]]
        offsets = np.cumsum([0] + [len(good[i]) for i in members])
        rows = np.concatenate([np.flatnonzero(good[i]) + offsets[j] for j, i in enumerate(members)])
        rows = rows[np.random.default_rng([seed, rank, epoch, 1, w]).permutation(len(rows))]
        end = pos + len(rows)
        if end > skip_rows:
            for i in members:
                bad.update(counts[i])
            begin = max(skip_rows - pos, 0)
            paths = tuple(shards[i] for i in members)
            for c in range(begin, len(rows), cfg.chunk_rows):
                sel = tuple(int(r) for r in rows[c : c + cfg.chunk_rows])
                chunks.append(Chunk(epoch, w, pos + c, paths, sel))
        pos = end
    return EpochPlan(chunks, pos, bad)


# ----------------------------------------------------------------------------- decode + augment


def _nearest(dst: np.ndarray, n_in: int, n_out: int) -> np.ndarray:
    """Source index of output pixels ``dst`` under torch's ``nearest-exact`` (float32 scale)."""
    scale = np.float32(n_in) / np.float32(n_out)
    src = np.floor(((dst + 0.5) * np.float64(scale)).astype(np.float32))
    return np.minimum(src.astype(np.int64), n_in - 1)


def crop_labels(
    grid: np.ndarray, image_hw: tuple[int, int], box: tuple[int, int, int, int], size: int
) -> np.ndarray:
    """The label grid ``[gh, gw]`` (covering the whole ``image_hw`` image) cropped to ``box``
    and resized to ``[size, size]``: exactly :func:`ovs.data.augment.augment_pair`'s upsample
    to the image, crop and ``nearest-exact`` resize, composed into one gather."""
    (height, width), (top, left, h, w) = image_hw, box
    gh, gw = grid.shape
    out = np.arange(size)
    rows = top + _nearest(out, h, size)
    cols = left + _nearest(out, w, size)
    if gh != height:
        rows = _nearest(rows, gh, height)
    if gw != width:
        cols = _nearest(cols, gw, width)
    return grid[rows][:, cols]  # two 1-D takes: ~10x faster than one 2-D fancy gather


# Below this reduction factor the crop is resized with plain bilinear (OpenCV, one pass);
# antialiasing would widen the filter by at most this factor and changes almost nothing.
PLAIN_BILINEAR_MAX_REDUCTION = 1.25
_CV2_REDUCED = {1: "IMREAD_COLOR", 2: "IMREAD_REDUCED_COLOR_2", 4: "IMREAD_REDUCED_COLOR_4",
                8: "IMREAD_REDUCED_COLOR_8"}  # fmt: skip


def _resize_box(src: np.ndarray, box: tuple[float, float, float, float], size: int) -> np.ndarray:
    """Crop ``box`` (fractional pixels of ``src`` uint8 [h,w,3]) resized to ``[size,size,3]``:
    antialiased bilinear (PIL) when it reduces by more than ``PLAIN_BILINEAR_MAX_REDUCTION``,
    else plain bilinear with the same pixel-centre mapping (``cv2.warpAffine``, faster)."""
    x0, y0, x1, y1 = box
    fx, fy = (x1 - x0) / size, (y1 - y0) / size
    if max(fx, fy) > PLAIN_BILINEAR_MAX_REDUCTION:
        out = Image.fromarray(src).resize((size, size), Image.Resampling.BILINEAR, box=box)
        return np.asarray(out, dtype=np.uint8)
    import cv2

    m = np.array([[fx, 0.0, x0 + 0.5 * fx - 0.5], [0.0, fy, y0 + 0.5 * fy - 0.5]], np.float64)
    return cv2.warpAffine(
        src,
        m,
        (size, size),
        flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
        borderMode=cv2.BORDER_REPLICATE,
    )


def _dct_scale(width: int, height: int, want: tuple[int, int]) -> int:
    """PIL ``draft``'s choice: the largest of 1/8, 1/4, 1/2, 1 keeping ``>= want`` px."""
    scale = min(width // max(want[0], 1), height // max(want[1], 1))
    return max(d for d in (1, 2, 4, 8) if d <= max(scale, 1))


# Start-of-frame markers (baseline, extended, progressive, lossless; Huffman or arithmetic):
# every 0xC0-0xCF except DHT (C4), JPG (C8) and DAC (CC).
_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
_NO_LENGTH = frozenset(range(0xD0, 0xD8)) | {0x01}  # RSTn, TEM: markers without a length


def jpeg_size(data: bytes) -> tuple[int, int] | None:
    """``(width, height)`` of a JPEG from its start-of-frame segment, walking the marker
    segments before it (a few bytes read, no Python image object: PIL's header parse costs
    more than a tenth of the whole sample). None when ``data`` does not start like a JPEG
    (PIL's test: ``FF D8 FF``) or the walk finds no well-formed frame header; the caller
    then asks PIL, so this decides nothing PIL would decide differently on a valid file."""
    if data[:3] != b"\xff\xd8\xff":
        return None
    i, n = 2, len(data)
    while i + 4 <= n:
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte before a marker
            i += 1
            continue
        if marker in _NO_LENGTH:
            i += 2
            continue
        length = (data[i + 2] << 8) | data[i + 3]
        if marker in _SOF:
            if length < 8 or i + 9 > n:
                return None
            height = (data[i + 5] << 8) | data[i + 6]
            width = (data[i + 7] << 8) | data[i + 8]
            return (width, height) if width and height else None
        if marker in (0xD9, 0xDA) or length < 2:  # end of image / scan before any frame
            return None
        i += 2 + length
    return None


def decode_rgb(data: bytes, denom: int) -> np.ndarray | None:
    """Image bytes -> uint8 RGB [h,w,3], JPEGs decoded at DCT scale ``1/denom`` (libjpeg-turbo
    through OpenCV, EXIF orientation ignored as PIL does); other formats, and anything OpenCV
    refuses, through PIL at full size; None if undecodable."""
    import cv2

    flag = getattr(cv2, _CV2_REDUCED[denom]) | cv2.IMREAD_IGNORE_ORIENTATION
    bgr = cv2.imdecode(np.frombuffer(data, np.uint8), flag) if data else None
    if bgr is not None and bgr.ndim == 3:
        return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
    try:
        with Image.open(io.BytesIO(data)) as im:
            return np.asarray(im.convert("RGB"), dtype=np.uint8)
    except Exception:  # noqa: BLE001 - PIL raises many types; a bad image is counted
        return None


def augment_jpeg(
    data: bytes, grid: np.ndarray, cfg: AugmentConfig, rng: np.random.Generator, draft: str
) -> tuple[np.ndarray, np.ndarray] | None:
    """Decode + random resized crop + flip of one sample, image and label grid alike.

    The crop box and flip are drawn exactly as :func:`ovs.data.augment.augment_pair` draws
    them (box in full-resolution pixels from the header, then the flip). A JPEG is decoded
    at the DCT scale ``draft`` asks for and the crop resized straight from it (one pass with
    a fractional source box, no full-image resize; see :func:`_resize_box`).
    Returns ``(image uint8 [3,S,S], label uint8 [S,S])`` or None when it does not decode.
    """
    s = cfg.size
    header = jpeg_size(data)
    if header is not None:
        (width, height), is_jpeg = header, True
    else:  # not a baseline/progressive JFIF stream we can read by hand: ask PIL
        try:
            with Image.open(io.BytesIO(data)) as im:  # header only
                width, height, is_jpeg = im.width, im.height, im.format == "JPEG"
        except Exception:  # noqa: BLE001
            return None
    top, left, h, w = box = sample_crop(height, width, cfg.scale, cfg.ratio, rng)
    flip = rng.uniform() < cfg.hflip
    denom = 1
    if is_jpeg and draft != "off":
        want = (s, s) if draft == "image" else (-(-s * width // w), -(-s * height // h))
        denom = _dct_scale(width, height, want)
    src = decode_rgb(data, denom)
    if src is None:
        return None
    sx, sy = src.shape[1] / width, src.shape[0] / height  # full-size fallback: 1
    if denom > 1 and src.shape[1] == -(-width // denom):
        sx = sy = 1.0 / denom  # libjpeg rounds the size up: the exact scale is 1/denom
    image = _resize_box(src, (left * sx, top * sy, (left + w) * sx, (top + h) * sy), s)
    label = crop_labels(grid, (height, width), box, s)
    if flip:
        image, label = image[:, ::-1], label[:, ::-1]
    return image.transpose(2, 0, 1), label


def decode_label(png: bytes) -> np.ndarray | None:
    """Label PNG (mode L) -> uint8 [h, w] through OpenCV (no PIL image round trip); PIL's
    :func:`ovs.pseudo_masks.masker.decode_label_png` for what OpenCV does not read as one channel."""
    import cv2

    grid = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_UNCHANGED)
    if grid is not None and grid.ndim == 2 and grid.dtype == np.uint8:
        return grid
    try:
        return decode_label_png(png)
    except Exception:  # noqa: BLE001 - a corrupt label PNG is an undecodable sample
        return None


def sample_rng(seed: int, epoch: int, key: str) -> np.random.Generator:
    """The generator of one sample's augmentation: a function of (seed, epoch, key) only."""
    return np.random.default_rng([image_seed(seed, key), epoch])


def decode_chunk(
    chunk: Chunk,
    tables: Sequence[ShardTable],
    cfg: IngestConfig,
    seed: int,
) -> dict[str, np.ndarray]:
    """One block: the chunk's rows decoded and augmented, in ``sel`` order.

    ``tables`` are the window's shard tables (``chunk.shards`` order). Columns: ``image``
    uint8 [n,3,S,S], ``label`` uint8 [n,S,S], ``ok`` bool [n] (False: did not decode, pixels
    zero), ``epoch`` and ``pos`` int64 [n] (the epoch, and the position in its stream: one
    dataset may carry several epochs), ``key``, ``text`` (str) and ``nouns`` (list of str)
    object arrays.
    """
    s, n = cfg.augment.size, len(chunk.sel)
    images = np.zeros((n, 3, s, s), np.uint8)
    labels = np.zeros((n, s, s), np.uint8)
    ok = np.zeros(n, bool)
    keys, texts, nouns = (np.empty(n, dtype=object) for _ in range(3))
    starts = np.cumsum([0] + [len(t.keys) for t in tables])
    files = [open(t.path, "rb") for t in tables]  # noqa: SIM115 - closed below
    try:
        for j, row in enumerate(chunk.sel):
            t = int(np.searchsorted(starts, row, side="right")) - 1
            table, i = tables[t], row - int(starts[t])
            keys[j], texts[j], nouns[j] = table.keys[i], table.text[i], list(table.nouns[i])
            f = files[t]
            f.seek(int(table.offset[i]))
            data = f.read(int(table.size[i]))
            png = table.label_png[i]
            grid = decode_label(png) if png else None
            rng = sample_rng(seed, chunk.epoch, table.keys[i])
            out = (
                augment_jpeg(data, grid, cfg.augment, rng, cfg.draft) if grid is not None else None
            )
            if out is not None:
                images[j], labels[j] = out
                ok[j] = True
    finally:
        for f in files:
            f.close()
    return {
        "image": images,
        "label": labels,
        "ok": ok,
        "epoch": np.full(n, chunk.epoch, dtype=np.int64),
        "pos": np.arange(chunk.start, chunk.start + n, dtype=np.int64),
        "key": keys,
        "text": texts,
        "nouns": nouns,
    }


def iter_local_blocks(
    chunks: Iterable[Chunk], masks_dir: str, texts_dir: str, cfg: IngestConfig, seed: int
) -> Iterator[dict[str, np.ndarray]]:
    """The plan evaluated in this process, one chunk after another (the reference the Ray Data
    plan is tested against, and a loader for single-process use)."""
    for chunk in chunks:
        tables = [cached_join(p, masks_dir, texts_dir, cfg.require_keep) for p in chunk.shards]
        yield decode_chunk(chunk, tables, cfg, seed)


# ----------------------------------------------------------------------------- assemble


@dataclass
class IngestBatch:
    """What the training loop gets: ``images`` uint8 [B,3,S,S] (``as_float`` on the device),
    ``labels`` int64 [B,S,S], ``texts``, ``nouns`` and ``keys`` per sample, and where the
    batch sits: batch ``index`` of ``epoch`` (resume after it with ``(epoch, index + 1)``)."""

    images: torch.Tensor
    labels: torch.Tensor
    texts: list[str]
    nouns: list[tuple[str, ...]]
    keys: list[str]
    epoch: int
    index: int


def as_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 [B,3,S,S] -> float32 in [0, 1] (what ``make_batch`` gave); call after ``.to``."""
    return images.float().div_(255.0)


class BatchAssembler:
    """Cuts a stream of blocks into batches of exactly ``batch_size`` rows and tallies.

    Rows arrive in epoch-stream order (``pos`` is checked, so a reordering executor fails
    loudly instead of silently changing the data order). A row that did not decode is
    replaced by the previous good row of its batch (the next one if it is first) and counted
    ``undecodable``: batch boundaries then depend on metadata only. A batch with no good row
    is dropped and counted ``empty_batch``. The epoch's last partial batch is dropped
    (``epoch_remainder``); ``counts["used"]`` counts delivered rows.
    """

    def __init__(self, batch_size: int, counts: Counter | None = None) -> None:
        self.batch_size = batch_size
        self.counts: Counter = counts if counts is not None else Counter()

    def batches(
        self, blocks: Iterable[dict[str, np.ndarray]], epoch: int, first_pos: int, first_index: int
    ) -> Iterator[IngestBatch]:
        b = self.batch_size
        parts: list[dict[str, np.ndarray]] = []
        have, expect, index = 0, first_pos, first_index
        for block in blocks:
            n = len(block["pos"])
            if n == 0:
                continue
            if int(block["pos"][0]) != expect:
                raise RuntimeError(
                    f"ingest rows out of order: got {block['pos'][0]}, want {expect}"
                )
            expect += n
            parts.append(block)
            have += n
            while have >= b:
                batch, parts, have = self._take(parts, b)
                out = self._batch(batch, epoch, index)
                if out is not None:
                    yield out
                index += 1
        self.counts["epoch_remainder"] += have

    @staticmethod
    def _take(parts: list[dict], b: int) -> tuple[dict[str, np.ndarray], list[dict], int]:
        """The first ``b`` rows of ``parts`` (fresh arrays) and the rest (views of the
        parts, not copied): each row's pixels are copied once, into its batch, however many
        batches a block holds (concatenating whole parts per batch copied a 128-row block's
        pixels 2.5 times)."""
        head_parts, rest, need = [], [], b
        for p in parts:
            n = len(p["pos"])
            if need >= n:
                head_parts.append(p)
                need -= n
            elif need > 0:
                head_parts.append({k: v[:need] for k, v in p.items()})
                rest.append({k: v[need:] for k, v in p.items()})
                need = 0
            else:
                rest.append(p)
        head = {k: np.concatenate([p[k] for p in head_parts]) for k in head_parts[0]}
        return head, rest, sum(len(p["pos"]) for p in rest)

    def _batch(self, cols: dict[str, np.ndarray], epoch: int, index: int) -> IngestBatch | None:
        ok = cols["ok"]
        good = np.flatnonzero(ok)
        if len(good) == 0:
            self.counts["empty_batch"] += 1
            self.counts[UNDECODABLE] += len(ok)
            return None
        if len(good) < len(ok):
            self.counts[UNDECODABLE] += int(len(ok) - len(good))
            src = np.arange(len(ok))
            prev = np.maximum.accumulate(np.where(ok, src, -1))  # previous good row
            cols = {k: v[np.where(prev >= 0, prev, good[0])] for k, v in cols.items()}
        self.counts["used"] += len(good)
        return IngestBatch(
            images=torch.from_numpy(np.ascontiguousarray(cols["image"])),
            labels=torch.from_numpy(cols["label"].astype(np.int64)),
            texts=[str(t) for t in cols["text"]],
            nouns=[tuple(str(x) for x in n) for n in cols["nouns"]],
            keys=[str(k) for k in cols["key"]],
            epoch=epoch,
            index=index,
        )


def epoch_position(step: int, per_epoch: int) -> tuple[int, int]:
    """``(epoch, batch index)`` of global batch ``step`` when every epoch has ``per_epoch``
    batches (``EpochPlan.rows // batch_size``: true whenever no batch loses all its rows)."""
    if per_epoch < 1:
        raise ValueError("no full batch in an epoch")
    return step // per_epoch, step % per_epoch
