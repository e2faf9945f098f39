"""OVSegmentor's checkpoint format: ``{"method": "ovsegmentor", "config":
asdict(OVSegmentorConfig), "model": state_dict, **extra}``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import ovs.methods.checkpoint_io as checkpoint_io
from ovs.methods.ovsegmentor.config import OVSegmentorConfig
from ovs.methods.ovsegmentor.model import OVSegmentor

NAME = "ovsegmentor"


def save_checkpoint(
    model: OVSegmentor, path: str | Path, extra: dict[str, Any] | None = None
) -> Path:
    """Atomically write the model's config and weights (and ``extra``)."""
    return checkpoint_io.save(NAME, model.cfg, model.state_dict(), path, extra)


def config_from_dict(d: dict[str, Any]) -> OVSegmentorConfig:
    """Inverse of ``dataclasses.asdict`` for :class:`OVSegmentorConfig`."""
    return checkpoint_io.read_config(OVSegmentorConfig, d)


def from_checkpoint(state: dict[str, Any]) -> OVSegmentor:
    """Rebuild the model (no hub download: ``bert.pretrained`` is dropped, the saved weights
    win)."""
    cfg = config_from_dict(state["config"])
    cfg.bert.pretrained = False
    return checkpoint_io.rebuild(lambda: OVSegmentor(cfg), state["model"])
