"""One optimisation step of any method, the training loop's core (no Ray, no I/O): forward
under autocast, backward, gradient clipping, optimiser and schedule step.

``pipelines/loop.py`` runs it every step and ``tests/unit/test_golden_losses.py`` checks its first
50 losses bit for bit, so the golden file guards the loop's own arithmetic.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch


def train_step(
    objective: torch.nn.Module,
    inputs: Sequence[Any],
    model: torch.nn.Module,
    opt: torch.optim.Optimizer,
    sched: torch.optim.lr_scheduler.LRScheduler,
    grad_clip: float,
    amp_dtype: torch.dtype | None,
    device: torch.device,
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Step ``objective(*inputs)`` (a dict of scalar tensors with ``loss``, possibly computed
    by a DDP wrapper) once. ``amp_dtype`` None runs the forward in float32 (no autocast).

    Clips the global gradient norm of ``model``'s parameters at ``grad_clip`` (0: no clipping).
    Returns ``(objective's outputs, pre-clip grad norm)``; the norm is a zero scalar on
    ``device`` when clipping is off. No host sync: every returned tensor stays on the device.
    """
    with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
        out = objective(*inputs)
    opt.zero_grad(set_to_none=True)
    out["loss"].backward()
    grad_norm = (
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        if grad_clip > 0
        else torch.zeros((), device=device)
    )
    opt.step()
    sched.step()
    return out, grad_norm
