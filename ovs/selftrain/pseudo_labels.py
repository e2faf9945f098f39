"""Pseudo-labels for S-Seg+: what to label, how one image is labelled, which pixels to trust.

**Target images** (:class:`TargetConfig`, :func:`target_dataset`, :func:`target_images`): the
*training* split of an evaluation dataset (any key of :data:`ovs.eval.datasets.DATASETS`; the
synthetic world's ``train`` split by default). Its ground truth, when present, is read only for
diagnostics (pseudo-label accuracy), never for training. ``image_dir`` instead labels every
image file under a folder (no ground truth at all); the class names then still come from the
dataset's evaluation split.

**Labelling one image** (:func:`pseudo_label`): S-Seg's class probabilities under the same
protocol the model is evaluated with (:func:`ovs.eval.protocol.predict_probs`: resizing,
sliding windows, synonym aggregation), then the protocol's decision: argmax, and on datasets
with a background class, "below the background threshold -> background". The per-pixel
*confidence* is the winning class probability; for pixels that became background through the
threshold it is ``1 - max probability`` (how clearly no class won). Confidences are stored
quantised to ``uint8`` (``round(255 * c)``).

**Confidence rule** (class-balanced selection, as in CBST, Zou et al. 2018): over the whole
target set, for every class ``c`` take the confidences of the pixels labelled ``c`` and let
``t_c`` be their ``ignore_quantile`` quantile (inverted-CDF, on the uint8 scale), raised to at
least ``min_confidence``. A pixel labelled ``c`` whose confidence is below ``t_c`` becomes the
ignore index 255. Per-class thresholds drop the least certain ``ignore_quantile`` of every
class instead of wiping out the classes the model is generally less sure about, which a
single global threshold would do. ``ignore_quantile = 0`` and ``min_confidence = 0`` keep every
pixel.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from ovs.eval.datasets import SegDataset, build_dataset
from ovs.eval.protocol import ProtocolConfig, TextClassifier, predict_probs

IGNORE_INDEX = 255
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp")


@dataclass
class TargetConfig:
    """The dataset S-Seg+ specialises to."""

    dataset: str = "world"  # key of ovs.eval.datasets.DATASETS
    root: str = ""  # dataset root; "" = the world stage's output (dataset "world")
    split: str = "train"  # the split whose images are pseudo-labelled
    eval_split: str = ""  # held-out split the segmenter is evaluated on; "" = dataset default
    image_dir: str = ""  # label every image file under this folder instead of ``split``
    limit: int | None = None  # label only the first N target images (sorted by id)


@dataclass
class PseudoLabelConfig:
    """Step 1 of the stage: labelling with a Ray Data actor pool, then the confidence rule."""

    # How the stage runs, not what it computes: left out of the stage hash (ovs.config.hash_view).
    UNHASHED: ClassVar[tuple[str, ...]] = ("num_actors", "num_cpus", "num_gpus")

    ignore_quantile: float = 0.5  # per class: least confident fraction of pixels -> ignore
    min_confidence: float = 0.0  # and every pixel below this confidence -> ignore
    shard_size: int = 500  # images per output shard (one atomic parquet each)
    num_actors: int = 2  # Ray Data actor pool size
    num_cpus: float = 1  # per actor (also its torch threads; 1 is fastest for small images)
    num_gpus: float = 0  # per actor; >0 runs S-Seg on the GPU


@dataclass(frozen=True)
class TargetImage:
    """One image to label: ``index`` into the target :class:`SegDataset` (ground truth
    available) or ``None`` (a bare image file)."""

    id: str
    path: str
    index: int | None


def target_dataset(cfg: TargetConfig, world_dir: Path | None, split: str) -> SegDataset:
    """The target dataset's ``split`` (``""`` = its default evaluation split)."""
    root = cfg.root
    if not root:
        if cfg.dataset != "world" or world_dir is None:
            raise ValueError(
                f"self_train.target.root is empty: set it to the {cfg.dataset!r} dataset root "
                "(only the synthetic world defaults to the world stage's output)"
            )
        root = str(world_dir)
    return build_dataset(cfg.dataset, root, split or None)


