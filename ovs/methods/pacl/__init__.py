"""PACL, Patch Aligned Contrastive Learning (Mukhoti et al., CVPR 2023; seed 001): a frozen
CLIP, a residual embedder on its patch tokens trained so that the caption-weighted pool of the
patches (weights: softmax over patches of cos(patch, caption)) matches the caption under
symmetric InfoNCE; at test time every patch is classified.

- ``config``: ``PACLConfig`` (the CLIP, the embedder), the ``train.pacl`` section, paper scale.
- ``model``: ``PACL``. ``losses``: the compatibility and its InfoNCE. ``objective``: one batch.
- ``recipe``: AdamW over the embedder. ``checkpoint``: the (self-contained) file format.
- ``adapters``: ``SegMethod``.

The CLIP comes from the ``clip`` method's checkpoint of the same run (:func:`bind` fills in
``clip_checkpoint``) or, unbound, from ``model.clip`` itself (open_clip pretrained weights at
paper scale; random towers in the tiny flavour, which only tests use).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from ovs.methods.clip.model import build_clip
from ovs.methods.pacl import adapters, checkpoint, config, recipe
from ovs.methods.pacl.model import PACL
from ovs.methods.pacl.objective import PACLObjective
from ovs.methods.spec import MethodSpec, open_vocabulary


def _trained_clip(path: str | Path) -> Any:
    """The ``clip`` method's model in ``path`` (its ``.cfg`` and open_clip ``.clip``)."""
    from ovs.methods import load_checkpoint

    spec, model = load_checkpoint(path)
    if spec.name != "clip":
        raise ValueError(f"train.pacl.model.clip_checkpoint {path} is a {spec.name} checkpoint")
    return model


def bind(
    cfg: config.PACLMethodConfig, checkpoints: Mapping[str, str | Path]
) -> config.PACLMethodConfig:
    """The spec's ``bind``: the section with this run's ``clip`` checkpoint filled in. Pure (the
    file need not exist yet: the ``train`` stage binds before it trains the requirement); the
    checkpoint is read by :func:`build_model`."""
    model = dataclasses.replace(cfg.model, clip_checkpoint=str(checkpoints["clip"]))
    return dataclasses.replace(cfg, model=model)


def build_model(cfg: config.PACLMethodConfig, seed: int, num_classes: int | None = None) -> PACL:
    """The frozen CLIP, then, with the global RNG seeded by ``seed``, the embedder. With a bound
    ``clip_checkpoint`` the CLIP is that checkpoint's model, and the PACL model's ``clip``
    config becomes the checkpoint's own (what its file needs to rebuild it); else it is
    :func:`build_clip` of ``model.clip`` (open_clip pretrained weights or random towers)."""
    open_vocabulary("pacl", num_classes)
    cfg.validate()
    m = cfg.model
    if m.clip_checkpoint:
        trained = _trained_clip(m.clip_checkpoint)
        m = dataclasses.replace(m, clip=dataclasses.replace(trained.cfg, pretrained=None))
        clip = trained.clip
    else:
        clip = build_clip(m.clip, seed)
    torch.manual_seed(seed)
    return PACL(m, clip)


def objective(model: PACL, cfg: config.PACLMethodConfig) -> PACLObjective:
    """One batch of PACL's InfoNCE (the section has no loss settings)."""
    return PACLObjective(model)


SPEC = MethodSpec(
    name=checkpoint.NAME,
    config=config.PACLMethodConfig,
    flavors={"tiny": config.PACLMethodConfig, "paper": config.paper},
    build_model=build_model,
    objective=objective,
    optimizer=recipe.build_optimizer,
    save_checkpoint=checkpoint.save_checkpoint,
    from_checkpoint=checkpoint.from_checkpoint,
    seg_method=adapters.seg_method,
    requires=("clip",),
    bind=bind,
    context_length=lambda cfg: cfg.model.clip.context_length,
    input_size=lambda cfg: cfg.model.input_size,
)
