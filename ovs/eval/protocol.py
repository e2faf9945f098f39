"""Evaluation protocols: how a :class:`~ovs.eval.method.SegMethod` is run on a benchmark.

Per image (``predict_label``):

1. resize so the short side is ``short_side`` (long side capped at ``max_long_side``,
   mmseg ``Resize(scale=(max_long_side, short_side), keep_ratio=True)``), bilinear;
2. slide a ``window`` × ``window`` crop with ``stride`` (mmseg ``slide`` grid: the last crop
   is shifted back inside the image; a side shorter than the window is taken whole); the
   method's per-name probabilities of overlapping crops are averaged;
3. aggregate the names of each class (``logit_aggregation``: ``max`` over synonyms, SCLIP;
   or ``sum``);
4. bilinearly resize the class probabilities to the original (ground-truth) size;
5. argmax; on datasets with a background class 0, pixels whose best class probability is
   below the background threshold become background. With ``background_text=False``
   (mask-free family: GroupViT, TCL, OVSegmentor) the background is not prompted at all,
   only thresholded; with ``True`` (SCLIP) class 0 is prompted with its names (the
   class file's first line) and thresholding (``prob_thd``) comes on top.

Text side (``build_classifier``): every name × template sentence is embedded, the template
embeddings of a name are averaged and re-normalised.

Sharding: :func:`evaluate_shard` runs any subset of indices and returns a summable
:class:`EvalShard`; :func:`evaluate` = all indices, merged, plus metrics.

Known deviation: SCLIP averages *logits* over windows and applies its softmax once at the end;
a :class:`SegMethod` returns probabilities, so windows average probabilities here. SCLIP's
per-dataset ``logit_scale`` (40–65) and ``area_thd`` are method settings, not protocol ones
(``MethodRef.logit_scale``; area filtering is not implemented).

Published presets (:data:`PROTOCOLS`): ``mask_free`` (short side 448, window 448 / stride
224, bg threshold VOC 0.95 / Context 0.35 / COCO-Object 0.95, single template "a photo of a
{}.", renamed class names) and ``training_free`` (SCLIP: short side 336, window 224 / stride
112, 80 ImageNet templates, synonyms with max, ``prob_thd`` 0.1). ``tiny`` is a debug preset
for 64-px synthetic images.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from ovs.eval.datasets import SegDataset
from ovs.eval.method import SegMethod
from ovs.eval.metrics import confusion_matrix, merge_confusions, summarize
from ovs.eval.names import query_names
from ovs.eval.templates import apply_templates, get_templates


@dataclass
class ProtocolConfig:
    """One evaluation protocol. Sizes in pixels, thresholds are probabilities in [0, 1].

    ``bg_threshold`` maps a dataset key to its background threshold; datasets with a
    background class that are not listed use ``default_bg_threshold``. ``names`` is a name
    mode of :mod:`ovs.eval.names`; ``templates`` a set of :mod:`ovs.eval.templates`.
    ``window_batch`` crops go through the method at once (memory vs. speed only).
    """

    name: str = "mask_free"
    short_side: int = 448
    max_long_side: int = 2048
    window: int = 448
    stride: int = 224
    bg_threshold: dict[str, float] = field(
        default_factory=lambda: {"voc21": 0.95, "context60": 0.35, "coco_object": 0.95}
    )
    default_bg_threshold: float = 0.5
    background_text: bool = False
    names: str = "renamed"
    templates: str = "single"
    logit_aggregation: str = "max"
    window_batch: int = 4

    def threshold_for(self, dataset: str) -> float:
        return float(self.bg_threshold.get(dataset, self.default_bg_threshold))


def mask_free() -> ProtocolConfig:
    """GroupViT / TCL / OVSegmentor / S-Seg protocol."""
    return ProtocolConfig()


def training_free() -> ProtocolConfig:
    """SCLIP protocol (``prob_thd`` 0.1 on VOC21 / Context60 / COCO-Object)."""
    return ProtocolConfig(
        name="training_free",
        short_side=336,
        window=224,
        stride=112,
        bg_threshold={"voc21": 0.1, "context60": 0.1, "coco_object": 0.1},
        default_bg_threshold=0.1,
        background_text=True,
        names="synonyms",
        templates="imagenet80",
        logit_aggregation="max",
    )


def tiny() -> ProtocolConfig:
    """Debug protocol for 64-px synthetic images: runs in seconds on CPU."""
    return ProtocolConfig(name="tiny", short_side=64, max_long_side=256, window=64, stride=32)


PROTOCOLS = {"mask_free": mask_free, "training_free": training_free, "tiny": tiny}


def get_protocol(name: str) -> ProtocolConfig:
    if name not in PROTOCOLS:
        raise KeyError(f"unknown protocol {name!r}; choose from {sorted(PROTOCOLS)}")
    return PROTOCOLS[name]()


# ---------------------------------------------------------------- text side


@dataclass
class TextClassifier:
    """Text embeddings of every prompted name and how names map to predicted labels.

    ``emb`` ``[M, D]``; ``name_to_class`` ``long[M]`` indexes the *prompted* classes
    ``0..num_prompted-1``; the predicted label of prompted class ``k`` is ``k + offset``
    (offset 1 when background is implied, not prompted). ``bg_threshold`` is None for
    datasets without background.
    """

    emb: torch.Tensor
    name_to_class: torch.Tensor
    num_prompted: int
    offset: int
    bg_threshold: float | None
    names: list[str]


@torch.no_grad()
def template_embeddings(method: SegMethod, names: list[str], templates: tuple[str, ...]):
    """``[M, D]``: per name, the mean of its template embeddings, re-normalised."""
    emb = method.text_embeddings(apply_templates(names, templates)).float()
    emb = emb.reshape(len(names), len(templates), -1).mean(dim=1)
    return F.normalize(emb, dim=-1)


def build_classifier(
    method: SegMethod,
    class_names: list[list[str]],
    has_background: bool,
    protocol: ProtocolConfig,
    dataset_key: str = "",
    bg_threshold: float | None = None,
) -> TextClassifier:
    """Embed the class names of a dataset under a protocol (see module docstring).

    ``bg_threshold`` overrides the protocol's per-dataset value when given.
    """
    classes = query_names(class_names, protocol.names)
    offset = 0
    if has_background and not protocol.background_text:
        classes, offset = classes[1:], 1
    if not classes:
        raise ValueError("no classes to prompt")
    names = [n for c in classes for n in c]
    name_to_class = torch.tensor([k for k, c in enumerate(classes) for _ in c], dtype=torch.long)
    emb = template_embeddings(method, names, get_templates(protocol.templates))
    thr = None
    if has_background:
        thr = bg_threshold if bg_threshold is not None else protocol.threshold_for(dataset_key)
    return TextClassifier(emb, name_to_class, len(classes), offset, thr, names)


# ---------------------------------------------------------------- image side


def resize_short_side(image: torch.Tensor, short_side: int, max_long_side: int) -> torch.Tensor:
    """``[B, 3, H, W]`` → resized so min side = ``short_side`` (long side ≤ ``max_long_side``)."""
    h, w = image.shape[-2:]
    scale = min(short_side / min(h, w), max_long_side / max(h, w))
    size = (int(h * scale + 0.5), int(w * scale + 0.5))
    if size == (h, w):
        return image
    return F.interpolate(image, size=size, mode="bilinear", align_corners=False)


def window_boxes(h: int, w: int, window: int, stride: int) -> list[tuple[int, int, int, int]]:
    """mmseg slide-inference crops ``(y1, y2, x1, x2)`` covering an ``h`` × ``w`` image."""
    if stride <= 0 or window <= 0:
        raise ValueError("window and stride must be positive")
    h_grids = max(h - window + stride - 1, 0) // stride + 1
    w_grids = max(w - window + stride - 1, 0) // stride + 1
    boxes = []
    for i in range(h_grids):
        for j in range(w_grids):
            y2, x2 = min(i * stride + window, h), min(j * stride + window, w)
            boxes.append((max(y2 - window, 0), y2, max(x2 - window, 0), x2))
    return boxes


@torch.no_grad()
def sliding_window_probs(
    method: SegMethod,
    image: torch.Tensor,
    text_emb: torch.Tensor,
    window: int,
    stride: int,
    batch: int = 4,
) -> torch.Tensor:
    """Average of the method's probabilities over overlapping crops.

    ``image`` ``[1, 3, H, W]`` → ``[M, H, W]`` (all crops share one size, so they batch).
    """
    _, _, h, w = image.shape
    boxes = window_boxes(h, w, window, stride)
    acc = torch.zeros(text_emb.shape[0], h, w, device=image.device)
    count = torch.zeros(1, h, w, device=image.device)
    for i in range(0, len(boxes), batch):
        chunk = boxes[i : i + batch]
        crops = torch.cat([image[:, :, y1:y2, x1:x2] for y1, y2, x1, x2 in chunk])
        probs = method.dense_probs(crops, text_emb).to(acc)
        for (y1, y2, x1, x2), p in zip(chunk, probs):
            acc[:, y1:y2, x1:x2] += p
            count[:, y1:y2, x1:x2] += 1
    return acc / count


def aggregate_names(
    probs: torch.Tensor,
    name_to_class: torch.Tensor,
    num_classes: int,
    mode: str = "max",
) -> torch.Tensor:
    """``[M, H, W]`` name probabilities → ``[C, H, W]`` class probabilities (max or sum)."""
    if mode not in ("max", "sum"):
        raise ValueError(f"logit_aggregation must be 'max' or 'sum', got {mode!r}")
    m, h, w = probs.shape
    idx = name_to_class.to(probs.device).view(m, 1).expand(m, h * w)
    flat = probs.reshape(m, h * w)
    if mode == "sum":
        out = torch.zeros(num_classes, h * w, dtype=probs.dtype, device=probs.device)
        out.scatter_add_(0, idx, flat)
    else:
        out = torch.full((num_classes, h * w), -math.inf, dtype=probs.dtype, device=probs.device)
        out.scatter_reduce_(0, idx, flat, reduce="amax", include_self=True)
    return out.view(num_classes, h, w)


def labels_from_probs(
    class_probs: torch.Tensor, offset: int, bg_threshold: float | None
) -> torch.Tensor:
    """``[C, H, W]`` → ``long[H, W]`` labels: argmax + ``offset``; below threshold → 0."""
    best, arg = class_probs.max(dim=0)
    labels = arg + offset
    if bg_threshold is not None:
        labels = torch.where(best < bg_threshold, torch.zeros_like(labels), labels)
    return labels


def image_to_tensor(image: np.ndarray) -> torch.Tensor:
    """``uint8[H, W, 3]`` → ``float[1, 3, H, W]`` in [0, 1]."""
    return torch.from_numpy(np.array(image, dtype=np.uint8)).permute(2, 0, 1)[None].float() / 255.0


@torch.no_grad()
def predict_probs(
    method: SegMethod,
    image: np.ndarray,
    classifier: TextClassifier,
    protocol: ProtocolConfig,
) -> torch.Tensor:
    """Prompted-class probabilities ``[C_prompted, H, W]`` at the image's own size."""
    device = getattr(method, "device", torch.device("cpu"))
    x = image_to_tensor(image).to(device)
    h, w = x.shape[-2:]
    x = resize_short_side(x, protocol.short_side, protocol.max_long_side)
    probs = sliding_window_probs(
        method,
        x,
        classifier.emb.to(device),
        protocol.window,
        protocol.stride,
        protocol.window_batch,
    )
    probs = aggregate_names(
        probs,
        classifier.name_to_class,
        classifier.num_prompted,
        protocol.logit_aggregation,
    )
    return F.interpolate(probs[None], size=(h, w), mode="bilinear", align_corners=False)[0]


