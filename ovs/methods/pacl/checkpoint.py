"""PACL's checkpoint format: ``{"method": "pacl", "config": asdict(PACLConfig), "model":
state_dict, **extra}``. The file is self-contained: it holds the frozen CLIP's weights too, so
loading it needs neither the ``clip`` checkpoint it was bound to nor a download."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import ovs.methods.checkpoint_io as checkpoint_io
from ovs.methods.clip.model import build_clip
from ovs.methods.pacl.config import PACLConfig
from ovs.methods.pacl.model import PACL

NAME = "pacl"


def save_checkpoint(model: PACL, path: str | Path, extra: dict[str, Any] | None = None) -> Path:
    """Atomically write the model's config and weights (and ``extra``, e.g. the step)."""
    return checkpoint_io.save(NAME, model.cfg, model.state_dict(), path, extra)


def config_from_dict(d: dict[str, Any]) -> PACLConfig:
    """Inverse of ``dataclasses.asdict`` for :class:`PACLConfig`."""
    return checkpoint_io.read_config(PACLConfig, d)


def from_checkpoint(state: dict[str, Any]) -> PACL:
    """Rebuild the model from a loaded :func:`save_checkpoint` dict: the CLIP is built with
    random weights (no pretrained download, no bound checkpoint read) and every weight comes
    from the file."""
    cfg = config_from_dict(state["config"])
    clip = dataclasses.replace(cfg.clip, pretrained=None)
    return checkpoint_io.rebuild(lambda: PACL(cfg, build_clip(clip, 0)), state["model"])
