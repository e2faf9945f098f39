"""UperNet building blocks on any timm backbone: multi-scale features and the UperNet head.

* :class:`MultiScaleBackbone` runs any timm model through ``forward_intermediates`` and keeps
  the outputs named by ``out_indices``. When they all share one stride (a plain ViT) they are
  rescaled to strides 4 / 8 / 16 / 32 the way BEiT / MAE do for UperNet (2x2 transposed convs,
  identity, max-pool); multi-scale backbones (ResNet, ConvNeXt, Swin) are used as they are.
* :class:`UperNetHead` is mmseg's ``UPerHead``: a pyramid pooling module (PPM, scales
  1/2/3/6) on the coarsest level, an FPN top-down path with lateral 1x1 and output 3x3 convs,
  all levels upsampled to the finest and fused by a 3x3 conv, dropout, a 1x1 classifier.

The S-Seg+ segmenter that puts them together is :mod:`ovs.methods.segmenter`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import timm
import torch
import torch.nn.functional as F
from torch import nn

_TARGET_STRIDES = (4, 8, 16, 32)


def _conv_bn(cin: int, cout: int, k: int) -> nn.Sequential:
    """mmseg ``ConvModule``: conv (no bias) + BatchNorm + ReLU."""
    return nn.Sequential(
        nn.Conv2d(cin, cout, k, padding=k // 2, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class MultiScaleBackbone(nn.Module):
    """A timm model's intermediate features at strides 4 / 8 / 16 / 32, NCHW.

    ``backbone`` is a timm name, ``pretrained`` its hub weights, ``checkpoint`` a local weights
    file (timm keys), ``out_indices`` the four ``forward_intermediates`` levels kept.

    ``forward(x [B,3,H,W] normalised with mean/std) -> [f4 [B,C0,H/4,W/4], f8, f16, f32]``. ``channels``
    lists ``C0..C3``; ``model`` is the (pruned) timm model, kept whole so that its
    ``group_matcher`` drives layer-wise lr decay.
    """

    model: Any  # timm's feature API (feature_info, forward_intermediates, ...) is untyped
    mean: torch.Tensor
    std: torch.Tensor

    def __init__(
        self,
        backbone: str,
        pretrained: bool,
        checkpoint: str | None,
        backbone_kwargs: dict[str, Any],
        out_indices: tuple[int, ...],
    ) -> None:
        super().__init__()
        extra: dict[str, Any] = dict(backbone_kwargs)
        if checkpoint is not None:
            path = Path(checkpoint).expanduser()
            if not path.is_file():
                raise FileNotFoundError(f"backbone checkpoint for {backbone} not found: {path}")
            # timm's own loader applies the model's checkpoint filter (MAE / BEiT key layouts,
            # position-embedding resampling).
            extra["pretrained_cfg_overlay"] = {"file": str(path)}
        self.model = timm.create_model(
            backbone,
            pretrained=pretrained or checkpoint is not None,
            num_classes=0,
            **extra,
        )
        if len(out_indices) != 4:
            raise ValueError(f"out_indices must name 4 feature levels, got {out_indices}")
        self.indices = list(out_indices)
        info = list(self.model.feature_info)
        if max(self.indices) >= len(info):
            raise ValueError(
                f"{backbone} has {len(info)} feature levels; out_indices {out_indices}"
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
                f"{backbone} out_indices {out_indices} give strides {strides}; need "
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
