"""CLIP's checkpoint format: ``{"method": "clip", "config": asdict(ClipConfig), "model":
state_dict of the open_clip CLIP, **extra}``."""

from __future__ import annotations

import dataclasses
import io
from pathlib import Path
from typing import Any

import torch

from ovs.io import atomic_write_bytes
from ovs.methods.clip.config import ClipConfig, ClipTextConfig, ClipVisionConfig
from ovs.methods.clip.model import ClipModel, build_clip

NAME = "clip"


def save_checkpoint(
    model: ClipModel, path: str | Path, extra: dict[str, Any] | None = None
) -> Path:
    """Atomically write the config and the open_clip weights (and ``extra``, e.g. the step)."""
    buf = io.BytesIO()
    state = {
        "method": NAME,
        "config": dataclasses.asdict(model.cfg),
        "model": model.clip.state_dict(),
        **(extra or {}),
    }
    torch.save(state, buf)
    return atomic_write_bytes(path, buf.getvalue())


def config_from_dict(d: dict[str, Any]) -> ClipConfig:
    """Inverse of ``dataclasses.asdict`` for :class:`ClipConfig`."""
    d = dict(d)
    vision = ClipVisionConfig(**d.pop("vision"))
    text = ClipTextConfig(**d.pop("text"))
    for k in ("pixel_mean", "pixel_std"):
        if k in d:
            d[k] = tuple(d[k])
    return ClipConfig(vision=vision, text=text, **d)


def from_checkpoint(state: dict[str, Any]) -> ClipModel:
    """Rebuild the model from a loaded :func:`save_checkpoint` dict: the architecture of the
    saved config without its pretrained weights (no download; the saved weights win), built
    under a forked RNG so loading leaves the global RNG alone."""
    cfg = config_from_dict(state["config"])
    arch = dataclasses.replace(cfg, pretrained=None)
    with torch.random.fork_rng(devices=[]):
        clip = build_clip(arch, 0)
    clip.load_state_dict(state["model"])
    return ClipModel(cfg, clip)
