"""OVSegmentor's checkpoint format: ``{"method": "ovsegmentor", "config":
asdict(OVSegmentorConfig), "model": state_dict, **extra}``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ovs.methods.groupvit.checkpoint import grouping_from_dict, save_state
from ovs.methods.ovsegmentor.config import BertTextConfig, OVSegmentorConfig
from ovs.methods.ovsegmentor.model import OVSegmentor
from ovs.models.text import TextConfig

NAME = "ovsegmentor"


def save_checkpoint(
    model: OVSegmentor, path: str | Path, extra: dict[str, Any] | None = None
) -> Path:
    """Atomically write the model's config and weights (and ``extra``)."""
    return save_state(NAME, model, model.cfg, path, extra)


def config_from_dict(d: dict[str, Any]) -> OVSegmentorConfig:
    """Inverse of ``dataclasses.asdict`` for :class:`OVSegmentorConfig`."""
    d = dict(d)
    image = grouping_from_dict(d.pop("image"))
    text = TextConfig(**d.pop("text"))
    bert = BertTextConfig(**d.pop("bert"))
    for k in ("pixel_mean", "pixel_std"):
        d[k] = tuple(d[k])
    return OVSegmentorConfig(image=image, text=text, bert=bert, **d)


def from_checkpoint(state: dict[str, Any]) -> OVSegmentor:
    """Rebuild the model (no hub download: ``bert.pretrained`` is dropped, the saved weights
    win); the random init draws from a forked RNG."""
    cfg = config_from_dict(state["config"])
    cfg.bert.pretrained = False
    with torch.random.fork_rng(devices=[]):
        model = OVSegmentor(cfg)
    model.load_state_dict(state["model"])
    return model
