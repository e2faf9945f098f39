"""GroupViT (Xu et al., CVPR 2022): a ViT whose grouping blocks merge patch tokens into
segments with learnable group tokens (Gumbel-softmax, straight-through hard assignment), trained
from captions alone by image-text and multi-label noun InfoNCE; zero-shot segmentation by
classifying each final group with text.

- ``config``: ``GroupingConfig``, ``GroupViTConfig``, ``GroupViTLossConfig``, the
  ``train.groupvit`` section and the GroupViT-S preset.
- ``grouping``: Gumbel assignment, grouping block, the grouping encoder.
- ``model``: ``GroupViT`` (both towers, projections, temperature, inference).
- ``objective``: one batch's loss. ``recipe``: AdamW groups. ``checkpoint``: the file format.
- ``adapters``: the ``SegMethod`` adapter.
"""

from __future__ import annotations

import torch

from ovs.methods.groupvit import adapters, checkpoint, config, recipe
from ovs.methods.groupvit.model import GroupViT
from ovs.methods.groupvit.objective import GroupViTObjective
from ovs.methods.spec import MethodSpec, open_vocabulary


def build_model(
    cfg: config.GroupViTMethodConfig, seed: int, num_classes: int | None = None
) -> GroupViT:
    """Seed the global RNG with ``seed``, then build GroupViT (open vocabulary)."""
    open_vocabulary("GroupViT", num_classes)
    torch.manual_seed(seed)
    return GroupViT(cfg.model)


def objective(model: GroupViT, cfg: config.GroupViTMethodConfig) -> GroupViTObjective:
    """One batch of the GroupViT loss with ``cfg.loss``'s weights."""
    return GroupViTObjective(model, cfg.loss)


SPEC = MethodSpec(
    name=checkpoint.NAME,
    config=config.GroupViTMethodConfig,
    flavors={"tiny": config.GroupViTMethodConfig, "paper": config.paper},
    build_model=build_model,
    objective=objective,
    optimizer=recipe.build_optimizer,
    save_checkpoint=checkpoint.save_checkpoint,
    from_checkpoint=checkpoint.from_checkpoint,
    seg_method=adapters.seg_method,
    image_backbone=adapters.image_backbone,
    context_length=lambda cfg: cfg.model.text.context_length,
    input_size=lambda cfg: cfg.model.image.input_size,
)
