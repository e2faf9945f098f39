"""How good are mask-category pairs? Precision against ground truth, baselines, a gallery.

``pair_precision`` (on the synthetic world, whose train images have ground-truth label maps):
the fraction of pairs whose noun names a dataset class (:func:`noun_classes`: the class file's
names and synonyms, plus plural forms) for which the chosen mask's majority ground-truth class
(:func:`mask_majority`, ignore pixels not counted) is that class. Pairs whose noun names no
class ("photo", "wallpaper") are counted apart and do not enter the precision. Captions that
name an absent object (the world's ~10 % wrong mentions) count as errors, as they would for
OVSeg; ``pair_precision_present`` leaves them out.

Baselines on the same (sample, noun) pairs and the same candidate masks: ``largest`` (the
largest mask), ``random`` (a uniformly random candidate; its expected precision, computed
exactly) and ``oracle`` (correct whenever some candidate's majority class is the noun's, the
ceiling the pseudo-masks allow).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq

from ovs.codecs import decode_label_png, decode_rgb, read_keyed, read_label_png
from ovs.pairs.maker import candidate_masks
from ovs.pseudo_masks.masker import STATUS_OK, upsample_labels

IGNORE_INDEX = 255


def word_forms(word: str) -> set[str]:
    """A name with its regular English plurals and, for a plural name, its singulars (caption
    nouns are lemmas: the synonym "clouds" arrives as "cloud"): ``bus`` -> bus, buss, buses;
    ``sky`` -> skies; ``clouds`` -> cloud (harmless non-words such as "buss" are fine)."""
    w = word.strip().lower()
    forms = {w, w + "s", w + "es"}
    if len(w) > 1 and w.endswith("y") and w[-2] not in "aeiou":
        forms.add(w[:-1] + "ies")
    if len(w) > 3 and w.endswith("s") and not w.endswith("ss"):
        forms.add(w[:-1])
        if w.endswith("ies"):
            forms.add(w[:-3] + "y")
        elif w.endswith("es"):
            forms.add(w[:-2])
    return forms


def noun_classes(class_names: Sequence[Sequence[str]]) -> dict[str, int]:
    """``word -> class index`` for each class's names and synonyms (``classes.txt`` lines) and
    their plurals. A word listed under two classes goes to the first."""
    table: dict[str, int] = {}
    for c, names in enumerate(class_names):
        for name in names:
            for form in word_forms(name):
                table.setdefault(form, c)
    return table


def mask_majority(
    label: np.ndarray, gt: np.ndarray, k: int, ignore: int = IGNORE_INDEX
) -> np.ndarray:
    """Majority ground-truth class of every segment.

    ``label`` uint8 ``[h, w]`` segment ids in ``[0, k)`` (upsampled nearest to ``gt``'s size),
    ``gt`` uint8 ``[H, W]`` class ids (``ignore`` = void) -> int64 ``[k]``; -1 for a segment
    with no valid ground-truth pixel. Ties go to the lower class id.
    """
    if label.shape != gt.shape:
        label = upsample_labels(label, gt.shape)
    valid = gt != ignore
    seg = label[valid].astype(np.int64)
    cls = gt[valid].astype(np.int64)
    n_cls = int(cls.max()) + 1 if cls.size else 1
    hist = np.bincount(seg * n_cls + cls, minlength=k * n_cls).reshape(k, n_cls)
    return np.where(hist.sum(1) > 0, hist.argmax(1), -1)


def score_sample(
    pairs: Sequence[tuple[str, int]],
    label: np.ndarray,
    k: int,
    gt: np.ndarray,
    noun_to_class: dict[str, int],
    min_area: float,
    ignore: int = IGNORE_INDEX,
) -> tuple[Counter, list[bool | None]]:
    """Precision counts of one sample's pairs ``[(noun, mask_id)]`` (see module docstring).

    ``label`` uint8 ``[h, w]`` pseudo-mask grid, ``gt`` uint8 ``[H, W]``. Returns the counts
    (``class_pairs``, ``other_pairs``, ``correct``, ``present``, ``correct_present``,
    ``largest_correct``, ``random_correct`` (a float: expected count), ``oracle_correct``) and
    per pair whether it is correct (None for a noun that names no class).
    """
    ids, areas = candidate_masks(label, k, min_area)
    major = mask_majority(label, gt, k, ignore)
    cand = major[ids]
    largest = int(major[ids[int(np.argmax(areas))]]) if ids.size else -1
    out: Counter[str] = Counter()
    hits: list[bool | None] = []
    for noun, mask_id in pairs:
        c = noun_to_class.get(noun.lower())
        if c is None:
            out["other_pairs"] += 1
            hits.append(None)
            continue
        hit = int(major[mask_id]) == c
        hits.append(hit)
        present = bool((gt == c).any())
        out["class_pairs"] += 1
        out["correct"] += hit
        out["present"] += present
        out["correct_present"] += hit and present
        out["largest_correct"] += largest == c
        out["random_correct"] += float((cand == c).mean()) if cand.size else 0.0  # type: ignore[assignment]
        out["oracle_correct"] += bool((cand == c).any())
    return out, hits


def precision_metrics(stats: Mapping[str, float]) -> dict[str, float]:
    """Summed :func:`score_sample` counts -> ``pair_precision`` and its baselines."""
    n = stats.get("class_pairs", 0)
    npres = stats.get("present", 0)
    total = n + stats.get("other_pairs", 0)

    def ratio(a: float, b: float) -> float:
        return float(a) / b if b else float("nan")

    return {
        "pair_precision": ratio(stats.get("correct", 0), n),
        "pair_precision_present": ratio(stats.get("correct_present", 0), npres),
        "pair_precision_largest": ratio(stats.get("largest_correct", 0), n),
        "pair_precision_random": ratio(stats.get("random_correct", 0), n),
        "pair_precision_oracle": ratio(stats.get("oracle_correct", 0), n),
        "class_noun_fraction": ratio(n, total),
    }


def evaluate_shard(
    pairs_path: str | Path,
    masks_path: str | Path,
    tar_path: str | Path,
    gt_dir: str | Path,
    noun_to_class: dict[str, int],
    min_area: float,
) -> dict[str, Any]:
    """Precision counts of one pairs shard against the world's train labels.

    A sample's ground truth is ``gt_dir/<id>.png`` where ``id`` is the world id the download
    stage kept in the sample's ``.json``; samples without one are counted in ``no_gt``.
    Returns the summed :func:`score_sample` counts plus ``score_hist`` / ``hit_hist``
    (:func:`score_histograms` of the class-noun pairs: the shard's share of the
    precision-vs-threshold curve, a fixed size whatever the shard holds).
    """
    from ovs.data.shards import iter_shard

    by_key: dict[str, list[tuple[str, int, float]]] = {}
    table = pq.read_table(pairs_path, columns=["key", "noun", "mask_id", "score"])
    for r in table.to_pylist():
        by_key.setdefault(r["key"], []).append((r["noun"], r["mask_id"], r["score"]))
    masks = read_keyed(Path(masks_path), ["key", "label_png", "k", "status"])
    total: Counter = Counter()
    scores: list[float] = []
    hits: list[bool] = []
    for sample in iter_shard(tar_path, members=("json",)):
        pairs = by_key.get(sample["key"])
        if not pairs:
            continue
        wid = (sample.get("json") or {}).get("id")
        m = masks.get(sample["key"])
        gt_path = Path(gt_dir) / f"{wid}.png"
        gt = read_label_png(gt_path) if wid is not None and gt_path.is_file() else None
        if gt is None or m is None or m.get("status") != STATUS_OK:
            total["no_gt"] += len(pairs)
            continue
        label = decode_label_png(m["label_png"])
        k = max(int(m.get("k") or 0), int(label.max()) + 1)
        counts, correct = score_sample(
            [(p[0], p[1]) for p in pairs], label, k, gt, noun_to_class, min_area
        )
        total.update(counts)
        for (_, _, score), hit in zip(pairs, correct, strict=True):
            if hit is not None:
                scores.append(float(score))
                hits.append(hit)
    score_hist, hit_hist = score_histograms(scores, hits)
    return {**dict(total), "score_hist": score_hist, "hit_hist": hit_hist}


class ShardPrecision:
    """Per-shard function of the ``pairs`` stage's world metrics: :func:`evaluate_shard` of
    one shard's pairs against the world's train labels in ``gt_dir``."""

    def __init__(self, gt_dir: str, noun_to_class: dict[str, int], min_area: float) -> None:
        self.gt_dir, self.noun_to_class, self.min_area = gt_dir, noun_to_class, min_area

    def __call__(self, pairs: str, masks: str, tar: str) -> dict[str, Any]:
        return evaluate_shard(pairs, masks, tar, self.gt_dir, self.noun_to_class, self.min_area)


SCORE_BINS = 2000  # pair scores are cosines in [-1, 1]: bins 0.001 wide


def _bin(scores: np.ndarray) -> np.ndarray:
    """Bin of each score: ``[-1 + i w, -1 + (i + 1) w)``, ``w = 2 / SCORE_BINS`` (1.0 in the last)."""
    idx = np.floor((scores.astype(np.float64) + 1.0) * (SCORE_BINS / 2.0)).astype(np.int64)
    return np.clip(idx, 0, SCORE_BINS - 1)


def bin_edge(i: int | np.ndarray) -> np.ndarray:
    """The lower edge of score bin ``i``."""
    return -1.0 + np.asarray(i, dtype=np.float64) * (2.0 / SCORE_BINS)


def score_histograms(
    scores: Sequence[float], hits: Sequence[bool]
) -> tuple[np.ndarray, np.ndarray]:
    """``(pairs, correct pairs)`` per score bin (int64 ``[SCORE_BINS]`` each): what a shard
    sends for the precision curve, so the driver sums two fixed arrays per shard instead of
    holding a score per pair of the whole dataset."""
    b = _bin(np.asarray(scores, dtype=np.float64))
    h = np.asarray(hits, dtype=bool)
    return (
        np.bincount(b, minlength=SCORE_BINS).astype(np.int64),
        np.bincount(b[h], minlength=SCORE_BINS).astype(np.int64),
    )


def precision_curve_binned(
    score_hist: np.ndarray, hit_hist: np.ndarray, num: int = 11
) -> dict[str, list[float]]:
    """:func:`precision_curve` from summed :func:`score_histograms`: each threshold is the
    lower edge of the bin holding the score of rank ``floor(q (n - 1))`` (``np.quantile``
    interpolates from that score to the next: the threshold is at most one bin, 0.001, below
    that score and never above the exact quantile), and precision / kept are exact for that
    threshold."""
    n = int(score_hist.sum())
    if n == 0:
        return {"threshold": [], "precision": [], "kept": []}
    below = np.concatenate([[0], np.cumsum(score_hist)])  # pairs in bins < i
    at_or_above = n - below[:-1]
    hits_above = int(hit_hist.sum()) - np.concatenate([[0], np.cumsum(hit_hist)])[:-1]
    ths, prec, kept = [], [], []
    for q in np.linspace(0.0, 0.95, num):
        # the bin of the q-quantile: the last bin whose lower edge has <= q * (n - 1) pairs below
        i = int(np.searchsorted(below[:-1], q * (n - 1), side="right") - 1)
        ths.append(float(bin_edge(i)))
        prec.append(float(hits_above[i] / at_or_above[i]))
        kept.append(float(at_or_above[i] / n))
    return {"threshold": ths, "precision": prec, "kept": kept}


def precision_curve(
    scores: Sequence[float], hits: Sequence[bool], num: int = 11
) -> dict[str, list[float]]:
    """Precision and kept fraction of class-noun pairs when the threshold is raised to each of
    ``num`` score quantiles (``{"threshold", "precision", "kept"}``). The reference for
    :func:`precision_curve_binned`, which the stage logs."""
    s = np.asarray(scores, dtype=np.float64)
    h = np.asarray(hits, dtype=bool)
    if s.size == 0:
        return {"threshold": [], "precision": [], "kept": []}
    ths = np.quantile(s, np.linspace(0.0, 0.95, num))
    prec = [float(h[s >= t].mean()) for t in ths]
    kept = [float((s >= t).mean()) for t in ths]
    return {"threshold": [float(t) for t in ths], "precision": prec, "kept": kept}


# ----------------------------------------------------------------------------- gallery


@dataclass
class GalleryItem:
    image: np.ndarray  # uint8 [H, W, 3]
    mask: np.ndarray  # bool [H, W]
    noun: str
    score: float
    correct: bool | None = None  # None: no ground truth


def outline(mask: np.ndarray) -> np.ndarray:
    """bool ``[H, W]``: mask pixels with a 4-neighbour outside the mask (or on the border)."""
    m = np.pad(mask, 1, constant_values=False)
    inner = m[1:-1, 1:-1] & m[:-2, 1:-1] & m[2:, 1:-1] & m[1:-1, :-2] & m[1:-1, 2:]
    return mask & ~inner


def gallery_panel(item: GalleryItem, margin: float = 0.25, min_side: int = 96) -> np.ndarray:
    """The mask's box grown by ``margin`` of its size on each side, the mask outlined in yellow,
    upscaled (nearest) so the short side is at least ``min_side``: uint8 ``[h, w, 3]``."""
    ys, xs = np.nonzero(item.mask)
    h, w = item.mask.shape
    if ys.size == 0:
        y0, y1, x0, x1 = 0, h, 0, w
    else:
        my = round(int(ys.max() - ys.min() + 1) * margin) + 1
        mx = round(int(xs.max() - xs.min() + 1) * margin) + 1
        y0, y1 = max(0, ys.min() - my), min(h, ys.max() + 1 + my)
        x0, x1 = max(0, xs.min() - mx), min(w, xs.max() + 1 + mx)
    scale = max(1, int(np.ceil(min_side / min(y1 - y0, x1 - x0))))
    crop = item.image[y0:y1, x0:x1].repeat(scale, 0).repeat(scale, 1).copy()
    edge = outline(item.mask[y0:y1, x0:x1].repeat(scale, 0).repeat(scale, 1))
    crop[edge] = (255, 230, 0)
    return crop


def pairs_gallery(items: Sequence[GalleryItem], cols: int = 4) -> Any:
    """matplotlib ``Figure`` (no pyplot state): one panel per pair, titled ``noun score``;
    green title = majority GT class matches the noun, red = it does not, black = unknown."""
    from matplotlib.figure import Figure

    n = max(len(items), 1)
    cols = min(cols, n)
    rows = -(-n // cols)
    fig = Figure(figsize=(2.4 * cols, 2.6 * rows), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False)
    for ax in axes.ravel():
        ax.set_axis_off()
    for ax, it in zip(axes.ravel(), items, strict=False):
        ax.imshow(gallery_panel(it), interpolation="nearest")
        colour = {True: "green", False: "red", None: "black"}[it.correct]
        ax.set_title(f"{it.noun} {it.score:.2f}", fontsize=9, color=colour)
    return fig


def gallery_items(
    pairs_path: str | Path,
    masks_path: str | Path,
    tar_path: str | Path,
    n: int,
    gt_dir: str | Path | None = None,
    noun_to_class: dict[str, int] | None = None,
) -> list[GalleryItem]:
    """The first ``n`` pairs of a shard (tar order) as :class:`GalleryItem` (correctness when
    ``gt_dir`` and ``noun_to_class`` are given)."""
    from ovs.data.shards import iter_shard

    rows = pq.read_table(pairs_path, columns=["key", "noun", "mask_id", "score"]).to_pylist()[:n]
    wanted: dict[str, list[dict]] = {}
    for r in rows:
        wanted.setdefault(r["key"], []).append(r)
    masks = read_keyed(Path(masks_path), ["key", "label_png", "k"])
    items = []
    for sample in iter_shard(tar_path, members=("jpg", "json")):
        if sample["key"] not in wanted or sample["key"] not in masks:
            continue
        image = decode_rgb(sample.get("jpg"))
        if image is None:
            continue
        m = masks[sample["key"]]
        label = decode_label_png(m["label_png"])
        full = upsample_labels(label, image.shape[:2])
        wid = (sample.get("json") or {}).get("id")
        gt_path = Path(gt_dir) / f"{wid}.png" if gt_dir is not None and wid is not None else None
        gt = read_label_png(gt_path) if gt_path is not None and gt_path.is_file() else None
        for r in wanted[sample["key"]]:
            correct = None
            if gt is not None and noun_to_class is not None:
                c = noun_to_class.get(r["noun"])
                if c is not None:
                    k = max(int(m.get("k") or 0), int(label.max()) + 1)
                    correct = bool(mask_majority(label, gt, k)[r["mask_id"]] == c)
            items.append(GalleryItem(image, full == r["mask_id"], r["noun"], r["score"], correct))
    return items[:n]
