"""Trainable segmentation methods, one folder each, looked up by name in :data:`METHODS`.

A method's folder holds its config, model, objective, recipe, checkpoint format and adapters,
and exports ``SPEC`` (:class:`~ovs.methods.spec.MethodSpec`). Everything outside a method's
folder reaches it through this table: ``train.method`` names the entry, and
:func:`load_checkpoint` rebuilds any method's model from its file.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ovs.methods import clip, groupvit, ovsegmentor, pacl, pmvit, segmenter, sseg
from ovs.methods.spec import MethodSpec

METHODS: dict[str, MethodSpec[Any, Any]] = {
    "sseg": sseg.SPEC,
    "segmenter": segmenter.SPEC,
    "clip": clip.SPEC,
    "pacl": pacl.SPEC,
    "pmvit": pmvit.SPEC,
    "groupvit": groupvit.SPEC,
    "ovsegmentor": ovsegmentor.SPEC,
}

# What a checkpoint without a "method" key is: files written before the key existed.
LEGACY_METHOD = "sseg"


def get_method(name: str) -> MethodSpec[Any, Any]:
    """The spec of method ``name``; ``ValueError`` naming the choices for an unknown one."""
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; choose from {sorted(METHODS)}")
    return METHODS[name]


def load_checkpoint(
    path: str | Path, map_location: str | torch.device = "cpu"
) -> tuple[MethodSpec[Any, Any], nn.Module]:
    """``(spec, model)`` of any method's checkpoint file (its ``method`` key picks the spec).

    Raises ``ValueError`` naming the file when it is no method's checkpoint: unreadable,
    another ``torch.save`` format, an unknown method, or weights that do not fit the config.
    """
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except (RuntimeError, EOFError, OSError, pickle.UnpicklingError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ValueError(f"cannot load checkpoint {path}: {first}") from e
    if not isinstance(state, dict):
        raise ValueError(f"{path} is not a method checkpoint (a {type(state).__name__})")
    spec = get_method(str(state.get("method", LEGACY_METHOD)))
    try:
        model = spec.from_checkpoint(state)
    except (KeyError, TypeError, AttributeError, IndexError) as e:
        raise ValueError(f"{path} is not a {spec.name} checkpoint (config/model): {e!r}") from e
    except RuntimeError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ValueError(f"cannot load {spec.name} checkpoint {path}: {first}") from e
    return spec, model
