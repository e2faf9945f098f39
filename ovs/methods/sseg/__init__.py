"""S-Seg (Ye et al.): a class-agnostic MaskFormer and a text Transformer trained from scratch on
pseudo-masks and captions, aligned by InfoNCE; open-vocabulary segmentation by MaskFormer's
semantic inference.

- ``config``: ``SSegConfig`` (model), ``SSegLossConfig``, the ``train.sseg`` section.
- ``model``: ``SSeg``, both towers, projections, temperature, inference.
- ``matching``, ``losses``, ``objective``: Hungarian matching, mask losses, one batch's loss.
- ``ddp``: DDP with the token table averaged over its used rows.
- ``recipe``: AdamW parameter groups. ``checkpoint``: the file format.
- ``adapters``: ``SegMethod`` and pairs-scorer adapters.
"""

from __future__ import annotations

import torch

from ovs.methods.spec import MethodSpec, open_vocabulary
from ovs.methods.sseg import adapters, checkpoint, config, ddp, recipe
from ovs.methods.sseg.model import SSeg
from ovs.methods.sseg.objective import SSegObjective


def build_model(cfg: config.SSegMethodConfig, seed: int, num_classes: int | None = None) -> SSeg:
    """Seed the global RNG with ``seed``, then build S-Seg (open vocabulary: no ``num_classes``)."""
    open_vocabulary("S-Seg", num_classes)
    torch.manual_seed(seed)
    return SSeg(cfg.model)


def objective(model: SSeg, cfg: config.SSegMethodConfig) -> SSegObjective:
    """One batch of the S-Seg loss with ``cfg.loss``'s weights."""
    return SSegObjective(model, cfg.loss)


SPEC = MethodSpec(
    name=checkpoint.NAME,
    config=config.SSegMethodConfig,
    flavors={"tiny": config.SSegMethodConfig, "paper": config.paper},
    build_model=build_model,
    objective=objective,
    optimizer=recipe.build_optimizer,
    save_checkpoint=checkpoint.save_checkpoint,
    from_checkpoint=checkpoint.from_checkpoint,
    seg_method=adapters.seg_method,
    wrap_ddp=ddp.wrap_ddp,
    pair_scorer=adapters.pair_scorer,
    image_backbone=adapters.image_backbone,
    context_length=lambda cfg: cfg.model.text.context_length,
    input_size=lambda cfg: cfg.model.input_size,
)
