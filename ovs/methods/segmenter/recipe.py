"""The S-Seg+ segmenter's optimiser recipe: AdamW with layer-wise learning-rate decay (BEiT /
MAE fine-tuning: backbone layer ``i`` of ``L`` gets ``decay ** (L - i)`` of the learning rate,
the neck and head the full rate), and the backbone's initial weights from another method's
trained image backbone (``self_train.init_from_sseg``)."""

from __future__ import annotations

from typing import Any, Protocol

import torch
from torch import nn

from ovs.methods.segmenter.model import Segmenter


class LayerDecaySettings(Protocol):
    """The ``self_train`` settings the recipe reads."""

    lr: float
    weight_decay: float
    betas: tuple[float, float]
    layer_decay: float


def layer_ids(model: Segmenter) -> tuple[dict[str, int], int]:
    """Layer index of every parameter name of ``model`` and the number of layers ``L + 1``.

    Backbone parameters get the layer of their timm ``group_matcher`` group (ViT: embeddings 0,
    block ``i`` -> ``i + 1``; ResNet: stem 0, stage blocks in order); backbones without a group
    matcher count as one layer. Everything else (neck rescalers, head) gets layer ``L``.
    """
    from timm.models import group_parameters

    bb: Any = model.backbone.model
    if hasattr(bb, "group_matcher"):
        layer_map = group_parameters(bb, bb.group_matcher(coarse=False), reverse=True)
    else:
        layer_map = {n: 0 for n, _ in bb.named_parameters()}
    top = max(layer_map.values(), default=0) + 1
    ids = {}
    for name, _ in model.named_parameters():
        prefix = "backbone.model."
        ids[name] = layer_map.get(name[len(prefix) :], top - 1) if name.startswith(prefix) else top
    return ids, top + 1


def layer_decay_groups(
    model: Segmenter, weight_decay: float, layer_decay: float
) -> list[dict[str, Any]]:
    """AdamW parameter groups with ``lr_scale = layer_decay ** (L - layer)``.

    No weight decay on biases, norm parameters, position embeddings and tokens (BEiT / MAE).
    The scheduler multiplies each group's ``lr_scale`` into the learning rate.
    """
    ids, n_layers = layer_ids(model)
    top = n_layers - 1
    groups: dict[tuple[int, bool], dict[str, Any]] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        no_decay = p.ndim <= 1 or name.endswith(("pos_embed", "cls_token", "reg_token"))
        key = (ids[name], no_decay)
        if key not in groups:
            groups[key] = {
                "params": [],
                "weight_decay": 0.0 if no_decay else weight_decay,
                "lr_scale": layer_decay ** (top - ids[name]),
                "layer": ids[name],
            }
        groups[key]["params"].append(p)
    return [groups[k] for k in sorted(groups)]


def build_optimizer(model: Segmenter, cfg: LayerDecaySettings) -> torch.optim.AdamW:
    """AdamW over :func:`layer_decay_groups`; each group's initial lr is ``cfg.lr * lr_scale``
    (a ``LambdaLR`` of the poly schedule then scales all alike)."""
    groups = layer_decay_groups(model, cfg.weight_decay, cfg.layer_decay)
    for g in groups:
        g["lr"] = cfg.lr * g["lr_scale"]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas)


def init_backbone(model: Segmenter, source: nn.Module) -> int:
    """Copy ``source``'s tensors (a trained timm backbone: the spec's ``image_backbone``) into
    ``model``'s backbone wherever names and shapes match; returns how many were copied.

    Raises ``ValueError`` when nothing matches (a different backbone architecture).
    """
    own = model.backbone.model.state_dict()
    copied = {
        name: v
        for name, v in source.state_dict().items()
        if name in own and own[name].shape == v.shape
    }
    if not copied:
        raise ValueError(
            "init_from_sseg: no tensor of the trained image backbone matches the segmenter's "
            f"backbone ({model.cfg.backbone}); use the same timm backbone as the trained method"
        )
    model.backbone.model.load_state_dict(copied, strict=False)
    return len(copied)
