"""S-Seg's checkpoint format: ``{"method": "sseg", "config": asdict(SSegConfig), "model":
state_dict, **extra}``. Checkpoints written before the method key existed are S-Seg's too
(:func:`ovs.methods.load_checkpoint` reads them as ``sseg``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import ovs.methods.checkpoint_io as checkpoint_io
from ovs.methods.sseg.config import SSegConfig
from ovs.methods.sseg.model import SSeg

NAME = "sseg"


def save_checkpoint(model: SSeg, path: str | Path, extra: dict[str, Any] | None = None) -> Path:
    """Atomically write the model's config and weights (and ``extra``, e.g. the step)."""
    return checkpoint_io.save(NAME, model.cfg, model.state_dict(), path, extra)


def config_from_dict(d: dict[str, Any]) -> SSegConfig:
    """Inverse of ``dataclasses.asdict`` for :class:`SSegConfig`."""
    return checkpoint_io.read_config(SSegConfig, d)


def from_checkpoint(state: dict[str, Any]) -> SSeg:
    """Rebuild the model from a loaded :func:`save_checkpoint` dict (no backbone download: the
    backbone's pretrained flag and checkpoint path are dropped, the saved weights win)."""
    cfg = config_from_dict(state["config"])
    cfg.maskformer.pretrained = False
    cfg.maskformer.checkpoint = None
    return checkpoint_io.rebuild(lambda: SSeg(cfg), state["model"])
