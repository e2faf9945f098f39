"""CLIP's checkpoint format: ``{"method": "clip", "config": asdict(ClipConfig), "model":
state_dict of the open_clip CLIP, **extra}``."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import ovs.methods.checkpoint_io as checkpoint_io
from ovs.methods.clip.config import ClipConfig
from ovs.methods.clip.model import ClipModel, build_clip

NAME = "clip"


def save_checkpoint(
    model: ClipModel, path: str | Path, extra: dict[str, Any] | None = None
) -> Path:
    """Atomically write the config and the open_clip weights (and ``extra``, e.g. the step)."""
    return checkpoint_io.save(NAME, model.cfg, model.clip.state_dict(), path, extra)


def config_from_dict(d: dict[str, Any]) -> ClipConfig:
    """Inverse of ``dataclasses.asdict`` for :class:`ClipConfig`."""
    return checkpoint_io.read_config(ClipConfig, d)


def from_checkpoint(state: dict[str, Any]) -> ClipModel:
    """Rebuild the model from a loaded :func:`save_checkpoint` dict: the architecture of the
    saved config without its pretrained weights (no download; the saved weights win)."""
    cfg = config_from_dict(state["config"])
    arch = dataclasses.replace(cfg, pretrained=None)
    return ClipModel(cfg, checkpoint_io.rebuild(lambda: build_clip(arch, 0), state["model"]))
