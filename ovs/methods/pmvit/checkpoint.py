"""The pseudo-mask ViT's checkpoint format: ``{"method": "pmvit", "config": asdict(PMViTConfig),
"model": state_dict, **extra}``."""

from __future__ import annotations

import dataclasses
import io
from pathlib import Path
from typing import Any

import torch

from ovs.io import atomic_write_bytes
from ovs.methods.pmvit.config import PMViTConfig, ViTConfig
from ovs.methods.pmvit.model import PMViT
from ovs.models.text import TextConfig
from ovs.pseudo_masks.masker import PseudoMaskConfig

NAME = "pmvit"


def save_checkpoint(model: PMViT, path: str | Path, extra: dict[str, Any] | None = None) -> Path:
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


def config_from_dict(d: dict[str, Any]) -> PMViTConfig:
    """Inverse of ``dataclasses.asdict`` for :class:`PMViTConfig`."""
    d = dict(d)
    vit = ViTConfig(**d.pop("vit"))
    text = TextConfig(**d.pop("text"))
    masks = PseudoMaskConfig(**d.pop("test_masks"))
    for k in ("pixel_mean", "pixel_std"):
        if k in d:
            d[k] = tuple(d[k])
    return PMViTConfig(vit=vit, text=text, test_masks=masks, **d)


def from_checkpoint(state: dict[str, Any]) -> PMViT:
    """Rebuild the model from a loaded :func:`save_checkpoint` dict; the random init it
    overwrites draws from a forked RNG, so loading leaves the global RNG alone."""
    cfg = config_from_dict(state["config"])
    with torch.random.fork_rng(devices=[]):
        model = PMViT(cfg)
    model.load_state_dict(state["model"])
    return model
