"""OVSegmentor (Xu et al., CVPR 2023, seed 000): GroupViT-style grouping trained on the CC4M
subset with two proxy tasks, masked entity completion and cross-image mask consistency over
partners that share an entity (the ``entities`` stage's pairs).

- ``config``: ``OVSegmentorConfig`` (grouping + BERT or from-scratch text), the loss and
  proxy-task switches, the ``train.ovsegmentor`` section and the paper preset.
- ``text``: the text towers with a mask token and the caption masking.
- ``model``: ``OVSegmentor`` (GroupViT with that text tower). ``losses``: cross-image
  consistency. ``objective``: one batch's loss. ``checkpoint``: the file format. The recipe
  and the ``SegMethod`` adapter are GroupViT's.
"""

from __future__ import annotations

import torch

from ovs.methods.groupvit import adapters, recipe
from ovs.methods.ovsegmentor import checkpoint, config
from ovs.methods.ovsegmentor.model import OVSegmentor
from ovs.methods.ovsegmentor.objective import OVSegmentorObjective
from ovs.methods.spec import MethodSpec, open_vocabulary


def build_model(
    cfg: config.OVSegmentorMethodConfig, seed: int, num_classes: int | None = None
) -> OVSegmentor:
    """Seed the global RNG with ``seed``, then build OVSegmentor (open vocabulary)."""
    open_vocabulary("OVSegmentor", num_classes)
    torch.manual_seed(seed)
    return OVSegmentor(cfg.model)


def objective(model: OVSegmentor, cfg: config.OVSegmentorMethodConfig) -> OVSegmentorObjective:
    """One batch of the OVSegmentor loss with ``cfg.loss``'s weights and switches."""
    return OVSegmentorObjective(model, cfg.loss)


def _context_length(cfg: config.OVSegmentorMethodConfig) -> int:
    m = cfg.model
    return m.bert.context_length if m.text_encoder == "bert" else m.text.context_length


SPEC = MethodSpec(
    name=checkpoint.NAME,
    config=config.OVSegmentorMethodConfig,
    flavors={"tiny": config.OVSegmentorMethodConfig, "paper": config.paper},
    build_model=build_model,
    objective=objective,
    optimizer=recipe.build_optimizer,
    save_checkpoint=checkpoint.save_checkpoint,
    from_checkpoint=checkpoint.from_checkpoint,
    seg_method=adapters.seg_method,
    image_backbone=adapters.image_backbone,
    context_length=_context_length,
    input_size=lambda cfg: cfg.model.image.input_size,
)
