"""Training pieces that do not depend on Ray: the ``train`` section, batches, noun prompts.

The distributed loop (Ray Train workers, DDP, checkpoints, MLflow logging from rank 0) is
``pipelines/loop.py``, driven by ``pipelines/train.py``'s task; everything here is
single-process and unit-tested.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from ovs.config import check_choice
from ovs.data.augment import AugmentConfig, augment_pair
from ovs.data.train_data import JoinStats, Sample, iter_samples
from ovs.methods import METHODS
from ovs.methods.clip.config import ClipConfig
from ovs.methods.groupvit.config import GroupViTMethodConfig
from ovs.methods.ovsegmentor.config import OVSegmentorMethodConfig
from ovs.methods.pacl.config import PACLMethodConfig
from ovs.methods.pmvit.config import PMViTMethodConfig
from ovs.methods.sseg.config import SSegMethodConfig
from ovs.train.loop_config import LoopConfig

INGEST_EXECUTORS = ("auto", "ray", "local")
SUPERVISION = ("pseudo", "gt")


@dataclass
class TrainConfig(LoopConfig):
    """The ``train`` stage. Defaults: the tiny CPU recipe for the synthetic world (~6-8 min on 2
    cores). Paper (Table 5; ``conf/cc12m.yaml``): AdamW lr 5e-4, wd 0.05, betas (0.9, 0.999),
    global batch 4096, cosine decay, 2 warm-up epochs of 30, random resized crops at 224, bf16.

    Data: ``cache_in_memory: true`` (the embedded default) decodes the rank's shards once and
    draws batches from RAM (:class:`SampleSource`, augmentation in the training thread).
    ``cache_in_memory: false`` (the paper path) streams through the Ray Data ingest
    (``pipelines/ingest.py``: ``RankIngest``): decode, random resized crop and flip of image and
    pseudo-mask grid run in Ray tasks, shuffled in windows of
    ``ceil(shuffle_buffer / download.number_sample_per_shard)`` shards, and a resume continues
    from the step counter. The decode tasks need CPUs that the Train workers do not reserve
    (``num_workers * cpus_per_worker``). ``ingest_executor`` says where they run: ``ray``
    (Ray tasks; the stage fails before Ray Train starts, naming the CPU counts, when the cluster
    has no CPU beyond the workers' reservation), ``local`` (the same plan evaluated in the
    training process: identical batches, no extra CPU, no overlap with the step) or ``auto``
    (``ray`` when a CPU is free, else ``local`` with a warning; the tiny sibling on 2 cores
    has one free: 1 worker x 1 CPU). The executor changes no batch, so it is not hashed.
    """

    SECTION: ClassVar[str] = "train"
    UNHASHED: ClassVar[tuple[str, ...]] = (*LoopConfig.UNHASHED, "ingest_executor")

    # The trained method (a key of ovs.methods.METHODS) and one section per trainable method,
    # named like it; only the selected ones are used and hashed.
    method: str = "sseg"
    # More methods trained in the same run on the same shards, with the same loop settings
    # (image budget), each into its own content-addressed output (pipelines/train.py), and
    # evaluated beside the main one; the requirements of every listed method (MethodSpec.
    # requires) are added and trained first. Empty (the default): only ``method``, and the
    # key is left out of the stage hash.
    methods: list[str] = field(default_factory=list)
    sseg: SSegMethodConfig = field(default_factory=SSegMethodConfig)
    clip: ClipConfig = field(default_factory=ClipConfig)
    pacl: PACLMethodConfig = field(default_factory=PACLMethodConfig)
    pmvit: PMViTMethodConfig = field(default_factory=PMViTMethodConfig)
    groupvit: GroupViTMethodConfig = field(default_factory=GroupViTMethodConfig)
    ovsegmentor: OVSegmentorMethodConfig = field(default_factory=OVSegmentorMethodConfig)
    augment: AugmentConfig = field(default_factory=lambda: AugmentConfig(scale=(0.35, 1.0)))
    # LoopConfig fields whose default differs for S-Seg:
    cpus_per_worker: int = 2
    batch_size: int = 32  # per worker
    steps: int = 1500
    warmup_steps: int = 100
    min_lr_ratio: float = 0.01  # cosine decays to lr * min_lr_ratio
    grad_clip: float = 1.0
    log_every: int = 20
    require_cc4m: bool = False  # train only on captions that pass the CC4M entity filter
    # "pseudo": S-Seg (DINO/K-means pseudo-masks, captions). "gt": supervised upper bound on the
    # synthetic world (its train-split ground-truth masks, each matched mask feature classified
    # against the class-name texts; needs the world stage) - same model, same schedule.
    supervision: str = "pseudo"
    cache_in_memory: bool = True  # small datasets: decode once, sample from RAM
    shuffle_buffer: int = 2048  # streaming mode: samples in the shuffle window (in shards)
    ingest_executor: str = "auto"  # streaming mode: "auto" | "ray" | "local" (see above)
    eval_protocol: str = "tiny"  # protocol for the post-training zero-shot evaluation
    eval_limit: int | None = None  # evaluate on the first N eval images (None = all)

    def validate(self) -> None:
        """The loop's checks (:meth:`LoopConfig.validate`), then the ``train`` stage's own
        names, so a typo fails at load rather than after the upstream stages ran."""
        super().validate()
        check_choice("train.ingest_executor", self.ingest_executor, INGEST_EXECUTORS)
        check_choice("train.supervision", self.supervision, SUPERVISION)
        if self.method not in self.method_sections():
            raise ValueError(
                f"train.method: unknown method {self.method!r}; "
                f"choose from {sorted(self.method_sections())}"
            )
        for m in self.methods:
            if m not in self.method_sections():
                raise ValueError(
                    f"train.methods: unknown method {m!r}; "
                    f"choose from {sorted(self.method_sections())}"
                )
        if len(set(self.methods)) != len(self.methods) or self.method in self.methods:
            raise ValueError(
                f"train.methods must be unique and not repeat train.method: {self.methods}"
            )
        for m in self.trained_methods():
            for r in METHODS[m].requires:
                if r not in self.method_sections():
                    raise ValueError(f"method {m} requires {r!r}, which train cannot train")
            section = getattr(self, m)
            if hasattr(section, "validate"):
                section.validate()

    @classmethod
    def method_sections(cls) -> tuple[str, ...]:
        """The methods the stage can train: ``METHODS`` entries with a section here."""
        return tuple(f.name for f in dataclasses.fields(cls) if f.name in METHODS)

    def trained_methods(self) -> tuple[str, ...]:
        """``method``, ``methods`` and their requirements, each after what it requires (a
        requirement cycle raises ``ValueError``)."""
        order: list[str] = []

        def visit(m: str, stack: tuple[str, ...]) -> None:
            if m in stack:
                raise ValueError(f"train: methods require each other: {' -> '.join((*stack, m))}")
            if m in order:
                return
            for r in METHODS[m].requires if m in METHODS else ():
                visit(r, (*stack, m))
            order.append(m)

        for m in (self.method, *self.methods):
            visit(m, ())
        return tuple(order)

    def unselected(self) -> tuple[str, ...]:
        """What the stage hash leaves out: the sections of the methods it does not train, and
        ``methods`` while empty (so a one-method config hashes as before the key existed)."""
        used = set(self.trained_methods())
        skip = tuple(m for m in self.method_sections() if m not in used)
        return (*skip, "methods") if not self.methods else skip

    @property
    def method_config(self) -> Any:
        """The selected method's section (``getattr(self, self.method)``)."""
        return getattr(self, self.method)


