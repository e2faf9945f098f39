"""CLIP's optimiser recipe (open_clip's training script): AdamW (fused) with no weight decay on
gains, biases and the logit scale (every parameter of fewer than two dimensions)."""

from __future__ import annotations

import torch
from torch import nn

from ovs.methods.spec import OptimizerSettings


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Decay on weight matrices and embeddings; none on 1-d parameters and ``logit_scale``."""
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim < 2 or "logit_scale" in name else decay).append(p)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def build_optimizer(model: nn.Module, cfg: OptimizerSettings) -> torch.optim.Optimizer:
    """AdamW over :func:`param_groups` at the stage's lr, weight decay and betas."""
    return torch.optim.AdamW(
        param_groups(model, cfg.weight_decay), lr=cfg.lr, betas=cfg.betas, fused=True
    )
