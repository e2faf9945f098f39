"""Fused AdamW in two parameter groups, the optimiser recipe the caption-trained methods share:
weight decay on weight matrices; none on tensors of fewer than two dimensions (biases, norms,
the temperature) nor on parameters whose name holds one of the method's no-decay keys
(embeddings, queries, group tokens, ...). Frozen parameters are left out. The fused kernel
(CPU and CUDA, deterministic): the per-tensor loop took 40-50 ms of the tiny CPU step, fused
~9 ms."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ovs.methods.spec import OptimizerSettings


def decay_groups(model: nn.Module, weight_decay: float, no_decay: Sequence[str] = ()) -> list[dict]:
    """``[{decayed params, weight_decay}, {the rest, 0.0}]`` in ``named_parameters`` order."""
    decay: list[nn.Parameter] = []
    rest: list[nn.Parameter] = []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (rest if p.ndim < 2 or any(k in name for k in no_decay) else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": rest, "weight_decay": 0.0}]


def fused_adamw(
    model: nn.Module, cfg: OptimizerSettings, no_decay: Sequence[str] = ()
) -> torch.optim.Optimizer:
    """AdamW over :func:`decay_groups` at the stage's lr, weight decay and betas."""
    groups = decay_groups(model, cfg.weight_decay, no_decay)
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas, fused=True)
