"""The S-Seg+ segmenter: a timm backbone + a UperNet head -> per-pixel logits over K classes.

Closed vocabulary: the segmenter is trained on the pseudo-labels of one dataset and predicts
that dataset's K classes (S-Seg paper §4.4 / Table 6: UperNet on an MAE-pretrained ViT-B/16,
features from blocks 4, 6, 8 and 12).

* :class:`MultiScaleBackbone` runs any timm model through ``forward_intermediates`` and keeps
  the outputs named by ``out_indices``. When they all share one stride (a plain ViT) they are
  rescaled to strides 4 / 8 / 16 / 32 the way BEiT / MAE do for UperNet (2x2 transposed convs,
  identity, max-pool); multi-scale backbones (ResNet, ConvNeXt, Swin) are used as they are.
* :class:`UperNetHead` is mmseg's ``UPerHead``: a pyramid pooling module (PPM, scales
  1/2/3/6) on the coarsest level, an FPN top-down path with lateral 1x1 and output 3x3 convs,
  all levels upsampled to the finest and fused by a 3x3 conv, dropout, a 1x1 classifier.
* :class:`Segmenter` = backbone + head; ``forward(images [B,3,H,W] in [0,1]) -> logits
  [B,K,H,W]`` (bilinear upsampling from stride 4). mmseg's auxiliary FCN head is not used.

:func:`layer_decay_groups` gives the optimiser's parameter groups with layer-wise learning
rate decay (BEiT / MAE fine-tuning): backbone layer ``i`` of ``L`` gets ``decay ** (L - i)``
of the learning rate, the neck and head get the full rate.
"""

from __future__ import annotations

import dataclasses
import io
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import timm
import torch
import torch.nn.functional as F
from torch import nn

from ovs.io import atomic_write_bytes

_TARGET_STRIDES = (4, 8, 16, 32)


@dataclass
class SegmenterConfig:
    """Backbone + head. Defaults: the tiny CPU flavour (half-width ResNet-18, 64-channel head,
    random init); :func:`paper_segmenter` gives the paper's ViT-B/16 (MAE) + UperNet."""

    backbone: str = "resnet18"  # timm name; paper: vit_base_patch16_224.mae
    pretrained: bool = False  # timm hub weights (needs network or a warm HF cache)
    checkpoint: str | None = None  # local backbone weights file (.pth/.safetensors), timm keys
    backbone_kwargs: dict[str, bool | int | float | str | list[int]] = field(
        default_factory=lambda: {"channels": [32, 64, 128, 256]}
    )
    # forward_intermediates indices: ResNet (1, 2, 3, 4) = strides 4..32; ViT-B (3, 5, 7, 11) =
    # blocks 4, 6, 8, 12 (the paper's choice).
    out_indices: tuple[int, ...] = (1, 2, 3, 4)
    channels: int = 64  # UperNet width (mmseg UperNet on MAE/BEiT: 768; ResNet configs: 512)
    pool_scales: tuple[int, ...] = (1, 2, 3, 6)
    dropout: float = 0.1  # before the classifier (mmseg default)


def paper_segmenter() -> SegmenterConfig:
    """Paper (Table 6): UperNet on an MAE-pretrained ViT-B/16, features of blocks 4/6/8/12."""
    return SegmenterConfig(
        backbone="vit_base_patch16_224.mae",
        pretrained=True,
        backbone_kwargs={"img_size": 512, "dynamic_img_size": True, "drop_path_rate": 0.1},
        out_indices=(3, 5, 7, 11),
        channels=768,
    )


