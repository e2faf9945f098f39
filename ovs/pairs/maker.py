"""OVSeg mask-category pairs: each caption noun paired with its best-matching pseudo-mask.

OVSeg (Liang et al., CVPR 2023; ../shared/METHODS.md) takes every noun of a caption, gets
class-agnostic mask proposals for the image and lets CLIP pick, per noun, the proposal that
matches "a photo of a {noun}." best; the pairs then supervise a mask classifier. Here the
proposals are the pseudo-mask stage's segments and the scorer is chosen in config:

* ``sseg`` (default, no outside weights): the trained model, through its method's
  ``pair_scorer`` (:mod:`ovs.methods`); for S-Seg a mask's embedding is the
  mean over its pixels of S-Seg's per-pixel embedding ``e(x) = sum_q r_q(x) f_q`` (``f_q``
  the normalised query features, ``r_q(x) = sigmoid(m_q(x)) / sum_q' sigmoid(m_q'(x))`` the
  query responsibilities of S-Seg's ``dense_probs``), re-normalised; the score is its
  cosine with the noun's prompt embedding. Chosen over "mean dense probability, softmax over
  the sample's nouns": that softmax gives every mask probability 1 for a one-noun caption and
  makes a noun's score depend on the caption's unrelated nouns ("photo", "wallpaper").
* ``clip``: an open_clip model on masked crops, OVSeg's way (:func:`masked_crop`): the mask's
  tight box, pixels outside the mask filled with the CLIP mean colour, padded to a square with
  the same colour, resized to the model's input side; cosine with the noun's prompt embedding.

Both scores are cosines in [-1, 1]. For each noun the best mask (argmax over the sample's
candidate masks, those covering at least ``min_mask_area`` of the image) is kept if its score
is at least ``threshold``.

Pieces: :class:`PairsConfig`; :func:`clean_nouns`, :func:`candidate_masks`,
:func:`select_pairs` (pure); :func:`masked_crop` (tensor ops); :class:`DenseScorer` (a trained
model's ``mask_embeddings``) / :class:`ClipScorer` (:func:`build_scorer`); :class:`PairMaker`, which
pairs a whole shard (image shard + pseudo-mask parquet + entity parquet); :class:`ShardPairer`,
the stage's per-shard function (a scorer built once per Ray actor).
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Protocol

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
import torch.nn.functional as F
from PIL import Image

from ovs.codecs import decode_label_png, decode_rgb, read_keyed
from ovs.config import check_choice
from ovs.pseudo_masks.masker import STATUS_OK, resolve_device, upsample_labels

SCORERS = ("sseg", "clip")
NOUN_COLUMNS = ("nouns", "chunk_heads", "entities")
COUNTS_KEY = b"ovs.counts"  # parquet schema metadata: the shard's counts as JSON

PAIRS_SCHEMA = pa.schema(
    [
        ("key", pa.string()),
        ("noun", pa.string()),
        ("mask_id", pa.int32()),  # the segment's value in the pseudo-mask label map
        ("score", pa.float32()),  # cosine in [-1, 1]
        ("mask_area", pa.float32()),  # fraction of the image the mask covers, (0, 1]
    ]
)


@dataclass
class PairsConfig:
    """The ``pairs`` stage. Defaults: the S-Seg scorer on the 64-px synthetic world, CPU.

    Paper scale (OVSeg on COCO captions, 440K pairs): ``scorer="clip"``,
    ``clip_model="ViT-L-14"``, ``clip_pretrained="openai"`` (or a local weight file),
    ``num_gpus=1.0``, ``num_actors`` = number of GPUs, ``batch_size=256``; with the S-Seg
    scorer set ``image_size=448`` (the mask-free evaluation side).
    """

    # How the stage runs, not what it computes: left out of the stage hash (ovs.config.hash_view).
    UNHASHED: ClassVar[tuple[str, ...]] = ("num_actors", "num_gpus", "num_cpus")

    scorer: str = "sseg"  # "sseg" | "clip"
    checkpoint: str | None = None  # sseg: S-Seg checkpoint; None = the train stage's latest.pt
    clip_model: str = "ViT-B-16"  # open_clip model name ("tiny" = 2-layer debug CLIP)
    clip_pretrained: str | None = "openai"  # open_clip tag or local weight file; None = random
    templates: str = "single"  # prompt set of ovs.eval.templates ("a photo of a {}.")
    image_size: int = 64  # sseg: images resized so the short side is this (paper scale 448)
    noun_column: str = "nouns"  # entities column: "nouns" (lemmas) | "chunk_heads" | "entities"
    max_nouns: int = 16  # nouns per caption (first ones, after de-duplication)
    min_mask_area: float = 0.01  # candidate masks cover at least this fraction of the image
    threshold: float = 0.0  # keep a noun's best mask if its cosine score >= this
    batch_size: int = 32  # sseg: images per forward; clip: crops per forward
    num_actors: int = 1  # Ray actors (one scorer each)
    num_gpus: float = 0.0  # GPUs per actor
    num_cpus: float = 1.0  # CPUs per actor (also its torch thread count)
    device: str = "auto"  # "auto" (cuda if available) | "cpu" | "cuda" | "cuda:N"
    gallery_pairs: int = 16  # pairs drawn in the logged gallery

    def validate(self) -> None:
        """Raise ``ValueError`` naming the bad ``pairs.*`` setting (called at config load)."""
        from ovs.eval.templates import TEMPLATES

        check_choice("pairs.scorer", self.scorer, SCORERS)
        check_choice("pairs.noun_column", self.noun_column, NOUN_COLUMNS)
        check_choice("pairs.templates", self.templates, TEMPLATES)
        if not 0.0 <= self.min_mask_area < 1.0:
            raise ValueError(f"pairs.min_mask_area must be in [0, 1), got {self.min_mask_area}")
        for key in ("max_nouns", "batch_size", "image_size", "num_actors"):
            if getattr(self, key) < 1:
                raise ValueError(f"pairs.{key} must be >= 1, got {getattr(self, key)}")


# ----------------------------------------------------------------------------- pure pieces


def clean_nouns(nouns: Iterable[object] | None, max_nouns: int) -> list[str]:
    """Lower-cased, de-duplicated nouns in caption order (leading ``#`` dropped; entries without
    a letter or shorter than 2 characters dropped), at most ``max_nouns``."""
    out: list[str] = []
    seen: set[str] = set()
    for n in nouns or ():
        if not isinstance(n, str):
            continue
        word = n.strip().lower().lstrip("#").strip()
        if len(word) < 2 or not any(c.isalpha() for c in word) or word in seen:
            continue
        seen.add(word)
        out.append(word)
        if len(out) >= max_nouns:
            break
    return out


def candidate_masks(label: np.ndarray, k: int, min_area: float) -> tuple[np.ndarray, np.ndarray]:
    """Segments of a label map that can be paired.

    ``label`` uint8 ``[h, w]`` (the pseudo-mask grid; every cell covers the same image area)
    -> ``(ids int64 [K'], areas float64 [K'])``: the non-empty segment ids (ascending) whose
    area fraction is at least ``min_area``, and those fractions.
    """
    counts = np.bincount(label.ravel().astype(np.int64), minlength=k)
    area = counts / max(label.size, 1)
    ids = np.flatnonzero((counts > 0) & (area >= min_area))
    return ids, area[ids]


def select_pairs(
    scores: np.ndarray,
    nouns: Sequence[str],
    mask_ids: np.ndarray,
    areas: np.ndarray,
    threshold: float,
) -> list[tuple[str, int, float, float]]:
    """Best mask per noun, kept if its score >= ``threshold``.

    ``scores`` float ``[T, K]`` (noun x candidate mask; NaN = unscorable, never chosen),
    ``mask_ids`` / ``areas`` ``[K]`` -> ``[(noun, mask_id, score, area)]`` in noun order. Ties
    go to the first mask.
    """
    scores = np.asarray(scores, dtype=np.float64)
    if scores.shape != (len(nouns), len(mask_ids)):
        raise ValueError(f"scores {scores.shape} for {len(nouns)} nouns x {len(mask_ids)} masks")
    out: list[tuple[str, int, float, float]] = []
    if scores.size == 0:
        return out
    s = np.where(np.isnan(scores), -np.inf, scores)
    best = s.argmax(axis=1)
    for t, noun in enumerate(nouns):
        j = int(best[t])
        if np.isfinite(s[t, j]) and s[t, j] >= threshold:
            out.append((noun, int(mask_ids[j]), float(s[t, j]), float(areas[j])))
    return out


def masked_crop(
    image: np.ndarray, mask: np.ndarray, size: int, fill: Sequence[float]
) -> torch.Tensor:
    """OVSeg-style CLIP input of one mask, before normalisation.

    ``image`` uint8 ``[H, W, 3]``, ``mask`` bool ``[H, W]`` (non-empty), ``fill`` RGB in [0, 1]
    (the CLIP mean, which normalisation maps to 0) -> float32 ``[3, size, size]`` in [0, 1]:
    the mask's tight bounding box with the pixels outside the mask set to ``fill``, centred on
    a ``fill`` square of side ``max(box h, box w)`` (aspect kept), resized bilinearly (with
    anti-aliasing when shrinking) to ``size``.
    """
    ys, xs = np.nonzero(mask)
    if ys.size == 0:
        raise ValueError("masked_crop: empty mask")
    y0, y1, x0, x1 = int(ys.min()), int(ys.max()) + 1, int(xs.min()), int(xs.max()) + 1
    crop = torch.from_numpy(np.array(image[y0:y1, x0:x1])).permute(2, 0, 1)  # a writable copy
    crop = crop.float() / 255.0
    colour = torch.tensor([float(c) for c in fill], dtype=torch.float32).view(3, 1, 1)
    inside = torch.from_numpy(np.ascontiguousarray(mask[y0:y1, x0:x1]))
    crop = torch.where(inside, crop, colour)
    h, w = y1 - y0, x1 - x0
    side = max(h, w)
    canvas = colour.expand(3, side, side).clone()
    top, left = (side - h) // 2, (side - w) // 2
    canvas[:, top : top + h, left : left + w] = crop
    if side != size:
        canvas = F.interpolate(
            canvas[None],
            size=(size, size),
            mode="bilinear",
            align_corners=False,
            antialias=side > size,
        )[0]
    return canvas


def _resize_short(image: np.ndarray, side: int) -> np.ndarray:
    """uint8 ``[H, W, 3]`` -> short side ``side`` (aspect kept, bilinear)."""
    h, w = image.shape[:2]
    if min(h, w) == side:
        return image
    scale = side / min(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return np.asarray(Image.fromarray(image).resize(size, Image.Resampling.BILINEAR))


# ----------------------------------------------------------------------------- scorers


class MaskScorer(Protocol):
    """What :class:`PairMaker` needs from a scorer (embeddings are L2-normalised float32)."""

    def text_embeddings(self, texts: list[str]) -> torch.Tensor:
        """``[T, E]``."""
        ...

    def mask_embeddings(
        self, images: list[np.ndarray], labels: list[np.ndarray], mask_ids: list[np.ndarray]
    ) -> list[torch.Tensor]:
        """Per sample ``i``: image uint8 ``[H, W, 3]``, pseudo-mask grid uint8 ``[h, w]``,
        candidate ids ``[K_i]`` -> ``[K_i, E]`` (a NaN row = this mask cannot be scored)."""
        ...


class DenseScorer:
    """Scores masks with a trained model's own dense embeddings: ``model.text_embeddings(texts)
    -> [T, E]`` and ``model.mask_embeddings(images [B,3,H,W] in [0,1], labels [B,H,W], K) ->
    [B, K, E]`` (S-Seg: :mod:`ovs.methods.sseg.model`). Images go in at short side
    ``image_size``; same-size images share a forward."""

    def __init__(
        self, model: Any, image_size: int, device: torch.device, batch_size: int = 32
    ) -> None:
        self.model = model.to(device).eval()
        self.device = device
        self.image_size = image_size
        self.batch_size = batch_size

    def text_embeddings(self, texts: list[str]) -> torch.Tensor:
        return self.model.text_embeddings(texts).float().cpu()

    @torch.no_grad()
    def mask_embeddings(
        self, images: list[np.ndarray], labels: list[np.ndarray], mask_ids: list[np.ndarray]
    ) -> list[torch.Tensor]:
        out: list[torch.Tensor] = [torch.empty(0)] * len(images)
        groups: dict[tuple[int, ...], list[tuple[int, np.ndarray, np.ndarray]]] = {}
        for i, (img, lab) in enumerate(zip(images, labels, strict=True)):
            x = _resize_short(img, self.image_size)
            groups.setdefault(x.shape, []).append((i, x, upsample_labels(lab, x.shape[:2])))
        for items in groups.values():  # same-size images share a forward
            for s in range(0, len(items), self.batch_size):
                chunk = items[s : s + self.batch_size]
                imgs = torch.from_numpy(np.stack([c[1] for c in chunk])).to(self.device)
                imgs = imgs.permute(0, 3, 1, 2).float() / 255.0
                labs = torch.from_numpy(np.stack([c[2] for c in chunk]).astype(np.int64))
                k = int(labs.max()) + 1
                emb = self.model.mask_embeddings(imgs, labs.to(self.device), k).cpu()
                for j, (i, _, _) in enumerate(chunk):
                    out[i] = emb[j, torch.as_tensor(mask_ids[i], dtype=torch.long)]
        return out


def _clip_side(model: Any) -> int:
    size = getattr(getattr(model, "visual", None), "image_size", 224)
    return int(size[0] if isinstance(size, (tuple, list)) else size)


class ClipScorer:
    """Scores masks with an open_clip model on OVSeg masked crops (:func:`masked_crop`)."""

    def __init__(
        self,
        model_name: str,
        pretrained: str | None,
        device: torch.device,
        batch_size: int = 32,
    ) -> None:
        from ovs.eval.baselines import build_open_clip

        model, tokenizer, mean, std = build_open_clip(model_name, pretrained, str(device))
        self.model: Any = model  # open_clip CLIP
        self.tokenizer: Any = tokenizer
        self.device = device
        self.mean = tuple(float(m) for m in mean)
        self._mean = torch.tensor(self.mean, device=device).view(1, 3, 1, 1)
        self._std = torch.tensor(std, device=device).view(1, 3, 1, 1)
        self.size = _clip_side(self.model)  # crops go in at the model's input side
        self.batch_size = batch_size

    @torch.no_grad()
    def text_embeddings(self, texts: list[str]) -> torch.Tensor:
        out = []
        for s in range(0, len(texts), 256):
            tokens = self.tokenizer(texts[s : s + 256]).to(self.device)
            out.append(F.normalize(self.model.encode_text(tokens).float(), dim=-1).cpu())
        return torch.cat(out) if out else torch.zeros(0, 1)

    @torch.no_grad()
    def encode_crops(self, crops: torch.Tensor) -> torch.Tensor:
        """``[N, 3, S, S]`` in [0, 1] -> ``[N, E]`` normalised CLIP image embeddings."""
        x = (crops.to(self.device) - self._mean) / self._std
        return F.normalize(self.model.encode_image(x).float(), dim=-1).cpu()

    def mask_embeddings(
        self, images: list[np.ndarray], labels: list[np.ndarray], mask_ids: list[np.ndarray]
    ) -> list[torch.Tensor]:
        crops, owner = [], []
        empty: list[tuple[int, int]] = []
        for i, (img, lab, ids) in enumerate(zip(images, labels, mask_ids, strict=True)):
            full = upsample_labels(lab, img.shape[:2])
            for j, k in enumerate(ids):
                m = full == k
                if m.any():
                    crops.append(masked_crop(img, m, self.size, self.mean))
                    owner.append((i, j))
                else:  # a segment lost by upsampling to a smaller image
                    empty.append((i, j))
        embs = [
            self.encode_crops(torch.stack(crops[s : s + self.batch_size]))
            for s in range(0, len(crops), self.batch_size)
        ]
        flat = torch.cat(embs) if embs else torch.zeros(0, 1)
        dim = flat.shape[1]
        out = [torch.full((len(ids), dim), math.nan) for ids in mask_ids]
        for row, (i, j) in enumerate(owner):
            out[i][j] = flat[row]
        return out


def build_scorer(cfg: PairsConfig, checkpoint: str | Path | None = None) -> MaskScorer:
    """The scorer ``cfg.scorer`` names, on ``cfg.device``. ``checkpoint``: the trained model
    file (``cfg.checkpoint`` wins when set), scored by its method's ``pair_scorer``."""
    cfg.validate()
    device = resolve_device(cfg.device)
    if cfg.scorer == "sseg":
        from ovs.methods import load_checkpoint

        path = cfg.checkpoint or checkpoint
        if path is None:
            raise ValueError("pairs.scorer=sseg needs a checkpoint (pairs.checkpoint or train)")
        if not Path(path).is_file():
            raise FileNotFoundError(f"pairs: trained model checkpoint {path} not found")
        spec, model = load_checkpoint(path)
        if spec.pair_scorer is None:
            raise ValueError(f"pairs: method {spec.name!r} ({path}) cannot score masks")
        return spec.pair_scorer(model, device, cfg.image_size, cfg.batch_size)
    return ClipScorer(cfg.clip_model, cfg.clip_pretrained, device, cfg.batch_size)


