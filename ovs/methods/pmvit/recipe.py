"""The pseudo-mask ViT's optimiser recipe: fused AdamW, no weight decay on biases, norms,
position embeddings and the temperature (CLIP practice)."""

from __future__ import annotations

import torch
from torch import nn

from ovs.methods.spec import OptimizerSettings

NO_DECAY = ("pos_embed", "positional_embedding", "token_embedding", "logit_scale")


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Decay on matrices and the patch projection; none on 1-d tensors and :data:`NO_DECAY`."""
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim < 2 or any(s in name for s in NO_DECAY) else decay).append(p)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def build_optimizer(model: nn.Module, cfg: OptimizerSettings) -> torch.optim.Optimizer:
    """AdamW over :func:`param_groups` (fused kernel, as S-Seg's)."""
    return torch.optim.AdamW(
        param_groups(model, cfg.weight_decay), lr=cfg.lr, betas=cfg.betas, fused=True
    )
