"""Baseline 2 of the S-Seg paper (seed 002, Sec. 4.1), the pseudo-mask ViT: a ViT whose tokens
are pooled within each pseudo-mask segment, the segment features pooled into the image
embedding, trained CLIP-style from scratch on the captions with the pseudo-masks S-Seg trains
on; at test time each pseudo-mask segment of the test image is classified.

- ``config``: ``PMViTConfig`` (model), the ``train.pmvit`` section, the paper scale.
- ``model``: ``PMViT`` (ViT, segment pooling, text tower, inference).
- ``objective``: one batch's InfoNCE. ``recipe``: AdamW groups. ``checkpoint``: the file format.
- ``adapters``: ``SegMethod`` (segments from the pseudo-mask extractor).
"""

from __future__ import annotations

import torch

from ovs.methods.pmvit import adapters, checkpoint, config, recipe
from ovs.methods.pmvit.model import PMViT
from ovs.methods.pmvit.objective import PMViTObjective
from ovs.methods.spec import MethodSpec, open_vocabulary


def build_model(cfg: config.PMViTMethodConfig, seed: int, num_classes: int | None = None) -> PMViT:
    """Seed the global RNG with ``seed``, then build the model (open vocabulary)."""
    open_vocabulary("pmvit", num_classes)
    cfg.validate()
    torch.manual_seed(seed)
    return PMViT(cfg.model)


def objective(model: PMViT, cfg: config.PMViTMethodConfig) -> PMViTObjective:
    """One batch of InfoNCE (the section has no loss settings)."""
    return PMViTObjective(model)


SPEC = MethodSpec(
    name=checkpoint.NAME,
    config=config.PMViTMethodConfig,
    flavors={"tiny": config.PMViTMethodConfig, "paper": config.paper},
    build_model=build_model,
    objective=objective,
    optimizer=recipe.build_optimizer,
    save_checkpoint=checkpoint.save_checkpoint,
    from_checkpoint=checkpoint.from_checkpoint,
    seg_method=adapters.seg_method,
    image_backbone=adapters.image_backbone,
    context_length=lambda cfg: cfg.model.text.context_length,
    input_size=lambda cfg: cfg.model.input_size,
)