def predict_label(
    method: SegMethod,
    image: np.ndarray,
    classifier: TextClassifier,
    protocol: ProtocolConfig,
) -> np.ndarray:
    """``uint8[H, W]`` dataset class ids for one ``uint8[H, W, 3]`` image."""
    probs = predict_probs(method, image, classifier, protocol)
    labels = labels_from_probs(probs, classifier.offset, classifier.bg_threshold)
    return labels.to(torch.uint8).cpu().numpy()


# ---------------------------------------------------------------- dataset level


@dataclass
class EvalShard:
    """Summable result of evaluating some images: confusion ``int64[C, C]`` + counts."""

    confusion: np.ndarray
    num_images: int = 0
    skipped: list[str] = field(default_factory=list)

    def __add__(self, other: EvalShard) -> EvalShard:
        return EvalShard(
            merge_confusions([self.confusion, other.confusion]),
            self.num_images + other.num_images,
            self.skipped + other.skipped,
        )


def classifier_for(
    method: SegMethod, dataset: SegDataset, protocol: ProtocolConfig
) -> TextClassifier:
    return build_classifier(
        method, dataset.class_names, dataset.has_background, protocol, dataset.name
    )


def evaluate_shard(
    method: SegMethod,
    dataset: SegDataset,
    protocol: ProtocolConfig,
    indices: list[int] | range,
    classifier: TextClassifier | None = None,
) -> EvalShard:
    """Evaluate ``dataset[i]`` for ``i in indices``; unreadable samples are skipped, listed.

    Pass a prebuilt ``classifier`` (from :func:`classifier_for`) to embed the text once per
    worker instead of once per shard.
    """
    classifier = classifier or classifier_for(method, dataset, protocol)
    c = dataset.num_classes
    conf = np.zeros((c, c), dtype=np.int64)
    n, skipped = 0, []
    for i in indices:
        try:
            sample = dataset[i]
        except (OSError, ValueError) as e:
            skipped.append(f"{dataset.samples[i].id}: {e}")
            continue
        pred = predict_label(method, sample["image"], classifier, protocol)
        conf += confusion_matrix(pred, sample["label"], c)
        n += 1
    return EvalShard(conf, n, skipped)


def shard_indices(n: int, num_shards: int) -> list[range]:
    """Split ``range(n)`` into ``num_shards`` contiguous, nearly equal ranges."""
    bounds = np.linspace(0, n, num_shards + 1).round().astype(int)
    return [range(int(a), int(b)) for a, b in itertools.pairwise(bounds)]


def shard_metrics(shard: EvalShard, dataset: SegDataset) -> dict:
    """Metrics dict of a (merged) shard: miou, acc, macc, per_class_iou, confusion, counts."""
    out = summarize(shard.confusion, dataset.canonical_names)
    out.update(num_images=shard.num_images, num_skipped=len(shard.skipped))
    return out


def evaluate(
    method: SegMethod,
    dataset: SegDataset,
    protocol: ProtocolConfig,
    indices: list[int] | range | None = None,
) -> dict:
    """Evaluate a method on a dataset (or a subset): see :func:`shard_metrics` for keys."""
    idx = range(len(dataset)) if indices is None else indices
    shard = evaluate_shard(method, dataset, protocol, idx)
    out = shard_metrics(shard, dataset)
    out.update(dataset=dataset.name, protocol=protocol.name)
    return out
