"""The S-Seg+ segmenter's checkpoint format: ``{"method": "segmenter", "config":
asdict(SegmenterConfig), "num_classes", "model": state_dict, **extra}``."""

from __future__ import annotations

import dataclasses
import io
from pathlib import Path
from typing import Any

import torch

from ovs.io import atomic_write_bytes
from ovs.methods.segmenter.config import SegmenterConfig
from ovs.methods.segmenter.model import Segmenter

NAME = "segmenter"


def save_checkpoint(
    model: Segmenter, path: str | Path, extra: dict[str, Any] | None = None
) -> Path:
    """Atomically write the model's config, class count and weights (and ``extra``)."""
    buf = io.BytesIO()
    state = {
        "method": NAME,
        "config": dataclasses.asdict(model.cfg),
        "num_classes": model.num_classes,
        "model": model.state_dict(),
        **(extra or {}),
    }
    torch.save(state, buf)
    return atomic_write_bytes(path, buf.getvalue())


def from_checkpoint(state: dict[str, Any]) -> Segmenter:
    """Rebuild a segmenter from a loaded :func:`save_checkpoint` dict (saved weights, no
    download)."""
    d = dict(state["config"])
    for k in ("out_indices", "pool_scales"):
        d[k] = tuple(d[k])
    d.update(pretrained=False, checkpoint=None)
    model = Segmenter(SegmenterConfig(**d), int(state["num_classes"]))
    model.load_state_dict(state["model"])
    return model
