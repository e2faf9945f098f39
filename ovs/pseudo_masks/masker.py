"""Pseudo-mask generator (S-Seg §3.3.1): dense features + per-image K-means -> label maps.

The paper clusters the tokens of a DINO ViT-S/8 into K = 8 segments per image and resizes the
label map to the input resolution; Table 1 reports oracle mIoU 78.8 (VOC) / 66.3 (Context),
against 49.5 / 43.3 for plain K-means on pixels.

Pieces (each usable without Ray):
- ``PseudoMasker``: callable class. Loads the extractor once, then ``__call__(batch)`` turns
  a batch of images (decoded by :mod:`ovs.pseudo_masks.device_decode`) into compact label PNGs.
- ``ShardMasker`` / ``ImageMasker``: the stage's per-item functions (one webdataset shard ->
  its ``MASK_SCHEMA`` table; image files -> their label PNGs, for the oracle).
- ``upsample_labels``: the stored format is a uint8 PNG at feature-grid resolution
  (:func:`ovs.codecs.encode_label_png`); consumers upsample it (nearest) to the image size.
- The oracle mIoU and the pseudo-mask figure are in :mod:`ovs.pseudo_masks.oracle`.

Geometry: images are resized to ``image_size x image_size`` without keeping the aspect ratio,
so the label grid covers the whole image and upsampling it to the original H x W realigns it.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, cast

import numpy as np
import pyarrow as pa
import torch
from PIL import Image

from ovs import precision
from ovs.codecs import encode_label_png
from ovs.config import check_choice
from ovs.pseudo_masks.device_decode import decode_resize, decode_resize_batch, resize_rgb
from ovs.pseudo_masks.features import EXTRACTORS, ExtractorArgs, build_extractor
from ovs.pseudo_masks.kmeans import METRICS, kmeans
from ovs.pseudo_masks.runtimes import RUNTIMES, build_forward, resolve_runtime

STATUS_OK = "ok"
STATUS_DECODE_ERROR = "decode_error"
STATUS_BAD_IMAGE = "bad_image"

DECODE_PLACES = ("cpu", "device")
AUTOCAST_CHOICES = tuple(c for c in precision.CHOICES if c)  # auto, float32, bfloat16, float16


@dataclass
class PseudoMaskConfig:
    """Config of the pseudo-mask stage.

    The tiny default clusters colour + position of the synthetic world's 64x64 images (the
    paper's K-means baseline) and runs in seconds on CPU. Paper scale: ``extractor="dino_vits8"``
    (with ``checkpoint`` offline), ``image_size=224``, ``k=8``, ``batch_size=128``,
    ``num_gpus=1.0``, ``num_actors`` = number of GPUs, ``autocast="auto"`` (bf16 there).

    ``autocast: auto`` resolves per machine (:func:`ovs.precision.resolve_dtype`): bfloat16
    where bf16 is native (CUDA; CPUs with AVX-512 BF16 or AMX), float32 elsewhere, where
    emulated bf16 runs several times slower. The stage hash holds ``"auto"``, not the
    resolved dtype, so, as with ``device``, one output directory may hold masks computed in
    either dtype (they agree to within K-means ties).
    """

    # How the stage runs, not what it computes: left out of the stage hash (ovs.config.hash_view).
    UNHASHED: ClassVar[tuple[str, ...]] = (
        "batch_size",
        "num_actors",
        "num_gpus",
        "num_cpus",
        "device",
        "runtime",
        "decode",
        "kmeans_threads",
        "figure_images",
    )

    extractor: str = "pixels"  # key of ovs.pseudo_masks.features.EXTRACTORS
    checkpoint: str | None = None  # local weight file for the ViT extractors
    pretrained: bool = True  # ViTs: load trained weights (checkpoint, else the hub)
    random_init: bool = False  # must be true to run a ViT with random weights
    image_size: int = 64  # images are resized to image_size x image_size
    k: int = 8  # clusters per image
    iters: int = 30  # max Lloyd iterations
    tol: float = 1e-4  # relative centre-shift tolerance (scikit-learn's rule)
    metric: str = "auto"  # "euclidean" | "cosine" | "auto" (cosine for ViTs, euclidean pixels)
    seed: int = 0  # per-image seeds derive from (seed, key)
    smooth: int = 0  # odd mode-filter size on the label grid; 0 = off
    batch_size: int = 64  # images per forward
    num_actors: int = 1  # Ray actors
    num_gpus: float = 0.0  # GPUs per actor (0: CPU actors)
    num_cpus: float = 1.0  # CPUs per actor (also its torch thread count)
    # Where the actors decode JPEGs: "cpu" (PIL) | "device" (on their device: nvJPEG on GPUs;
    # ovs.pseudo_masks.device_decode)
    decode: str = "cpu"
    device: str = "auto"  # "auto" (cuda if available) | "cpu" | "cuda" | "cuda:N"
    # Extractor compute dtype: "auto" (bfloat16 where native, else float32; ovs.precision) |
    # "float32" | "bfloat16" | "float16"
    autocast: str = "auto"
    # How the extractor runs (ovs.pseudo_masks.runtimes): "auto" (oneDNN Graph for ViTs on CPU, else eager) |
    # "eager" | "inductor" (torch.compile; try it on GPUs) | "onednn_graph" (CPU)
    runtime: str = "auto"
    kmeans_threads: int = 1  # CPU: torch threads during K-means (small ops; 0 = unchanged)
    pixel_stride: int = 1  # pixels extractor: average-pool cell size
    pixel_pos_weight: float = 0.25  # pixels extractor: weight of (y, x) against (r, g, b)
    png_compress_level: int = 1  # zlib level of the stored label PNGs
    oracle_images: int = 200  # world eval images for the oracle mIoU metric (0: off)
    figure_images: int = 8  # rows of the logged image / pseudo-mask / GT grid

    def validate(self) -> None:
        """Raise ``ValueError`` naming the bad ``pseudo_masks.*`` setting (called at config load,
        and by :class:`PseudoMasker`)."""
        check_choice("pseudo_masks.extractor", self.extractor, EXTRACTORS)
        if self.metric not in ("auto", *METRICS):
            raise ValueError(
                f"pseudo_masks.metric must be auto or one of {METRICS}, got {self.metric!r}"
            )
        check_choice("pseudo_masks.runtime", self.runtime, RUNTIMES)
        check_choice("pseudo_masks.autocast", self.autocast, AUTOCAST_CHOICES)
        if self.smooth and self.smooth % 2 == 0:
            raise ValueError(f"pseudo_masks.smooth must be 0 or odd, got {self.smooth}")
        check_choice("pseudo_masks.decode", self.decode, DECODE_PLACES)
        if not 1 <= self.k <= 256:
            raise ValueError(f"pseudo_masks.k must be in [1, 256] to fit a uint8 PNG, got {self.k}")
        for key in ("image_size", "iters", "batch_size", "num_actors", "pixel_stride"):
            if getattr(self, key) < 1:
                raise ValueError(f"pseudo_masks.{key} must be >= 1, got {getattr(self, key)}")
        if not 0 <= self.png_compress_level <= 9:
            raise ValueError(
                f"pseudo_masks.png_compress_level must be in [0, 9], got {self.png_compress_level}"
            )


# ----------------------------------------------------------------------------- label maps


def upsample_labels(label: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Nearest upsampling of a label map [..., h, w] to [..., H, W] (pixel-centre aligned)."""
    h, w = label.shape[-2:]
    rows = np.minimum(((np.arange(size[0]) + 0.5) * h / size[0]).astype(np.int64), h - 1)
    cols = np.minimum(((np.arange(size[1]) + 0.5) * w / size[1]).astype(np.int64), w - 1)
    return label[..., rows[:, None], cols[None, :]]