def make_batch(
    samples: list[Sample], augment: AugmentConfig, rng: np.random.Generator
) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """Augment and stack: ``(images [B,3,S,S] float in [0,1], labels [B,S,S] int64, texts)``."""
    images, labels = [], []
    for s in samples:
        img = torch.from_numpy(np.array(s.image)).permute(2, 0, 1)  # cached arrays are read-only
        lab = torch.from_numpy(s.mask.astype(np.int64))
        img, lab = augment_pair(img, lab, augment, rng)
        images.append(img)
        labels.append(lab)
    return torch.stack(images), torch.stack(labels), [s.text for s in samples]


def noun_prompts(
    samples: list[Sample], per_image: int, template: str, rng: np.random.Generator
) -> tuple[list[str], np.ndarray]:
    """Prompted nouns of a batch for :func:`ovs.train.contrastive.noun_contrastive_loss` (reads only
    each sample's ``nouns``: :func:`prompts_for_nouns` of them)."""
    return prompts_for_nouns([s.nouns for s in samples], per_image, template, rng)


def prompts_for_nouns(
    noun_lists: Sequence[Sequence[str]], per_image: int, template: str, rng: np.random.Generator
) -> tuple[list[str], np.ndarray]:
    """Prompted nouns of a batch given each sample's caption nouns.

    Draws up to ``per_image`` distinct nouns of each sample's caption (without replacement),
    keeps each noun once per batch, and returns ``(texts [U], targets bool [B, U])`` where
    ``targets[i, u]`` says whether noun u is *any* noun of sample i (not only a drawn one).
    """
    chosen: list[str] = []
    seen: set[str] = set()
    for sample_nouns in noun_lists:
        nouns = sorted(set(sample_nouns))
        if not nouns:
            continue
        for j in rng.choice(len(nouns), size=min(per_image, len(nouns)), replace=False):
            if nouns[j] not in seen:
                seen.add(nouns[j])
                chosen.append(nouns[j])
    noun_sets = [set(n) for n in noun_lists]
    targets = np.array([[n in nouns for n in chosen] for nouns in noun_sets], dtype=bool)
    return [template.format(n) for n in chosen], targets.reshape(len(noun_lists), len(chosen))


