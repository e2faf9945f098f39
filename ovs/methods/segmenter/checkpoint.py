"""The S-Seg+ segmenter's checkpoint format: ``{"method": "segmenter", "config":
asdict(SegmenterConfig), "num_classes", "model": state_dict, **extra}``."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import ovs.methods.checkpoint_io as checkpoint_io
from ovs.methods.segmenter.config import SegmenterConfig
from ovs.methods.segmenter.model import Segmenter

NAME = "segmenter"


def save_checkpoint(
    model: Segmenter, path: str | Path, extra: dict[str, Any] | None = None
) -> Path:
    """Atomically write the model's config, class count and weights (and ``extra``)."""
    return checkpoint_io.save(
        NAME, model.cfg, model.state_dict(), path, extra, num_classes=model.num_classes
    )


def from_checkpoint(state: dict[str, Any]) -> Segmenter:
    """Rebuild a segmenter from a loaded :func:`save_checkpoint` dict (saved weights, no
    download)."""
    cfg = checkpoint_io.read_config(SegmenterConfig, state["config"])
    cfg = dataclasses.replace(cfg, pretrained=False, checkpoint=None)
    model = Segmenter(cfg, int(state["num_classes"]))
    model.load_state_dict(state["model"])
    return model
