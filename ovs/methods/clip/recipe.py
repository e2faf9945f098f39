"""CLIP's optimiser recipe (open_clip's training script): AdamW (fused) with no weight decay on
gains, biases and the logit scale (every parameter of fewer than two dimensions)."""

from __future__ import annotations

import torch
from torch import nn

from ovs.methods.spec import OptimizerSettings
from ovs.train.adamw import fused_adamw

NO_DECAY = ("logit_scale",)  # name keys with no weight decay (besides every tensor of < 2 dims)


def build_optimizer(model: nn.Module, cfg: OptimizerSettings) -> torch.optim.Optimizer:
    """Fused AdamW, decay on weight matrices only (:func:`ovs.train.adamw.fused_adamw`)."""
    return fused_adamw(model, cfg, NO_DECAY)
