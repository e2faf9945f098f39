"""GroupViT's checkpoint format: ``{"method": "groupvit", "config": asdict(GroupViTConfig),
"model": state_dict, **extra}``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import ovs.methods.checkpoint_io as checkpoint_io
from ovs.methods.groupvit.config import GroupViTConfig
from ovs.methods.groupvit.model import GroupViT

NAME = "groupvit"


def save_checkpoint(model: GroupViT, path: str | Path, extra: dict[str, Any] | None = None) -> Path:
    """Atomically write the model's config and weights (and ``extra``, e.g. the step)."""
    return checkpoint_io.save(NAME, model.cfg, model.state_dict(), path, extra)


def config_from_dict(d: dict[str, Any]) -> GroupViTConfig:
    """Inverse of ``dataclasses.asdict`` for :class:`GroupViTConfig`."""
    return checkpoint_io.read_config(GroupViTConfig, d)


def from_checkpoint(state: dict[str, Any]) -> GroupViT:
    """Rebuild the model from a :func:`save_checkpoint` dict."""
    cfg = config_from_dict(state["config"])
    return checkpoint_io.rebuild(lambda: GroupViT(cfg), state["model"])