class SampleSource:
    """Endless batches of joined samples for one rank from RAM (``cache_in_memory: true``),
    resumable exactly.

    Decodes the rank's shards once and draws batches from a per-epoch permutation,
    deterministic given the seed. :meth:`state_dict` is the RNG state at the epoch's start,
    the epoch and the batches delivered in it; after :meth:`load_state_dict` the next batch is
    the one an uninterrupted source would have delivered (the permutation is redrawn). The
    streaming mode (``cache_in_memory: false``) is the Ray Data ingest,
    ``pipelines/ingest.py``; ``tools/bench/ingest.py`` keeps the old streaming loader as its
    baseline.
    """

    def __init__(
        self,
        shards: list[Path],
        masks_dir: Path,
        texts_dir: Path,
        image_size: int,
        cfg: TrainConfig,
        seed: int,
    ):
        self.shards, self.masks_dir, self.texts_dir = shards, masks_dir, texts_dir
        self.image_size, self.cfg = image_size, cfg
        self.rng = np.random.default_rng(seed)
        self.epoch = 0
        self._epoch_rng = self.rng.bit_generator.state  # RNG state when the epoch began
        self._delivered = 0  # batches delivered in the current epoch
        self._skip = 0  # batches of the current epoch to replay silently (after a resume)
        self.stats = JoinStats()
        if not cfg.cache_in_memory:
            raise ValueError(
                "SampleSource is the in-memory mode; cache_in_memory: false streams through "
                "pipelines.ingest.RankIngest"
            )
        self.cache: list[Sample] = list(
            iter_samples(shards, masks_dir, texts_dir, image_size, self.stats, cfg.require_cc4m)
        )
        if not self.cache:
            raise RuntimeError(
                f"no usable training samples in {len(shards)} shard(s): {self.stats.as_dict()}"
            )

    def state_dict(self) -> dict:
        """Plain values only (loadable with ``torch.load(weights_only=True)``)."""
        return {"epoch": self.epoch, "rng": self._epoch_rng, "batches": self._delivered}

    def load_state_dict(self, state: dict) -> None:
        """Continue where ``state`` was taken; call before the first ``next`` of
        :meth:`batches`."""
        self.epoch = int(state["epoch"])
        self.rng.bit_generator.state = state["rng"]
        self._epoch_rng = state["rng"]
        self._skip = int(state["batches"])

    def _epoch_cached(self, batch_size: int) -> Iterator[list[Sample]]:
        perm = self.rng.permutation(len(self.cache))
        for i in range(0, len(perm) - batch_size + 1, batch_size):
            yield [self.cache[j] for j in perm[i : i + batch_size]]
        if len(perm) < batch_size:
            yield [self.cache[j] for j in perm]

    def batches(self, batch_size: int) -> Iterator[list[Sample]]:
        while True:
            self._epoch_rng = self.rng.bit_generator.state
            for b, batch in enumerate(self._epoch_cached(batch_size)):
                if b < self._skip:
                    continue  # replayed after a resume: consumed before the checkpoint
                self._delivered = b + 1
                yield batch
            self.epoch += 1
            self._delivered = self._skip = 0
