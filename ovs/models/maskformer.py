"""MaskFormer without its class head: N mask logits and N mask features per image.

Backbone (any timm model with stride 4/8/16/32 features) -> FPN pixel decoder (MaskFormer's
``BasePixelDecoder``: per-pixel embeddings at stride 4 plus a multi-scale memory at strides
32/16/8) -> DETR-style transformer decoder whose N learnable queries cross-attend to the memory
-> per-query mask embedding MLP dotted with the per-pixel embeddings.

The original MaskFormer cross-attends to the stride-32 level only (``memory_levels=1``, the
paper preset). ``memory_levels=3`` makes the decoder layers visit strides 32, 16, 8 in turn
(round robin, as Mask2Former does), which gives the queries more spatial detail at the tiny
64-pixel inputs of the synthetic world.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import timm
import torch
import torch.nn.functional as F
from torch import nn

from ovs.models.layers import MLP, Attention, sine_position_embedding

_STRIDES = (4, 8, 16, 32)


@dataclass
class MaskFormerConfig:
    """Image tower. Defaults are the tiny CPU flavour; :func:`paper_maskformer` gives the
    paper's (Swin-S, 6 decoder layers, 64 queries, dim 256, MaskFormer's 8 heads / FFN 2048 /
    dropout 0.1)."""

    backbone: str = "resnet18"  # timm name; paper: swin_small_patch4_window7_224
    pretrained: bool = False  # timm hub weights (needs network or a warm HF cache)
    checkpoint: str | None = None  # local backbone weights file (.pth/.safetensors), timm keys
    # extra timm.create_model kwargs; tiny: ResNet-18 at half width (7 GFLOP per fwd+bwd step
    # of 16 64-px images, all towers)
    backbone_kwargs: dict[str, bool | int | float | str | list[int]] = field(
        default_factory=lambda: {"channels": [32, 64, 128, 256]}
    )
    pixel_dim: int = 64  # FPN conv width (paper 256)
    mask_dim: int = 64  # per-pixel / mask embedding width (paper 256)
    hidden_dim: int = 64  # transformer decoder width = mask feature width (paper 256)
    num_queries: int = 16  # N (paper 64)
    dec_layers: int = 2  # paper 6
    num_heads: int = 4  # paper 8
    ffn_dim: int = 256  # paper 2048
    dropout: float = 0.0  # paper 0.1
    memory_levels: int = 3  # 1 = stride 32 only (MaskFormer); 3 = strides 32/16/8 round robin
    # What the N mask features are. "query" (paper): the decoder's query outputs. "pooled": each
    # query's sigmoid-mask-weighted average of the per-pixel embeddings, through a linear layer.
    # With "query" the tiny model's N features collapse to one image-level vector (pairwise
    # cosine 0.96, zero-shot mIoU flat at 0.09 over 1500 steps on the synthetic world): the
    # contrastive loss only sees their mean. Pooling ties each feature to its mask's pixels,
    # which the mask loss keeps apart, and the tiny model then learns to ground words.
    mask_features: str = "pooled"


def paper_maskformer() -> MaskFormerConfig:
    """The paper's image tower (appendix A.1; decoder hyper-parameters from MaskFormer)."""
    return MaskFormerConfig(
        backbone="swin_small_patch4_window7_224",
        pretrained=False,
        # Swin builds its shifted-window masks for a fixed size unless told otherwise; we
        # train at 224 and infer at 448.
        backbone_kwargs={"strict_img_size": False},
        pixel_dim=256,
        mask_dim=256,
        hidden_dim=256,
        num_queries=64,
        dec_layers=6,
        num_heads=8,
        ffn_dim=2048,
        dropout=0.1,
        memory_levels=1,
        mask_features="query",
    )


def _norm(dim: int) -> nn.GroupNorm:
    return nn.GroupNorm(min(32, dim), dim)