def smooth_labels(labels: torch.Tensor, k: int, size: int) -> torch.Tensor:
    """Mode filter. labels [B, h, w] int64 in [0, k) -> [B, h, w]; ties keep the current label."""
    onehot = torch.nn.functional.one_hot(labels, k).permute(0, 3, 1, 2).float()
    votes = torch.nn.functional.avg_pool2d(
        onehot, size, stride=1, padding=size // 2, count_include_pad=False
    )
    return (votes + 1e-3 * onehot).argmax(1)


def image_seed(seed: int, key: str) -> int:
    """Stable 63-bit seed of one image from the run seed and the image key."""
    digest = hashlib.blake2b(f"{seed}:{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & (2**63 - 1)


# ----------------------------------------------------------------------------- the masker


@contextlib.contextmanager
def cpu_threads(device: torch.device, threads: int) -> Iterator[None]:
    """Temporarily set torch's intra-op threads on CPU. K-means runs hundreds of small ops;
    with several threads each pays an OpenMP fork/join, which on a busy machine costs more
    than the parallelism gains (measured: 2 threads 37-190 ms/img vs 1 thread 14 ms/img)."""
    if device.type != "cpu" or threads <= 0 or threads == torch.get_num_threads():
        yield
        return
    saved = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(saved)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


class PseudoMasker:
    """Batch -> pseudo-masks. Loads the extractor once; ``__call__`` is Ray ``map_batches`` style.

    Input batch: ``key`` [B] str and either ``image`` (uint8 [B, H, W, 3], or a length-B
    sequence of uint8 [H, W, 3] arrays / None) or ``jpg`` (B encoded images, decoded with PIL,
    or on ``device`` in one batch when ``cfg.decode == "device"``). Images not of
    ``image_size`` are resized. Output: ``key``, ``label_png`` (uint8 PNG [grid_h, grid_w],
    values in [0, k); empty bytes when skipped), ``grid_h``, ``grid_w``, ``k``, ``status``
    ("ok" | "decode_error" | "bad_image").
    """

    def __init__(self, cfg: PseudoMaskConfig, device: str | None = None) -> None:
        cfg.validate()
        self.cfg = cfg
        self.device = resolve_device(device or cfg.device)
        args = ExtractorArgs(
            pretrained=cfg.pretrained,
            checkpoint=cfg.checkpoint,
            random_init=cfg.random_init,
            image_size=cfg.image_size,
            seed=cfg.seed,
            pixel_stride=cfg.pixel_stride,
            pixel_pos_weight=cfg.pixel_pos_weight,
        )
        extractor = build_extractor(cfg.extractor, args).to(self.device)
        self.extractor = extractor.to(memory_format=torch.channels_last)
        self.metric = extractor.default_metric if cfg.metric == "auto" else cfg.metric
        # None = float32; "auto" follows the hardware, and the runtime follows the dtype.
        self.autocast_dtype = precision.resolve_dtype(cfg.autocast, self.device)
        self.runtime = resolve_runtime(cfg.runtime, self.device, extractor, self.autocast_dtype)
        self._forward = build_forward(
            extractor, self.runtime, self.device, self.autocast_dtype, max(1, cfg.batch_size)
        )
        self.counts = {STATUS_OK: 0, STATUS_DECODE_ERROR: 0, STATUS_BAD_IMAGE: 0}

    @torch.inference_mode()
    def features(self, images: np.ndarray | torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """uint8 [B, H, W, 3] -> (features [B, h*w, C], (h, w)) on ``self.device``."""
        if not isinstance(images, torch.Tensor):
            images = torch.from_numpy(np.ascontiguousarray(images))
        # NHWC uint8 permuted to NCHW is already channels_last in memory.
        x = images.to(self.device, non_blocking=True)
        return self._forward(x.permute(0, 3, 1, 2).float().div_(255.0))

    @torch.inference_mode()
    def labels(self, images: np.ndarray | torch.Tensor, seeds: Sequence[int]) -> np.ndarray:
        """uint8 [B, H, W, 3] + B seeds -> uint8 label maps [B, h, w] in [0, k)."""
        cfg = self.cfg
        feats, (h, w) = self.features(images)
        with cpu_threads(self.device, cfg.kmeans_threads):
            result = kmeans(
                feats, cfg.k, seeds=seeds, iters=cfg.iters, tol=cfg.tol, metric=self.metric
            )
        labels = result.labels.view(-1, h, w)
        if cfg.smooth:
            labels = smooth_labels(labels, cfg.k, cfg.smooth)
        return labels.to(torch.uint8).cpu().numpy()

    def _prepare(
        self, batch: dict[str, Any]
    ) -> tuple[list[np.ndarray | None] | list[torch.Tensor | None], list[str]]:
        size = self.cfg.image_size
        n = len(batch["key"])
        arrays: list[np.ndarray | None] = []  # the CPU branches fill it
        images: list[np.ndarray | None] | list[torch.Tensor | None] = arrays
        status: list[str] = []
        if "image" in batch:
            for img in batch["image"]:
                arr = _as_rgb(img, size)
                arrays.append(arr)
                status.append(STATUS_OK if arr is not None else STATUS_BAD_IMAGE)
        elif "jpg" in batch and self.cfg.decode == "device":
            images = decode_resize_batch(list(batch["jpg"]), size, self.device)
            status = [STATUS_OK if t is not None else STATUS_DECODE_ERROR for t in images]
        elif "jpg" in batch:
            for data in batch["jpg"]:
                arr = decode_resize(data, size)
                arrays.append(arr)
                status.append(STATUS_OK if arr is not None else STATUS_DECODE_ERROR)
        else:
            raise KeyError("batch needs an 'image' or a 'jpg' column")
        if len(images) != n:
            raise ValueError(f"{len(images)} images for {n} keys")
        return images, status

    def __call__(self, batch: dict[str, Any]) -> dict[str, np.ndarray]:
        keys = [str(k) for k in batch["key"]]
        images, status = self._prepare(batch)
        ok = [i for i, img in enumerate(images) if img is not None]
        pngs = [b""] * len(keys)
        grid = (0, 0)
        step = max(1, self.cfg.batch_size)
        for start in range(0, len(ok), step):
            idx = ok[start : start + step]
            chunk = [images[i] for i in idx]
            # idx holds no None, and _prepare's list is all tensors or all arrays.
            stack = (
                torch.stack(cast(list[torch.Tensor], chunk))
                if isinstance(chunk[0], torch.Tensor)
                else np.stack(cast(list[np.ndarray], chunk))
            )
            maps = self.labels(stack, [image_seed(self.cfg.seed, keys[i]) for i in idx])
            grid = maps.shape[1:]
            for i, m in zip(idx, maps, strict=True):
                pngs[i] = encode_label_png(m, self.cfg.png_compress_level)
        for s in status:
            self.counts[s] += 1
        n = len(keys)
        oks = np.array([s == STATUS_OK for s in status], dtype=bool)
        png_col = np.empty(n, dtype=object)  # 1-D array of bytes objects
        png_col[:] = pngs
        return {
            "key": np.array(keys, dtype=object),
            "label_png": png_col,
            "grid_h": np.where(oks, grid[0], 0).astype(np.int32),
            "grid_w": np.where(oks, grid[1], 0).astype(np.int32),
            "k": np.full(n, self.cfg.k, dtype=np.int32),
            "status": np.array(status, dtype=object),
        }


MASK_SCHEMA = pa.schema(
    [
        ("key", pa.string()),
        ("label_png", pa.binary()),  # uint8 PNG [grid_h, grid_w], values in [0, k); b"": skipped
        ("grid_h", pa.int32()),
        ("grid_w", pa.int32()),
        ("k", pa.int32()),
        ("status", pa.string()),  # STATUS_OK | STATUS_DECODE_ERROR | STATUS_BAD_IMAGE
    ]
)


def _actor_masker(cfg: PseudoMaskConfig) -> PseudoMasker:
    """A masker whose torch threads match the CPUs its Ray actor holds."""
    torch.set_num_threads(max(1, int(cfg.num_cpus)))
    return PseudoMasker(cfg)


class ShardMasker:
    """The ``pseudo_masks`` stage's per-shard function: one webdataset shard -> its
    ``MASK_SCHEMA`` table, one row per sample in tar order.

    The extractor is loaded once (in ``__init__``, one per Ray actor); the shard's JPEG bytes
    go to the masker ``batch_size`` samples at a time, decoded where ``cfg.decode`` says.
    Undecodable or missing images are rows with status ``decode_error``.
    """

    def __init__(self, cfg: PseudoMaskConfig) -> None:
        self.masker = _actor_masker(cfg)

    def __call__(self, tar: str) -> pa.Table:
        from ovs.data.shards import iter_shard

        samples = [(s["key"], s.get("jpg") or b"") for s in iter_shard(tar, members=("jpg",))]
        step = max(1, self.masker.cfg.batch_size)
        parts = []
        for start in range(0, len(samples), step):
            chunk = samples[start : start + step]
            parts.append(self.masker({"key": [k for k, _ in chunk], "jpg": [j for _, j in chunk]}))
        return pa.table(
            {name: [v for p in parts for v in p[name]] for name in MASK_SCHEMA.names},
            schema=MASK_SCHEMA,
        )


class ImageMasker:
    """The oracle's per-item function: image files -> their label PNGs (``b""`` when the
    image is unusable), in the given order; the file stem is the image key (its seed)."""

    def __init__(self, cfg: PseudoMaskConfig) -> None:
        self.masker = _actor_masker(cfg)

    def __call__(self, paths: list[str]) -> list[bytes]:
        keys = [Path(p).stem for p in paths]
        images = [np.asarray(Image.open(p).convert("RGB")) for p in paths]
        return [bytes(b) for b in self.masker({"key": keys, "image": images})["label_png"]]


def _as_rgb(img: Any, size: int) -> np.ndarray | None:
    """Validate one decoded image; resize to [size, size, 3] uint8 if needed; None if unusable."""
    if img is None:
        return None
    arr = np.asarray(img)
    if arr.ndim == 2:
        arr = np.repeat(arr[..., None], 3, axis=-1)
    if arr.ndim != 3 or arr.shape[-1] not in (3, 4) or arr.shape[0] == 0 or arr.shape[1] == 0:
        return None
    arr = arr[..., :3]
    if arr.dtype != np.uint8:
        return None
    if arr.shape[:2] != (size, size):
        return resize_rgb(Image.fromarray(np.ascontiguousarray(arr)), size)
    return arr