def target_images(
    cfg: TargetConfig, world_dir: Path | None
) -> tuple[list[TargetImage], SegDataset | None]:
    """The images to pseudo-label, sorted by id, and the dataset they index (or None)."""
    if cfg.image_dir:
        base = Path(cfg.image_dir).expanduser()
        if not base.is_dir():
            raise FileNotFoundError(f"self_train.target.image_dir {base} is not a directory")
        paths = sorted(p for p in base.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        refs = [TargetImage(str(p.relative_to(base).with_suffix("")), str(p), None) for p in paths]
        dataset = None
    else:
        dataset = target_dataset(cfg, world_dir, cfg.split)
        refs = [TargetImage(s.id, str(s.image), i) for i, s in enumerate(dataset.samples)]
        refs.sort(key=lambda r: r.id)
    if cfg.limit is not None:
        refs = refs[: cfg.limit]
    if not refs:
        where = cfg.image_dir or f"{cfg.dataset} split {cfg.split!r}"
        raise FileNotFoundError(f"no target images found in {where}")
    return refs, dataset


TARGET_LIST_SCHEMA = (("id", "string"), ("path", "string"), ("index", "int64"))


def write_target_list(
    cfg: TargetConfig, world_dir: str | None, path: str, shard_size: int
) -> dict[str, Any]:
    """:func:`target_images` into the parquet file ``path`` (columns ``id``, ``path``,
    ``index``; row group ``k`` = label shard ``k``, ``shard_size`` rows each, in order), written
    atomically. Returns ``count`` and the class names the labeller prompts with
    (``class_names``, ``has_background``, ``dataset_key``: the target dataset's, or its
    evaluation split's for an ``image_dir``). The self_train driver runs this in a Ray task, so
    the per-image listing never lives in the driver."""
    import pyarrow as pa

    from ovs.io import atomic_parquet_writer

    world = Path(world_dir) if world_dir else None
    refs, dataset = target_images(cfg, world)
    names = dataset or target_dataset(cfg, world, cfg.eval_split)
    schema = pa.schema([(n, getattr(pa, t)()) for n, t in TARGET_LIST_SCHEMA])
    with atomic_parquet_writer(path, schema) as writer:
        for i in range(0, len(refs), shard_size):
            part = refs[i : i + shard_size]
            cols: dict[str, list[Any]] = {"id": [r.id for r in part]}
            cols.update(path=[r.path for r in part], index=[r.index for r in part])
            writer.write_table(pa.table(cols, schema=schema), row_group_size=shard_size)
    return {
        "count": len(refs),
        "class_names": names.class_names,
        "has_background": names.has_background,
        "dataset_key": names.name,
    }


def quantize(conf: torch.Tensor | np.ndarray) -> np.ndarray:
    """Confidences in [0, 1] -> ``uint8`` ``round(255 * c)``."""
    c = conf.detach().cpu().numpy() if isinstance(conf, torch.Tensor) else np.asarray(conf)
    return np.clip(np.rint(c.astype(np.float64) * 255.0), 0, 255).astype(np.uint8)


def label_and_confidence(
    probs: torch.Tensor, offset: int, bg_threshold: float | None
) -> tuple[np.ndarray, np.ndarray]:
    """Prompted-class probabilities ``[C_p, H, W]`` -> (labels ``uint8[H, W]`` in dataset ids,
    confidence ``uint8[H, W]``); labels match :func:`ovs.eval.protocol.labels_from_probs`."""
    best, arg = probs.float().max(dim=0)
    labels = arg + offset
    conf = best
    if bg_threshold is not None:
        bg = best < bg_threshold
        labels = torch.where(bg, torch.zeros_like(labels), labels)
        conf = torch.where(bg, 1.0 - best, best)
    if int(labels.max()) >= IGNORE_INDEX:
        raise ValueError("more than 255 classes do not fit a uint8 label map")
    return labels.to(torch.uint8).cpu().numpy(), quantize(conf)


@torch.no_grad()
def pseudo_label(
    method, image: np.ndarray, classifier: TextClassifier, protocol: ProtocolConfig
) -> tuple[np.ndarray, np.ndarray]:
    """Label one ``uint8[H, W, 3]`` image: ``(labels uint8[H, W], confidence uint8[H, W])``."""
    probs = predict_probs(method, image, classifier, protocol)
    return label_and_confidence(probs, classifier.offset, classifier.bg_threshold)


# ----------------------------------------------------------------------------- the rule


def confidence_histogram(labels: np.ndarray, conf: np.ndarray, num_classes: int) -> np.ndarray:
    """``int64[C, 256]``: per class, how many pixels labelled with it have each confidence.

    ``labels``/``conf`` are uint8 arrays of one shape; ignore pixels (255) are not counted.
    """
    lab = np.asarray(labels).reshape(-1).astype(np.int64)
    c = np.asarray(conf).reshape(-1).astype(np.int64)
    keep = lab < num_classes
    flat = np.bincount(lab[keep] * 256 + c[keep], minlength=num_classes * 256)
    return flat.reshape(num_classes, 256)


def class_thresholds(hist: np.ndarray, quantile: float, min_confidence: float = 0.0) -> np.ndarray:
    """Per-class uint8 thresholds ``int64[C]`` from summed :func:`confidence_histogram`s.

    ``t_c`` = the smallest confidence ``v`` with ``P(conf <= v | label c) >= quantile``
    (numpy's ``inverted_cdf`` quantile) when ``quantile > 0``, else 0; then at least
    ``ceil(255 * min_confidence)``. Classes never predicted get the ``min_confidence`` floor.
    """
    if not 0.0 <= quantile < 1.0:
        raise ValueError(f"ignore_quantile must be in [0, 1), got {quantile}")
    hist = np.asarray(hist, dtype=np.int64)
    floor = int(np.ceil(255.0 * min_confidence - 1e-9))
    out = np.full(hist.shape[0], floor, dtype=np.int64)
    if quantile > 0:
        for c, h in enumerate(hist):
            n = int(h.sum())
            if n:
                v = int(np.searchsorted(np.cumsum(h), quantile * n, side="left"))
                out[c] = max(floor, v)
    return out


def apply_confidence_rule(
    labels: np.ndarray, conf: np.ndarray, thresholds: np.ndarray
) -> np.ndarray:
    """``uint8[H, W]`` labels with every pixel whose confidence is below its class's
    threshold set to 255 (labels already 255 stay 255)."""
    lab = np.asarray(labels)
    thr = np.asarray(thresholds, dtype=np.int64)
    table = np.concatenate([thr, np.zeros(256 - len(thr), dtype=np.int64)])
    drop = (lab != IGNORE_INDEX) & (np.asarray(conf).astype(np.int64) < table[lab])
    return np.where(drop, IGNORE_INDEX, lab).astype(np.uint8)


def label_gt_histogram(
    labels: np.ndarray, conf: np.ndarray, gt: np.ndarray, num_classes: int
) -> np.ndarray:
    """``int64[C, C, 256]``: pixels by (pseudo-label, ground truth, confidence).

    Pixels whose label or ground truth is 255 are not counted. Summed over images it gives the
    pseudo-labels' confusion under *any* per-class thresholds (:func:`kept_confusion`) in one
    pass, without keeping label maps around.
    """
    lab = np.asarray(labels).reshape(-1).astype(np.int64)
    g = np.asarray(gt).reshape(-1).astype(np.int64)
    c = np.asarray(conf).reshape(-1).astype(np.int64)
    keep = (lab < num_classes) & (g < num_classes)
    flat = (lab[keep] * num_classes + g[keep]) * 256 + c[keep]
    counts = np.bincount(flat, minlength=num_classes * num_classes * 256)
    return counts.reshape(num_classes, num_classes, 256)


def kept_confusion(joint: np.ndarray, thresholds: np.ndarray | None = None) -> np.ndarray:
    """Confusion ``int64[C, C]`` (rows ground truth, columns pseudo-label, as
    :func:`ovs.eval.metrics.confusion_matrix`) of the pixels the confidence rule keeps; all pixels
    when ``thresholds`` is None."""
    joint = np.asarray(joint, dtype=np.int64)
    if thresholds is None:
        return joint.sum(axis=2).T
    v = np.arange(256)
    mask = v[None, :] >= np.asarray(thresholds, dtype=np.int64)[:, None]  # [C_pred, 256]
    return (joint * mask[:, None, :]).sum(axis=2).T
