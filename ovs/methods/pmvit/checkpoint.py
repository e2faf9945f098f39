"""The pseudo-mask ViT's checkpoint format: ``{"method": "pmvit", "config": asdict(PMViTConfig),
"model": state_dict, **extra}``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import ovs.methods.checkpoint_io as checkpoint_io
from ovs.methods.pmvit.config import PMViTConfig
from ovs.methods.pmvit.model import PMViT

NAME = "pmvit"


def save_checkpoint(model: PMViT, path: str | Path, extra: dict[str, Any] | None = None) -> Path:
    """Atomically write the model's config and weights (and ``extra``, e.g. the step)."""
    return checkpoint_io.save(NAME, model.cfg, model.state_dict(), path, extra)


def config_from_dict(d: dict[str, Any]) -> PMViTConfig:
    """Inverse of ``dataclasses.asdict`` for :class:`PMViTConfig`."""
    return checkpoint_io.read_config(PMViTConfig, d)


def from_checkpoint(state: dict[str, Any]) -> PMViT:
    """Rebuild the model from a loaded :func:`save_checkpoint` dict."""
    cfg = config_from_dict(state["config"])
    return checkpoint_io.rebuild(lambda: PMViT(cfg), state["model"])
