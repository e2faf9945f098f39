"""S-Seg's optimiser recipe: AdamW (fused) with no weight decay on biases, norms, embeddings,
queries and the temperature (CLIP/DETR practice)."""

from __future__ import annotations

import torch
from torch import nn

from ovs.methods.spec import OptimizerSettings


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """No weight decay on biases, norms, embeddings and the temperature (CLIP/DETR practice)."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if p.ndim < 2 or "embed" in name or "logit_scale" in name or "query" in name:
            no_decay.append(p)
        else:
            decay.append(p)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def build_optimizer(model: nn.Module, cfg: OptimizerSettings) -> torch.optim.Optimizer:
    """AdamW over :func:`param_groups`; the fused kernel (CPU and CUDA, deterministic): the
    per-tensor loop took 40-50 ms of the tiny CPU step, fused ~9 ms."""
    return torch.optim.AdamW(
        param_groups(model, cfg.weight_decay), lr=cfg.lr, betas=cfg.betas, fused=True
    )
