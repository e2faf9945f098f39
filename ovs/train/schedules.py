"""Learning-rate schedules as ``LambdaLR`` factors of the step: linear warm-up, then cosine
(S-Seg) or polynomial (the S-Seg+ segmenter, mmseg's poly) decay to ``min_lr_ratio``."""

from __future__ import annotations

import math

import torch

from ovs.train.loop_config import LoopConfig


def _progress(step: int, cfg: LoopConfig) -> float:
    """Fraction ``t`` in [0, 1] of the decay phase done after the warm-up."""
    t = (step - cfg.warmup_steps) / max(cfg.steps - cfg.warmup_steps, 1)
    return min(max(t, 0.0), 1.0)


def warmup_cosine(step: int, cfg: LoopConfig) -> float:
    """Linear warm-up to 1 over ``warmup_steps``, then cosine decay to ``min_lr_ratio`` at
    ``steps``."""
    if step < cfg.warmup_steps:
        return (step + 1) / max(cfg.warmup_steps, 1)
    t = _progress(step, cfg)
    return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * t))


def warmup_poly(step: int, cfg: LoopConfig, power: float) -> float:
    """Linear warm-up to 1 over ``warmup_steps``, then ``(1 - t) ** power`` down to
    ``min_lr_ratio`` at ``steps``."""
    if step < cfg.warmup_steps:
        return (step + 1) / max(cfg.warmup_steps, 1)
    t = _progress(step, cfg)
    return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * (1 - t) ** power


def cosine_schedule(
    opt: torch.optim.Optimizer, cfg: LoopConfig
) -> torch.optim.lr_scheduler.LambdaLR:
    """:func:`warmup_cosine` scaling every parameter group's initial lr."""
    return torch.optim.lr_scheduler.LambdaLR(opt, lambda s: warmup_cosine(s, cfg))


def poly_schedule(
    opt: torch.optim.Optimizer, cfg: LoopConfig, power: float
) -> torch.optim.lr_scheduler.LambdaLR:
    """:func:`warmup_poly` scaling every parameter group's initial lr."""
    return torch.optim.lr_scheduler.LambdaLR(opt, lambda s: warmup_poly(s, cfg, power))
