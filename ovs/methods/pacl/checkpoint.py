"""PACL's checkpoint format: ``{"method": "pacl", "config": asdict(PACLConfig), "model":
state_dict, **extra}``. The file is self-contained: it holds the frozen CLIP's weights too, so
loading it needs neither the ``clip`` checkpoint it was bound to nor a download."""

from __future__ import annotations

import dataclasses
import io
from pathlib import Path
from typing import Any

import torch

from ovs.io import atomic_write_bytes
from ovs.methods.clip.checkpoint import config_from_dict as clip_config_from_dict
from ovs.methods.clip.model import build_clip
from ovs.methods.pacl.config import PACLConfig
from ovs.methods.pacl.model import PACL

NAME = "pacl"


def save_checkpoint(model: PACL, path: str | Path, extra: dict[str, Any] | None = None) -> Path:
    """Atomically write the model's config and weights (and ``extra``, e.g. the step)."""
    buf = io.BytesIO()
    state = {
        "method": NAME,
        "config": dataclasses.asdict(model.cfg),
        "model": model.state_dict(),
        **(extra or {}),
    }
    torch.save(state, buf)
    return atomic_write_bytes(path, buf.getvalue())


def config_from_dict(d: dict[str, Any]) -> PACLConfig:
    """Inverse of ``dataclasses.asdict`` for :class:`PACLConfig`."""
    d = dict(d)
    return PACLConfig(clip=clip_config_from_dict(d.pop("clip")), **d)


def from_checkpoint(state: dict[str, Any]) -> PACL:
    """Rebuild the model from a loaded :func:`save_checkpoint` dict: the CLIP is built with
    random weights (no pretrained download, no bound checkpoint read) and every weight comes
    from the file. The random init draws from a forked RNG (the global RNG is left alone)."""
    cfg = config_from_dict(state["config"])
    with torch.random.fork_rng(devices=[]):
        model = PACL(cfg, build_clip(dataclasses.replace(cfg.clip, pretrained=None), 0))
    model.load_state_dict(state["model"])
    return model
