"""S-Seg's checkpoint format: ``{"method": "sseg", "config": asdict(SSegConfig), "model":
state_dict, **extra}``. Checkpoints written before the method key existed are S-Seg's too
(:func:`ovs.methods.load_checkpoint` reads them as ``sseg``)."""

from __future__ import annotations

import dataclasses
import io
from pathlib import Path
from typing import Any

import torch

from ovs.io import atomic_write_bytes
from ovs.methods.sseg.config import SSegConfig
from ovs.methods.sseg.model import SSeg
from ovs.models.maskformer import MaskFormerConfig
from ovs.models.text import TextConfig

NAME = "sseg"


def save_checkpoint(model: SSeg, path: str | Path, extra: dict[str, Any] | None = None) -> Path:
    """Atomically write the model's config and weights (and ``extra``, e.g. the step)."""
    buf = io.BytesIO()
    state = {
        "method": NAME,
        "config": dataclasses.asdict(model.cfg),
        "model": model.state_dict(),
        **(extra or {}),
    }
    torch.save(state, buf)
    return atomic_write_bytes(path, buf.getvalue())


def config_from_dict(d: dict[str, Any]) -> SSegConfig:
    """Inverse of ``dataclasses.asdict`` for :class:`SSegConfig`."""
    d = dict(d)
    mf = MaskFormerConfig(**d.pop("maskformer"))
    tx = TextConfig(**d.pop("text"))
    for k in ("pixel_mean", "pixel_std"):
        if k in d:
            d[k] = tuple(d[k])
    return SSegConfig(maskformer=mf, text=tx, **d)


def from_checkpoint(state: dict[str, Any]) -> SSeg:
    """Rebuild the model from a loaded :func:`save_checkpoint` dict (no backbone download: the
    backbone's pretrained flag and checkpoint path are dropped, the saved weights win). The
    random init it overwrites draws from a forked RNG, so loading leaves the global RNG alone."""
    cfg = config_from_dict(state["config"])
    cfg.maskformer.pretrained = False
    cfg.maskformer.checkpoint = None
    with torch.random.fork_rng(devices=[]):
        model = SSeg(cfg)
    model.load_state_dict(state["model"])
    return model