def _conv(cin: int, cout: int, k: int, relu: bool) -> nn.Sequential:
    layers: list[nn.Module] = [
        nn.Conv2d(cin, cout, k, padding=k // 2, bias=False),
        _norm(cout),
    ]
    if relu:
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class ChannelsLastMaxPool(nn.Module):
    """``pool`` run on a channels-last copy of its input, the result back in the input's
    layout. Max pooling picks the same maxima in either layout (the values are identical), but
    PyTorch's CPU kernel for NCHW with indices is scalar: on a ResNet stem's
    ``[16,64,32,32]`` map it takes ~16 ms against ~1.5 ms channels-last (one AVX2 core),
    more than any convolution of the tiny model's step."""

    def __init__(self, pool: nn.MaxPool2d) -> None:
        super().__init__()
        self.pool = pool

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type != "cpu" or x.dim() != 4:
            return self.pool(x)
        fmt = torch.channels_last if x.is_contiguous(memory_format=torch.channels_last) else None
        y = self.pool(x.contiguous(memory_format=torch.channels_last))
        return y if fmt is not None else y.contiguous()


def _channels_last_pools(module: nn.Module) -> None:
    """Wrap every ``nn.MaxPool2d`` child of ``module`` (recursively) in
    :class:`ChannelsLastMaxPool`; parameters and state-dict keys are unchanged."""
    for name, child in module.named_children():
        if isinstance(child, nn.MaxPool2d):
            setattr(module, name, ChannelsLastMaxPool(child))
        else:
            _channels_last_pools(child)


class Backbone(nn.Module):
    """A timm ``features_only`` model reduced to its stride 4/8/16/32 outputs, NCHW.

    ``forward(x [B,3,H,W]) -> [f4 [B,C0,H/4,W/4], f8, f16, f32]``.
    """

    def __init__(
        self,
        name: str,
        pretrained: bool = False,
        checkpoint: str | None = None,
        kwargs: dict[str, bool | int | float | str | list[int]] | None = None,
    ) -> None:
        super().__init__()
        extra: dict[str, Any] = dict(kwargs or {})
        if checkpoint is not None:
            # timm's own loader: maps classifier-model keys onto the features_only wrapper.
            extra["pretrained_cfg_overlay"] = {"file": str(checkpoint)}
        self.net = timm.create_model(
            name,
            features_only=True,
            pretrained=pretrained or checkpoint is not None,
            **extra,
        )
        _channels_last_pools(self.net)
        info: Any = self.net.feature_info
        reductions = list(info.reduction())
        channels = list(info.channels())
        missing = [s for s in _STRIDES if s not in reductions]
        if missing:
            raise ValueError(f"backbone {name} has no features at strides {missing}: {reductions}")
        self.keep = [reductions.index(s) for s in _STRIDES]
        self.channels = [channels[i] for i in self.keep]
        self.nhwc = str(getattr(self.net, "output_fmt", "NCHW")) in (
            "NHWC",
            "Format.NHWC",
        )

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        feats = self.net(x)
        out = [feats[i] for i in self.keep]
        if self.nhwc:
            out = [f.permute(0, 3, 1, 2).contiguous() for f in out]
        return out


class PixelDecoder(nn.Module):
    """FPN (MaskFormer ``BasePixelDecoder``): top-down path with lateral 1x1 and output 3x3
    convs.

    ``forward([f4, f8, f16, f32]) -> (pixel_emb [B,mask_dim,H/4,W/4],
    memory [p32, p16, p8] each [B,pixel_dim,h,w])``.
    """

    def __init__(self, in_channels: list[int], dim: int, mask_dim: int) -> None:
        super().__init__()
        self.lateral = nn.ModuleList(_conv(c, dim, 1, relu=False) for c in in_channels[:-1])
        self.top = _conv(in_channels[-1], dim, 3, relu=True)
        self.output = nn.ModuleList(_conv(dim, dim, 3, relu=True) for _ in in_channels[:-1])
        self.mask_proj = nn.Conv2d(dim, mask_dim, 3, padding=1)

    def forward(self, feats: list[torch.Tensor]) -> tuple[torch.Tensor, list[torch.Tensor]]:
        y = self.top(feats[-1])
        memory = [y]
        for i in range(len(feats) - 2, -1, -1):
            lat = self.lateral[i](feats[i])
            y = lat + F.interpolate(y, size=lat.shape[-2:], mode="nearest")
            y = self.output[i](y)
            memory.append(y)
        return self.mask_proj(y), memory[:-1]


class DecoderLayer(nn.Module):
    """DETR decoder layer (post-norm): self-attn over queries, cross-attn to memory, FFN."""

    def __init__(self, dim: int, heads: int, ffn_dim: int, dropout: float) -> None:
        super().__init__()
        self.self_attn = Attention(dim, heads, dropout)
        self.cross_attn = Attention(dim, heads, dropout)
        self.ffn = nn.Sequential(
            nn.Linear(dim, ffn_dim), nn.ReLU(inplace=True), nn.Dropout(dropout),
            nn.Linear(ffn_dim, dim),
        )  # fmt: skip
        self.norms = nn.ModuleList(nn.LayerNorm(dim) for _ in range(3))
        self.drop = nn.Dropout(dropout)

    def forward(
        self,
        tgt: torch.Tensor,
        qpos: torch.Tensor,
        memory: torch.Tensor,
        mpos: torch.Tensor,
    ) -> torch.Tensor:
        """``tgt, qpos [B,N,D]``; ``memory [B,L,D]``; ``mpos [1,L,D]`` -> ``[B,N,D]``."""
        q = tgt + qpos
        tgt = self.norms[0](tgt + self.drop(self.self_attn(q, q, tgt)))
        tgt = self.norms[1](tgt + self.drop(self.cross_attn(tgt + qpos, memory + mpos, memory)))
        return self.norms[2](tgt + self.drop(self.ffn(tgt)))


class TransformerDecoder(nn.Module):
    """N learnable queries attending (round robin) to ``memory_levels`` memory maps.

    ``forward(memory list of [B,C,h,w]) -> query outputs [B,N,D]`` (after a final LayerNorm).
    """

    def __init__(self, cfg: MaskFormerConfig) -> None:
        super().__init__()
        d = cfg.hidden_dim
        self.levels = cfg.memory_levels
        self.query_feat = nn.Parameter(torch.zeros(cfg.num_queries, d))
        self.query_pos = nn.Parameter(torch.randn(cfg.num_queries, d))
        self.level_embed = nn.Parameter(torch.zeros(cfg.memory_levels, d))
        self.input_proj = nn.ModuleList(
            nn.Conv2d(cfg.pixel_dim, d, 1) if cfg.pixel_dim != d else nn.Identity()
            for _ in range(cfg.memory_levels)
        )
        self.layers = nn.ModuleList(
            DecoderLayer(d, cfg.num_heads, cfg.ffn_dim, cfg.dropout) for _ in range(cfg.dec_layers)
        )
        self.norm = nn.LayerNorm(d)

    def forward(self, memory: list[torch.Tensor]) -> torch.Tensor:
        if len(memory) < self.levels:
            raise ValueError(f"need {self.levels} memory levels, got {len(memory)}")
        mems, poss = [], []
        for i in range(self.levels):
            m = self.input_proj[i](memory[i])
            b, d, h, w = m.shape
            mems.append(m.flatten(2).transpose(1, 2))
            pos = sine_position_embedding(h, w, d, m.device).to(m.dtype) + self.level_embed[i]
            poss.append(pos[None])
        b = memory[0].shape[0]
        tgt = self.query_feat[None].expand(b, -1, -1)
        qpos = self.query_pos[None].expand(b, -1, -1)
        for j, layer in enumerate(self.layers):
            lvl = j % self.levels
            tgt = layer(tgt, qpos, mems[lvl], poss[lvl])
        return self.norm(tgt)


def mask_pool(mask_logits: torch.Tensor, pixel_emb: torch.Tensor) -> torch.Tensor:
    """Soft mask pooling: ``mask_logits [B,N,h,w]``, ``pixel_emb [B,C,h,w]`` -> ``[B,N,C]``,
    the per-pixel embeddings averaged with weights ``sigmoid(mask)``."""
    w = mask_logits.sigmoid()
    pooled = torch.einsum("bqhw,bchw->bqc", w, pixel_emb)
    return pooled / w.flatten(2).sum(-1, keepdim=True).clamp_min(1e-6)


class MaskFormer(nn.Module):
    """Class-agnostic MaskFormer.

    ``forward(x [B,3,H,W], normalised) -> (mask_logits [B,N,H/4,W/4], mask_feats [B,N,hidden])``.
    H and W must be multiples of 32.
    """

    def __init__(self, cfg: MaskFormerConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.backbone = Backbone(cfg.backbone, cfg.pretrained, cfg.checkpoint, cfg.backbone_kwargs)
        self.pixel_decoder = PixelDecoder(self.backbone.channels, cfg.pixel_dim, cfg.mask_dim)
        self.decoder = TransformerDecoder(cfg)
        self.mask_embed = MLP(cfg.hidden_dim, cfg.hidden_dim, cfg.mask_dim, 3)
        if cfg.mask_features not in ("query", "pooled"):
            raise ValueError(
                f"mask_features must be 'query' or 'pooled', got {cfg.mask_features!r}"
            )
        self.pool_proj = (
            nn.Linear(cfg.mask_dim, cfg.hidden_dim) if cfg.mask_features == "pooled" else None
        )

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        feats = self.backbone(x)
        pixel_emb, memory = self.pixel_decoder(feats)
        q = self.decoder(memory)
        masks = torch.einsum("bqc,bchw->bqhw", self.mask_embed(q), pixel_emb)
        if self.pool_proj is None:
            return masks, q
        return masks, self.pool_proj(mask_pool(masks, pixel_emb))
