"""GroupViT's optimiser recipe: AdamW (fused) with no weight decay on biases, norms, positional
and group-token embeddings and the temperature (GroupViT's ``skip_keywords``)."""

from __future__ import annotations

import torch
from torch import nn

from ovs.methods.spec import OptimizerSettings
from ovs.train.adamw import fused_adamw

NO_DECAY = (
    "embed",
    "group_token",
    "logit_scale",
)  # name keys with no weight decay (besides every tensor of < 2 dims)


def build_optimizer(model: nn.Module, cfg: OptimizerSettings) -> torch.optim.Optimizer:
    """Fused AdamW, decay on weight matrices only (:func:`ovs.train.adamw.fused_adamw`)."""
    return fused_adamw(model, cfg, NO_DECAY)
