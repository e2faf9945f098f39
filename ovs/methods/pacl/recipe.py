"""PACL's optimiser recipe: fused AdamW over the trainable parameters only (the embedder and
the temperature; the CLIP is frozen), no weight decay on biases and the temperature."""

from __future__ import annotations

import torch
from torch import nn

from ovs.methods.spec import OptimizerSettings


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Decay on the embedder's matrices; none on 1-d tensors (biases, the log temperature)."""
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.ndim >= 2 else no_decay).append(p)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def build_optimizer(model: nn.Module, cfg: OptimizerSettings) -> torch.optim.Optimizer:
    """AdamW over :func:`param_groups` (fused kernel)."""
    return torch.optim.AdamW(
        param_groups(model, cfg.weight_decay), lr=cfg.lr, betas=cfg.betas, fused=True
    )