def _conv_bn(cin: int, cout: int, k: int) -> nn.Sequential:
    """mmseg ``ConvModule``: conv (no bias) + BatchNorm + ReLU."""
    return nn.Sequential(
        nn.Conv2d(cin, cout, k, padding=k // 2, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class MultiScaleBackbone(nn.Module):
    """A timm model's intermediate features at strides 4 / 8 / 16 / 32, NCHW.

    ``forward(x [B,3,H,W] normalised with mean/std) -> [f4 [B,C0,H/4,W/4], f8, f16, f32]``. ``channels``
    lists ``C0..C3``; ``model`` is the (pruned) timm model, kept whole so that its
    ``group_matcher`` drives layer-wise lr decay.
    """

    model: Any  # timm's feature API (feature_info, forward_intermediates, ...) is untyped
    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, cfg: SegmenterConfig) -> None:
        super().__init__()
        extra: dict[str, Any] = dict(cfg.backbone_kwargs)
        if cfg.checkpoint is not None:
            path = Path(cfg.checkpoint).expanduser()
            if not path.is_file():
                raise FileNotFoundError(f"backbone checkpoint for {cfg.backbone} not found: {path}")
            # timm's own loader applies the model's checkpoint filter (MAE / BEiT key layouts,
            # position-embedding resampling).
            extra["pretrained_cfg_overlay"] = {"file": str(path)}
        self.model = timm.create_model(
            cfg.backbone,
            pretrained=cfg.pretrained or cfg.checkpoint is not None,
            num_classes=0,
            **extra,
        )
        if len(cfg.out_indices) != 4:
            raise ValueError(f"out_indices must name 4 feature levels, got {cfg.out_indices}")
        self.indices = list(cfg.out_indices)
        info = list(self.model.feature_info)
        if max(self.indices) >= len(info):
            raise ValueError(
                f"{cfg.backbone} has {len(info)} feature levels; out_indices {cfg.out_indices}"
            )
        strides = [int(info[i]["reduction"]) for i in self.indices]
        chans = [int(info[i]["num_chs"]) for i in self.indices]
        self.model.prune_intermediate_layers(self.indices, prune_norm=True, prune_head=True)
        if len(set(strides)) == 1:  # plain ViT: BEiT/MAE multi-level neck
            self.rescale = nn.ModuleList(
                _rescaler(c, s, t) for c, s, t in zip(chans, strides, _TARGET_STRIDES)
            )
        elif tuple(strides) == _TARGET_STRIDES:
            self.rescale = nn.ModuleList(nn.Identity() for _ in chans)
        else:
            raise ValueError(
                f"{cfg.backbone} out_indices {cfg.out_indices} give strides {strides}; need "
                f"{_TARGET_STRIDES} or four levels of one stride (ViT)"
            )
        self.channels = chans
        pcfg = getattr(self.model, "pretrained_cfg", {}) or {}
        mean = pcfg.get("mean", (0.485, 0.456, 0.406))
        std = pcfg.get("std", (0.229, 0.224, 0.225))
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        feats = self.model.forward_intermediates(
            x, indices=self.indices, intermediates_only=True, output_fmt="NCHW"
        )
        return [r(f) for r, f in zip(self.rescale, feats)]


def _rescaler(channels: int, stride: int, target: int) -> nn.Module:
    """BEiT's ``fpn1..fpn4``: stride ``stride`` -> ``target`` by 2x transposed convs / pooling."""
    if target == stride:
        return nn.Identity()
    if target > stride:
        if target % stride or (target // stride) & (target // stride - 1):
            raise ValueError(f"cannot pool stride {stride} to {target}")
        k = target // stride
        return nn.MaxPool2d(k, k)
    if stride % target or (stride // target) & (stride // target - 1):
        raise ValueError(f"cannot upsample stride {stride} to {target}")
    layers: list[nn.Module] = []
    s = stride
    while s > target:
        layers.append(nn.ConvTranspose2d(channels, channels, 2, 2))
        s //= 2
        if s > target:
            layers += [nn.BatchNorm2d(channels), nn.GELU()]
    return nn.Sequential(*layers)


class PPM(nn.Module):
    """Pyramid pooling (PSPNet): adaptive average pools at ``scales`` -> 1x1 conv -> upsample.

    ``forward(x [B,C,h,w]) -> [x, *pooled]`` (each ``[B,channels,h,w]``), to be concatenated.
    """

    def __init__(self, in_channels: int, channels: int, scales: tuple[int, ...]) -> None:
        super().__init__()
        self.scales = scales
        self.convs = nn.ModuleList(_conv_bn(in_channels, channels, 1) for _ in scales)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        out = [x]
        for s, conv in zip(self.scales, self.convs):
            y = conv(F.adaptive_avg_pool2d(x, s))
            out.append(F.interpolate(y, size=x.shape[-2:], mode="bilinear", align_corners=False))
        return out


class UperNetHead(nn.Module):
    """mmseg ``UPerHead``. ``forward([f4, f8, f16, f32]) -> logits [B,K,H/4,W/4]``."""

    def __init__(
        self,
        in_channels: list[int],
        channels: int,
        num_classes: int,
        pool_scales: tuple[int, ...] = (1, 2, 3, 6),
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        self.ppm = PPM(in_channels[-1], channels, pool_scales)
        self.bottleneck = _conv_bn(in_channels[-1] + len(pool_scales) * channels, channels, 3)
        self.lateral = nn.ModuleList(_conv_bn(c, channels, 1) for c in in_channels[:-1])
        self.fpn = nn.ModuleList(_conv_bn(channels, channels, 3) for _ in in_channels[:-1])
        self.fuse = _conv_bn(len(in_channels) * channels, channels, 3)
        self.dropout = nn.Dropout2d(dropout)
        self.classifier = nn.Conv2d(channels, num_classes, 1)

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        laterals = [conv(f) for conv, f in zip(self.lateral, feats[:-1])]
        laterals.append(self.bottleneck(torch.cat(self.ppm(feats[-1]), dim=1)))
        for i in range(len(laterals) - 1, 0, -1):  # top-down
            laterals[i - 1] = laterals[i - 1] + F.interpolate(
                laterals[i], size=laterals[i - 1].shape[-2:], mode="bilinear", align_corners=False
            )
        outs = [conv(lat) for conv, lat in zip(self.fpn, laterals[:-1])] + [laterals[-1]]
        size = outs[0].shape[-2:]
        outs = [outs[0]] + [
            F.interpolate(o, size=size, mode="bilinear", align_corners=False) for o in outs[1:]
        ]
        return self.classifier(self.dropout(self.fuse(torch.cat(outs, dim=1))))


class Segmenter(nn.Module):
    """Backbone + UperNet: ``forward(images [B,3,H,W] RGB in [0,1]) -> logits [B,K,H,W]``,
    ``K = num_classes`` (the target dataset's classes, background included if it has one).

    Inputs whose sides are not multiples of 32 (and of the ViT patch size) are zero-padded
    after normalisation and the output cropped back.
    """

    def __init__(self, cfg: SegmenterConfig, num_classes: int) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be positive, got {num_classes}")
        self.cfg = cfg
        self.num_classes = num_classes
        self.backbone = MultiScaleBackbone(cfg)
        self.head = UperNetHead(
            self.backbone.channels, cfg.channels, num_classes, cfg.pool_scales, cfg.dropout
        )
        patch = getattr(getattr(self.backbone.model, "patch_embed", None), "patch_size", (1,))
        self.pad_to = math.lcm(32, int(patch[0]))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        h, w = images.shape[-2:]
        ph, pw = (-h) % self.pad_to, (-w) % self.pad_to
        x = (images - self.backbone.mean.to(images)) / self.backbone.std.to(images)
        x = F.pad(x, (0, pw, 0, ph))
        logits = self.head(self.backbone(x))
        logits = F.interpolate(logits, size=(h + ph, w + pw), mode="bilinear", align_corners=False)
        return logits[..., :h, :w]

    @torch.no_grad()
    def probs(self, images: torch.Tensor) -> torch.Tensor:
        """``[B,3,H,W]`` in [0,1] -> softmax class probabilities ``[B,K,H,W]``."""
        return self.forward(images).float().softmax(dim=1)


def build_segmenter(cfg: SegmenterConfig, num_classes: int, seed: int = 0) -> Segmenter:
    """A segmenter with seeded random init for everything not loaded from weights."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return Segmenter(cfg, num_classes)


# ----------------------------------------------------------------------------- optimiser


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


# ----------------------------------------------------------------------------- checkpoints


def save_segmenter(model: Segmenter, path: str | Path, extra: dict[str, Any] | None = None) -> Path:
    """Atomically write ``{"config": asdict(cfg), "num_classes", "model": state_dict, **extra}``."""
    buf = io.BytesIO()
    state = {
        "config": dataclasses.asdict(model.cfg),
        "num_classes": model.num_classes,
        "model": model.state_dict(),
        **(extra or {}),
    }
    torch.save(state, buf)
    return atomic_write_bytes(path, buf.getvalue())


def load_segmenter(path: str | Path, map_location: str | torch.device = "cpu") -> Segmenter:
    """Rebuild a segmenter from :func:`save_segmenter` output (saved weights, no download)."""
    state = torch.load(path, map_location=map_location, weights_only=True)
    d = dict(state["config"])
    for k in ("out_indices", "pool_scales"):
        d[k] = tuple(d[k])
    d.update(pretrained=False, checkpoint=None)
    model = Segmenter(SegmenterConfig(**d), int(state["num_classes"]))
    model.load_state_dict(state["model"])
    return model