# ----------------------------------------------------------------------------- shards


def shard_counts(path: str | Path) -> dict[str, int]:
    """The counts a :meth:`PairMaker.shard` output carries in its parquet metadata."""
    meta = pq.read_schema(path).metadata or {}
    return json.loads(meta.get(COUNTS_KEY, b"{}"))


@dataclass
class _Item:
    key: str
    image: np.ndarray
    label: np.ndarray
    nouns: list[str]
    ids: np.ndarray
    areas: np.ndarray


class PairMaker:
    """Pairs whole shards with one scorer (loaded once; text embeddings cached per noun)."""

    max_cached_nouns = 200_000

    def __init__(self, cfg: PairsConfig, scorer: MaskScorer) -> None:
        cfg.validate()
        self.cfg = cfg
        self.scorer = scorer
        self._text: dict[str, torch.Tensor] = {}

    def noun_embeddings(self, nouns: list[str]) -> torch.Tensor:
        """``[T, E]`` prompt embeddings (mean over ``cfg.templates``, re-normalised).

        Each noun's prompts are encoded as a batch of their own. A batch shared by whichever
        nouns are new at that moment would make a noun's embedding depend on what the actor
        saw before (its cache) and on the other nouns' rows (matmul kernels block by batch
        size), so a resumed shard would score near-ties differently. This way a shard's pairs
        are a function of the shard alone."""
        from ovs.eval.templates import apply_templates, get_templates

        new = [n for n in dict.fromkeys(nouns) if n not in self._text]
        if new:
            if len(self._text) + len(new) > self.max_cached_nouns:
                self._text.clear()
            templates = get_templates(self.cfg.templates)
            for noun in new:
                emb = self.scorer.text_embeddings(apply_templates([noun], templates)).float()
                self._text[noun] = F.normalize(emb.mean(dim=0), dim=-1)
        return torch.stack([self._text[n] for n in nouns])

    def _pair(self, items: list[_Item], counts: Counter) -> list[tuple]:
        masks = self.scorer.mask_embeddings(
            [it.image for it in items], [it.label for it in items], [it.ids for it in items]
        )
        rows: list[tuple] = []
        for it, m in zip(items, masks, strict=True):
            scores = (self.noun_embeddings(it.nouns) @ m.T).numpy()
            chosen = select_pairs(scores, it.nouns, it.ids, it.areas, self.cfg.threshold)
            counts["nouns_scored"] += len(it.nouns)
            counts["below_threshold"] += len(it.nouns) - len(chosen)
            counts["paired_samples"] += bool(chosen)
            rows.extend((it.key, *c) for c in chosen)
        return rows

    def shard(
        self, tar_path: str | Path, masks_path: str | Path, entities_path: str | Path
    ) -> tuple[pa.Table, dict[str, int]]:
        """Pair every sample of one shard.

        Samples without an ok pseudo-mask, without usable nouns, with an undecodable image or
        mask, or with no candidate mask are skipped and counted. Returns the table
        (``PAIRS_SCHEMA``, the counts in its metadata: :func:`shard_counts`) and the counts.
        """
        from ovs.data.shards import iter_shard_by_key

        cfg = self.cfg
        masks = read_keyed(Path(masks_path), ["key", "label_png", "k", "status"])
        ents = read_keyed(Path(entities_path), ["key", cfg.noun_column, "status"])
        counts: Counter = Counter()
        rows: list[tuple] = []
        batch: list[_Item] = []
        # key order: the scorer batches images and caches noun texts, so tar order (which
        # varies from run to run) would move the scores
        for sample in iter_shard_by_key(tar_path, members=("jpg",)):
            counts["samples"] += 1
            item = self._item(sample, masks.get(sample["key"]), ents.get(sample["key"]), counts)
            if item is None:
                continue
            batch.append(item)
            if len(batch) >= cfg.batch_size:
                rows.extend(self._pair(batch, counts))
                batch = []
        if batch:
            rows.extend(self._pair(batch, counts))
        counts["pairs"] = len(rows)
        for name in ("paired_samples", "nouns_scored", "below_threshold"):
            counts[name] += 0  # always present, even for an empty shard
        table = pa.table(
            {name: [r[i] for r in rows] for i, name in enumerate(PAIRS_SCHEMA.names)},
            schema=PAIRS_SCHEMA,
        )
        result = dict(counts)
        return table.replace_schema_metadata({COUNTS_KEY: json.dumps(result).encode()}), result

    def _item(
        self, sample: dict, mask_row: dict | None, ent_row: dict | None, counts: Counter
    ) -> _Item | None:
        if mask_row is None or mask_row.get("status") != STATUS_OK or not mask_row["label_png"]:
            counts["skipped_no_pseudo_mask"] += 1
            return None
        nouns = []
        if ent_row is not None and ent_row.get("status") == STATUS_OK:
            nouns = clean_nouns(ent_row.get(self.cfg.noun_column), self.cfg.max_nouns)
        if not nouns:
            counts["skipped_no_nouns"] += 1
            return None
        image = decode_rgb(sample.get("jpg"))
        if image is None:
            counts["skipped_bad_image"] += 1
            return None
        try:
            label = decode_label_png(mask_row["label_png"])
        except Exception:  # noqa: BLE001 - a corrupt mask PNG is a bad sample
            counts["skipped_bad_mask"] += 1
            return None
        k = max(int(mask_row.get("k") or 0), int(label.max()) + 1 if label.size else 0)
        ids, areas = candidate_masks(label, k, self.cfg.min_mask_area)
        if label.ndim != 2 or ids.size == 0:
            counts["skipped_bad_mask"] += 1
            return None
        return _Item(sample["key"], image, label, nouns, ids, areas)


class ShardPairer:
    """The ``pairs`` stage's per-shard function: one shard (its images, pseudo-masks and
    caption nouns) -> its ``PAIRS_SCHEMA`` table, the shard's counts in the metadata.

    The scorer is built once, in ``__init__`` (one per Ray actor), with as many torch threads
    as the actor holds CPUs.
    """

    def __init__(self, cfg: PairsConfig, checkpoint: str | None) -> None:
        torch.set_num_threads(max(1, int(cfg.num_cpus)))
        self.maker = PairMaker(cfg, build_scorer(cfg, checkpoint))

    def __call__(self, tar: str, masks: str, entities: str) -> pa.Table:
        return self.maker.shard(tar, masks, entities)[0]
