"""The checkpoint file every method writes, and its way back.

A file is ``{"method": name, "config": asdict(config), **fields, "model": state_dict, **extra}``
(``fields``: what a method needs besides its config, e.g. the segmenter's class count;
``extra``: the loop's step and the like), written atomically. Reading it back, the config is
rebuilt with the config loader's typed coercion (:func:`ovs.config.from_dict`: nested sections,
tuples), and the model is built on a forked RNG before its weights are loaded, so loading a
checkpoint leaves the global RNG where it was.
"""

from __future__ import annotations

import dataclasses
import io
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import torch
from torch import nn

from ovs.config import from_dict
from ovs.io import atomic_write_bytes

C = TypeVar("C")
M = TypeVar("M", bound=nn.Module)


def save(
    name: str,
    config: Any,
    weights: dict[str, torch.Tensor],
    path: str | Path,
    extra: dict[str, Any] | None = None,
    **fields: Any,
) -> Path:
    """Atomically write method ``name``'s ``config`` (a dataclass) and ``weights``."""
    buf = io.BytesIO()
    state = {
        "method": name,
        "config": dataclasses.asdict(config),
        **fields,
        "model": weights,
        **(extra or {}),
    }
    torch.save(state, buf)
    return Path(atomic_write_bytes(path, buf.getvalue()))


def read_config(cls: type[C], saved: dict[str, Any]) -> C:
    """The saved ``config`` dict as a ``cls`` instance (the inverse of ``dataclasses.asdict``)."""
    return from_dict(cls, dict(saved), f"checkpoint {cls.__name__}:")


def rebuild(build: Callable[[], M], weights: dict[str, torch.Tensor]) -> M:
    """``build()`` under a forked RNG (its random init is overwritten anyway), then ``weights``."""
    with torch.random.fork_rng(devices=[]):
        model = build()
    model.load_state_dict(weights)
    return model
