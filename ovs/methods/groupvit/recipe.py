"""GroupViT's optimiser recipe: AdamW (fused) with no weight decay on biases, norms, positional
and group-token embeddings and the temperature (GroupViT's ``skip_keywords``)."""

from __future__ import annotations

import torch
from torch import nn

from ovs.methods.spec import OptimizerSettings

NO_DECAY_KEYS = ("embed", "group_token", "logit_scale")


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two groups: decayed weight matrices, and everything 1-d or named in ``NO_DECAY_KEYS``."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if p.ndim < 2 or any(k in name for k in NO_DECAY_KEYS):
            no_decay.append(p)
        else:
            decay.append(p)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def build_optimizer(model: nn.Module, cfg: OptimizerSettings) -> torch.optim.Optimizer:
    """AdamW over :func:`param_groups` (fused kernel, as S-Seg's recipe)."""
    return torch.optim.AdamW(
        param_groups(model, cfg.weight_decay), lr=cfg.lr, betas=cfg.betas, fused=True
    )
