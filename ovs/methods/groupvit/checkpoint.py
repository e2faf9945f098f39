"""GroupViT's checkpoint format: ``{"method": "groupvit", "config": asdict(GroupViTConfig),
"model": state_dict, **extra}``."""

from __future__ import annotations

import dataclasses
import io
from pathlib import Path
from typing import Any

import torch

from ovs.io import atomic_write_bytes
from ovs.methods.groupvit.config import GroupingConfig, GroupViTConfig
from ovs.methods.groupvit.model import GroupViT
from ovs.models.text import TextConfig

NAME = "groupvit"


def save_state(name: str, model: torch.nn.Module, cfg: Any, path: str | Path, extra: Any) -> Path:
    """Atomically write ``{"method": name, "config": asdict(cfg), "model": ..., **extra}``."""
    buf = io.BytesIO()
    state = {
        "method": name,
        "config": dataclasses.asdict(cfg),
        "model": model.state_dict(),
        **(extra or {}),
    }
    torch.save(state, buf)
    return atomic_write_bytes(path, buf.getvalue())


def save_checkpoint(model: GroupViT, path: str | Path, extra: dict[str, Any] | None = None) -> Path:
    """Atomically write the model's config and weights (and ``extra``, e.g. the step)."""
    return save_state(NAME, model, model.cfg, path, extra)


def grouping_from_dict(d: dict[str, Any]) -> GroupingConfig:
    d = dict(d)
    for k in ("depths", "group_tokens", "output_groups"):
        d[k] = tuple(d[k])
    return GroupingConfig(**d)


def config_from_dict(d: dict[str, Any]) -> GroupViTConfig:
    """Inverse of ``dataclasses.asdict`` for :class:`GroupViTConfig`."""
    d = dict(d)
    image = grouping_from_dict(d.pop("image"))
    text = TextConfig(**d.pop("text"))
    for k in ("pixel_mean", "pixel_std"):
        d[k] = tuple(d[k])
    return GroupViTConfig(image=image, text=text, **d)


def from_checkpoint(state: dict[str, Any]) -> GroupViT:
    """Rebuild the model from a :func:`save_checkpoint` dict; the random init it overwrites
    draws from a forked RNG, so loading leaves the global RNG alone."""
    cfg = config_from_dict(state["config"])
    with torch.random.fork_rng(devices=[]):
        model = GroupViT(cfg)
    model.load_state_dict(state["model"])
    return model
