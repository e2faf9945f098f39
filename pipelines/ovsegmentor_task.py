"""OVSegmentor's training :class:`~pipelines.loop.Task`: S-Seg's caption batches (in-memory
``SampleSource`` or streaming ``RankIngest``) plus, per batch, the masked captions and one
cross-image partner per sample from the ``entities`` stage's pairs
(:class:`ovs.methods.ovsegmentor.partners.PartnerIndex`, built once per worker over all
shards: a partner may live on another shard or rank)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from pipelines.train import SSegTask, SSegTaskFactory


class OVSegmentorTask(SSegTask):
    """Objective inputs ``(images, tokens, masked tokens, partner images, pair rows, entity
    prompt tokens, noun tokens, noun targets)`` (:mod:`ovs.methods.ovsegmentor.objective`).
    The per-rank generator draws augmentation, then partners, then nouns, so a resume replays
    the same batches."""

    def __init__(
        self, factory: SSegTaskFactory, seed: int, device: torch.device, rank: int, world: int
    ) -> None:
        from ovs.methods.ovsegmentor.partners import PartnerIndex

        super().__init__(factory, seed, device, rank, world)
        entities_out = Path(self.data.texts_dir).parent
        self.partners = PartnerIndex(entities_out, self.data.shards, self.cfg.augment.size)
        self.pairs_drawn = 0

    def inputs(self, batch: Any) -> tuple[tuple[Any, ...], int]:
        from ovs.data.ingest import as_float
        from ovs.methods.ovsegmentor.text import mask_entity_words
        from ovs.training import make_batch, prompts_for_nouns

        device, loss = self.device, self.loss
        if self.ingest is not None:
            images = as_float(batch.images.to(device, non_blocking=True))
            texts, noun_lists, keys = batch.texts, batch.nouns, batch.keys
        else:
            images, _, texts = make_batch(batch, self.cfg.augment, self.rng)
            noun_lists, keys = [s.nouns for s in batch], [s.key for s in batch]
        tokenize = self.model.tokenize
        masked = [mask_entity_words(t, self.partners.entities(k)) for t, k in zip(texts, keys)]
        rows, partner_images, shared = self.partners.draw(keys, self.rng)
        self.pairs_drawn += len(rows)
        size = images.shape[-1]
        if partner_images:
            stacked = torch.from_numpy(np.stack(partner_images)).permute(0, 3, 1, 2)
            partners = stacked.to(device).float().div(255.0)
            if partners.shape[-1] != size:
                partners = torch.nn.functional.interpolate(partners, size=(size, size))
            entity = tokenize([loss.entity_template.format(e) for e in shared])
        else:
            partners = torch.zeros(0, 3, size, size, device=device)
            entity = tokenize([])
        nouns: tuple[Any, Any] = (None, None)
        if loss.noun_weight > 0:
            prompts, targets = prompts_for_nouns(
                noun_lists, loss.nouns_per_image, loss.noun_template, self.rng
            )
            nouns = (tokenize(prompts), torch.from_numpy(targets).to(device))
        inputs = (
            images.to(device),
            tokenize(list(texts)),
            tokenize(masked),
            partners,
            torch.tensor(rows, dtype=torch.long, device=device),
            entity.to(device),
            *nouns,
        )
        return inputs, images.shape[0]

    def counts(self) -> dict[str, float]:
        """S-Seg's join counts and the partners drawn since this start."""
        return {**super().counts(), "train/pairs_drawn": float(self.pairs_drawn)}
